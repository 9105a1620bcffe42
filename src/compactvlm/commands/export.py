"""compactvlm export --to llava-hf SRC --out DIR"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model as a llava-hf folder (LlavaForConditionalGeneration + processor)",
        description="Write a compact folder (or any folder `compactvlm ask` reads) as transformers' LLaVA layout: "
                    "config.json, safetensors weights, tokenizer with <image>, CLIP image processor and "
                    "LlavaProcessor config, loadable with LlavaForConditionalGeneration.from_pretrained(DIR) and "
                    "LlavaProcessor.from_pretrained(DIR). Only the full-token mlp2x_gelu compressor (on a vision "
                    "tower without register tokens, no --reduce, LoRA merged) has a llava-hf form: the other "
                    "compressors change the number of vision tokens or mix layers through modules of their own, "
                    "which LlavaForConditionalGeneration cannot hold, and are refused with the reason.")
    from ._common import checkpoint_arg

    p.add_argument("src", type=checkpoint_arg,
                   help="model folder (compact folder, or a llava-hf / LLaVA / LLaVA-STF folder), or a shipped "
                        "checkpoint demo:NAME")
    p.add_argument("--to", dest="layout", required=True, choices=["llava-hf"], help="layout to write")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="dtype of the written weights (default: as the model is stored)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from ..errors import CompactVLMError
    from ..interop import load_model
    from ..interop.export_llava_hf import export

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise CompactVLMError(f"model folder {src} not found", "pass a compact folder (compactvlm train / convert)")
    if out.exists():
        raise CompactVLMError(f"--out {out} already exists", "export into a new folder (nothing is overwritten)")
    from ..interop.export_llava_hf import REPRESENTABLE
    from ..model.checkpoint import CONFIG_NAME

    if (src / CONFIG_NAME).exists():  # refuse before loading the weights
        name = json.loads((src / CONFIG_NAME).read_text()).get("model", {}).get("compressor")
        if name not in REPRESENTABLE:
            raise CompactVLMError(
                f"{src} holds a {name!r} compressor, which has no llava-hf form: LlavaForConditionalGeneration only "
                "projects each patch token of one vision layer with Linear -> activation -> Linear",
                "export models with the full-token mlp2x_gelu compressor; keep other methods as compact folders")
    with torch.no_grad():
        model = load_model(src, dtype=args.dtype)
        path = export(model, out)
    cfg = json.loads((path / "config.json").read_text())
    print(f"wrote {path}: LlavaForConditionalGeneration, vision_feature_layer {cfg['vision_feature_layer']}, "
          f"image token {cfg.get('image_token_index', cfg.get('image_token_id'))} (<image>)")
    return 0
