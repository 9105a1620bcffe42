"""compactvlm probe --data DIR [--encoder NAME] [--train N] [--test N] [--layer L] [--json OUT]"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("probe", help="encoder ceiling: linear probes on frozen encoder features of SceneQA images",
                       description="Fit linear probes (scikit-learn logistic regression) on the frozen vision "
                                   "encoder's features of SceneQA train images and score them on test images: item "
                                   "presence and class, shape colour, sign word, object quadrant and count, object "
                                   "vs background patches. Tells what the encoder can see at all, apart from what "
                                   "the LLM learns to read from it.")
    p.add_argument("--data", required=True, help="a SceneQA build (`compactvlm data build sceneqa`)")
    p.add_argument("--encoder", default=None, help="vision encoder (default: the packaged DINOv2-S)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--layer", type=int, default=-2, help="encoder block whose output is probed (default -2, "
                                                        "the block LLaVA's projector reads)")
    p.add_argument("--train", type=int, default=800, help="train images to fit on (default 800)")
    p.add_argument("--test", type=int, default=200, help="test images to score on (default 200)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from ..errors import CompactVLMError
    from ..evaluate.probe import encode_scenes, format_probe_table, read_scenes, run_probes

    if args.train < 20 or args.test < 10:
        raise CompactVLMError(f"--train {args.train} / --test {args.test} is too few images to fit a probe",
                              "use at least --train 20 --test 10 (defaults 800 / 200)")
    if args.json and Path(args.json).exists():
        raise CompactVLMError(f"{args.json} already exists", "choose a new --json path (nothing is overwritten)")
    data = Path(args.data)
    train, test = read_scenes(data, "train", args.train), read_scenes(data, "test", args.test)  # before the load
    from ..data.images import ImageProcessor
    from ..encoders.hf import HFVisionEncoder
    from ..model.build import DEFAULT_ENCODER, load_vision_model
    from ..runtime import set_threads

    set_threads(args.threads)
    t0 = time.perf_counter()
    name = args.encoder or DEFAULT_ENCODER
    vision, mean, std = load_vision_model(name)
    enc = HFVisionEncoder(vision, image_size=args.image_size, image_mean=mean, image_std=std).eval()
    proc = ImageProcessor(enc.info.image_size, enc.image_mean, enc.image_std)  # SceneQA images are square
    ftr = encode_scenes(enc, proc, data, train, args.layer, progress=not args.quiet)
    fte = encode_scenes(enc, proc, data, test, args.layer, progress=not args.quiet)
    rows = run_probes(ftr, fte, enc.info.image_size, seed=args.seed)
    secs = time.perf_counter() - t0
    print(f"encoder {name}, block {args.layer}, {len(train)} train / {len(test)} test images of {data}, {secs:.0f} s")
    print(format_probe_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"encoder": name, "layer": args.layer, "data": str(data),
                                               "train_images": len(train), "test_images": len(test),
                                               "seconds": round(secs, 1), "rows": rows}, indent=1) + "\n")
    return 0
