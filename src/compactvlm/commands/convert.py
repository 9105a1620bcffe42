"""compactvlm convert --from llava-hf|llava|llava-stf SRC --out DIR"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a LLaVA-HF / LLaVA / LLaVA-STF checkpoint into a compact folder",
        description="Convert a checkpoint of another LLaVA code base into a self-contained compact-model folder "
                    "(compactvlm.json, safetensors weights, encoder/, llm/, tokenizer/, preprocessor_config.json). "
                    "llava-hf: transformers' LlavaForConditionalGeneration folder (llava-hf/llava-1.5-7b-hf). "
                    "llava: the original LLaVA code's folder (config.json with mm_vision_tower, mm_projector_type, "
                    "mm_vision_select_layer; projector in the shards or mm_projector.bin). llava-stf: the LLaVA-STF "
                    "fork (mm_projector_crosslayer + mm_projector). .bin files are read with "
                    "torch.load(weights_only=True) only; nothing is downloaded.")
    from ._common import checkpoint_arg

    p.add_argument("src", type=checkpoint_arg, help="source checkpoint folder (a demo:NAME short name resolves too)")
    p.add_argument("--from", dest="layout", required=True, choices=["llava-hf", "llava", "llava-stf"],
                   help="layout of SRC")
    p.add_argument("--out", required=True, help="output folder: new, empty, or a compact folder compactvlm wrote (replaced atomically); any "
                        "other folder is refused")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="dtype of the written weights (auto: as stored in SRC)")
    p.add_argument("--vision-tower", default=None,
                   help="llava/llava-stf: local CLIP folder, when config.json's mm_vision_tower is a hub name")
    p.add_argument("--projector", default=None,
                   help="llava/llava-stf: projector weights file (mm_projector.bin of the pretraining stage)")
    p.add_argument("--model-base", default=None,
                   help="llava/llava-stf: base LLM folder for a projector-only SRC (LLaVA's --model-base)")
    p.add_argument("--tokenizer", default=None,
                   help="folder with the LLM's tokenizer, for a SRC without tokenizer files (else: SRC, then "
                        "--model-base; with none, the folder is written without a tokenizer and a warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from ..errors import CompactVLMError
    from ..interop import convert
    from ..model.checkpoint import CONFIG_NAME

    from ..model.checkpoint import check_replaceable, clean_stale_writes

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise CompactVLMError(f"source folder {src} not found", "pass the checkpoint folder as SRC")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise CompactVLMError(f"--tokenizer {args.tokenizer} is not a folder", "pass the folder of the LLM's tokenizer")
    rs, ro = src.resolve(), out.resolve()
    if rs == ro:
        raise CompactVLMError("--out is the source folder", "write the compact folder somewhere else")
    if ro in rs.parents:
        raise CompactVLMError(f"--out {out} is a parent folder of the source {src}; replacing it would delete the "
                              "source", "write the compact folder somewhere else (a new folder beside the source)")
    if rs in ro.parents:
        raise CompactVLMError(f"--out {out} is inside the source folder {src}",
                              "write the compact folder somewhere else (a new folder beside the source)")
    check_replaceable(out, "--out")  # before the (slow) load: never replace what compactvlm did not write
    clean_stale_writes(out.parent, [out.name])  # temp folders of a killed earlier convert into --out
    with torch.no_grad():
        path = convert(args.layout, src, out, dtype=args.dtype, vision_tower=args.vision_tower,
                       projector=args.projector, model_base=args.model_base, tokenizer=args.tokenizer)
    full = json.loads((path / CONFIG_NAME).read_text())
    meta, origin = full["model"], full.get("converted_from", {})
    print(f"wrote {path}: compressor {meta['compressor']} {meta['compressor_params']}, dtype {meta['dtype']}, "
          f"image token id in input_ids: -200" + (f" or {origin['image_token_index']}"
                                                  if origin.get("image_token_index") is not None else "")
          + ("" if origin.get("has_tokenizer", True) else " (no tokenizer: forward on token ids only)"))
    return 0
