"""Per-image CPU cost of Mask-LLaVA's mask sources and object embeddings on the real DINOv2-S (issue 5 note).

    .venv/bin/python scripts/measure_mask_sources.py --data data/study --images 8 --threads 1

Times ``objects`` compressor forwards (masks + object embeddings + projectors; the per-image cache off) over the
first SceneQA test images, after the encoder features are computed once: `unsupervised` and `given` sources with
`masked_pool`, and `unsupervised` with `maskinversion`. `detector_sam` needs detector + SAM checkpoints, which do not
exist offline; its code is tested with tiny random-config models, whose timings say nothing, so it is not timed.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from compactvlm.compressors.base import create_compressor
from compactvlm.data.images import load_image
from compactvlm.data.sceneqa.masks import object_masks
from compactvlm.model.build import ModelConfig, build_model
from compactvlm.runtime import set_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/study")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    model = build_model(ModelConfig(), progress=False)
    rows = [json.loads(l) for l in (Path(args.data) / "test_questions.jsonl").read_text().splitlines()]
    paths = list(dict.fromkeys(r["image"] for r in rows))[: args.images]
    s = model.processor.size
    configs = {"unsupervised + masked_pool": {"mask_source": "unsupervised"},
               "given + masked_pool": {"mask_source": "given"},
               "unsupervised + maskinversion": {"mask_source": "unsupervised", "object_embed": "maskinversion"}}
    out = {}
    for label, opts in configs.items():
        comp = create_compressor("objects", enc=model.encoder.info, llm_dim=model.llm_dim, cache=False, **opts).eval()
        layers = comp.feature_layers()
        times = []
        for p in paths:
            pix = model.processor([load_image(Path(args.data) / p)])
            with torch.no_grad():
                feats = model.encoder(pix, layers=layers)
            feats.extra_state.update({"pixel_values": pix, "encoder": model.encoder,
                                      "masks": [torch.from_numpy(object_masks(args.data, p, size=(s, s))[0])]})
            t = time.perf_counter()
            with torch.set_grad_enabled(opts.get("object_embed") == "maskinversion"):
                comp(feats)
            times.append((time.perf_counter() - t) * 1e3)
        out[label] = {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                      "images": len(times)}
        print(f"{label:32s} median {out[label]['median_ms']:8.1f} ms/image (min {min(times):.1f}, max {max(times):.1f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
