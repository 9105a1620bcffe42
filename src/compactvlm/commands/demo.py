"""compactvlm demo: the main job on the embedded default (packaged models + built-in benchmark)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the packaged default models",
                       description="Ask the same question with the full-token projector and with STF k=2 on a "
                                   "packaged photo, and print answers, vision tokens and prefill time side by side.")
    p.add_argument("--question", default="What is in the image?")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from skimage import data

    from ..compressors.base import create_compressor
    from ..model.build import ModelConfig, build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    image = Image.fromarray(data.astronaut())
    model = build_model(ModelConfig(compressor="mlp2x_gelu"))
    rows = []
    for name, params in [("mlp2x_gelu", {}), ("stf", {"k": 2, "E": 1})]:
        torch.manual_seed(0)
        model.compressor = create_compressor(name, enc=model.encoder.info, llm_dim=model.llm_dim, **params).eval()
        model.compressor.params = params
        res = model.generate([image], [args.question], max_new_tokens=16)
        rows.append((name, params, res.num_image_tokens, model.prefill_ms([image], args.question), res.texts[0]))
    print(f"\nquestion: {args.question}  (untrained compressors: answers are not meaningful yet)")
    print(f"{'compressor':<22}{'vision tokens':>14}{'prefill ms':>12}  answer")
    for name, params, n, ms, text in rows:
        label = name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
        print(f"{label:<22}{n:>14}{ms:>12.0f}  {text}")
    return 0
