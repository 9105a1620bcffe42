"""compactvlm viz --image PATH --compressor NAME [--budget N] [--reduce R] --out FILE.png"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_args, compressor_params, model_from_args, setup_runtime


def add_parser(sub) -> None:
    p = sub.add_parser(
        "viz", help="draw which vision tokens reach the LLM",
        description="Draw what reaches the LLM on the image: STF/AvgPool windows, kept tokens of random drop / "
                    "VisionZip / FastV, VisToG groups, Mask-LLaVA masks, Q-Former attention; the legend gives the "
                    "method, the vision-token count and the TTFT (encode + compress + LLM prefill).")
    p.add_argument("--image", required=True, help="image file (PNG/JPEG/...)")
    p.add_argument("--out", required=True, help="output PNG file")
    p.add_argument("--question", default="What is in the image?",
                   help="prompt used for the TTFT measurement (and by FastV to rank tokens)")
    p.add_argument("--repeats", type=int, default=3, help="prefill runs for the TTFT median (0: no timing)")
    p.add_argument("--size", type=int, default=448, help="approximate width of the drawn image in pixels")
    p.add_argument("--tiny", action="store_true", help="tiny random models (tests; no weights needed)")
    add_model_args(p)
    p.set_defaults(func=run)


def build(args: argparse.Namespace, progress: bool = True):
    """The model the options describe; ``--tiny`` builds ``compactvlm.testing.tiny_vlm``."""
    if not getattr(args, "tiny", False):
        return model_from_args(args, progress=progress)
    from ..errors import CompactVLMError
    from ..testing import tiny_vlm

    if args.checkpoint:
        raise CompactVLMError("--tiny and --checkpoint exclude each other", "drop one of them")
    params = compressor_params(args)  # parses a --compressor spec first
    model = tiny_vlm(args.compressor or "mlp2x_gelu", **params)
    args.spec.apply(model)
    return model


def run(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    from ..errors import CompactVLMError
    from ..viz import visualize
    from ..viz.draw import cell_size

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CompactVLMError(f"--out {args.out!r} is not a .png file", "write e.g. --out map.png")
    if not out.parent.exists():
        raise CompactVLMError(f"folder {out.parent} does not exist", "create it or pick another --out path")
    if args.repeats < 0:
        raise CompactVLMError(f"--repeats must be >= 0, got {args.repeats}", "use e.g. 3 (0 skips the timing)")
    if args.size < 32:
        raise CompactVLMError(f"--size {args.size} is too small to draw", "use e.g. 448")
    image = load_image(args.image)
    setup_runtime(args)
    model = build(args)
    picture, tmap, ttft = visualize(model, image, args.question, measure=args.repeats > 0,
                                    repeats=max(args.repeats, 1), cell=cell_size(model.grid, args.size))
    picture.save(out, optimize=True)
    print(f"{out}: {tmap.kind} map, {tmap.num_tokens} vision tokens, "
          f"TTFT {'n/a' if ttft is None else f'{ttft:.0f} ms'} ({tmap.method})")
    return 0
