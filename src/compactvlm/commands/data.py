"""compactvlm data build sceneqa --out DIR [--seed S] [--caption N] [--train N] [--val N] [--test N]"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="build datasets (SceneQA)", description="Build and inspect datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    b = dsub.add_parser("build", help="build a built-in dataset",
                        description="Build SceneQA: images, label maps, LLaVA-format training JSON, evaluation "
                                    "question/answer JSONL and manifest.json (sizes, baselines).")
    b.add_argument("name", choices=["sceneqa"], help="dataset to build")
    b.add_argument("--out", required=True, help="output folder (new, empty, or a previous SceneQA build)")
    b.add_argument("--seed", type=int, default=0)
    from ..data.sceneqa.build import DEFAULT_SIZES

    for split, n in DEFAULT_SIZES.items():
        b.add_argument(f"--{split}", type=int, default=n, metavar="N", help=f"{split} images (default {n})")
    b.add_argument("--turns", type=int, default=3, help="question turns per training conversation (default 3)")
    b.add_argument("--workers", type=int, default=1, help="processes rendering images (default 1)")
    b.add_argument("--object-scale", type=float, default=1.0, metavar="S",
                   help="multiply object sizes in the caption and train splits (a training curriculum, e.g. 1.75); "
                        "val and test always keep the standard sizes (default 1)")
    b.add_argument("--fmnist-dir", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_build(args: argparse.Namespace) -> int:
    from ..data.sceneqa import SPLITS, build_sceneqa

    m = build_sceneqa(args.out, seed=args.seed, sizes={s: getattr(args, s) for s in SPLITS},
                      progress=not args.quiet, turns=args.turns, workers=args.workers, fmnist_dir=args.fmnist_dir,
                      object_scale=args.object_scale)
    print(f"SceneQA written to {args.out} in {m['build_seconds']:.1f} s (seed {m['seed']})")
    for split, c in m["counts"].items():
        print(f"  {split:8s} {c['images']:6d} images {c['questions']:7d} questions")
    for split, fams in m["baselines"].items():
        print(f"  baselines ({split}): family  metric  chance  majority [answer]")
        for fam, b in fams.items():
            print(f"    {fam:16s} {b['headline_metric']:14s} {b['chance']:7.1f} {b['majority']:7.1f} "
                  f"[{b['majority_answer']}]")
    return 0
