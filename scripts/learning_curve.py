"""Learning curves with blind controls: SceneQA accuracy of a training run's checkpoints, each next to the same
checkpoint with images shuffled across questions.

    python scripts/learning_curve.py --run runs/recipe/stf-s2 --stage1 runs/recipe/stf-s1 --row stf-k2e1 \
        --data data/recipe --out results/recipe [--steps 0,50,100,...] [--limit N] [--threads 1]
    python scripts/learning_curve.py --plot results/recipe --png docs/recipe_learning_curves.png
    python scripts/learning_curve.py --table results/recipe

One JSON per (row, step) under OUT (``curve-<row>-step<N>.json``): training samples seen (stage 2; stage 1 is
"step 0" = stage 1's final checkpoint), per-family accuracy with real and shuffled images, the paired bootstrap CI
of real minus shuffled (test-image clusters), and the run's validation-loss blindness gauge at that step. Evaluation
folders (predictions) go to OUT/eval/, so an interrupted run resumes. ``--plot`` draws family mean and each family
vs training samples, real (solid) and blind (dashed), one colour per row, chance as a grey line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def gauge_at(run: Path, step: int) -> dict:
    out = {}
    f = run / "metrics.jsonl"
    if f.exists():
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r.get("event") == "eval" and r.get("step") == step:
                out = {k: v for k, v in r.items() if k not in ("event", "time", "seconds")}
    return out


def evaluate_step(args, ckpt: Path, step: int, samples: int, gauge: dict) -> Path:
    from compactvlm.evaluate.answer import make_answer_fn
    from compactvlm.evaluate.harness import evaluate_with_controls
    from compactvlm.model.checkpoint import load_pretrained
    from compactvlm.runtime import set_threads

    dest = Path(args.out) / f"curve-{args.row}-step{step:05d}.json"
    if dest.exists():
        return dest
    set_threads(args.threads)
    model = load_pretrained(ckpt, progress=False)
    answer = make_answer_fn(model, args.data)
    base = Path(args.out) / "eval" / f"{args.row}-step{step:05d}"
    kw = dict(batch_size=8, limit=args.limit, progress=False, split=args.split)
    ev = evaluate_with_controls("sceneqa", args.data, answer, base / "real", {"shuffled": base / "shuffled"},
                                boot=args.boot, **kw)
    real, blind, gap = ev["real"], ev["controls"]["shuffled"], ev["gap"]
    res = {"row": args.row, "step": step, "stage2_samples": samples, "checkpoint": str(ckpt),
           "vision_tokens": model.num_image_tokens(), "split": args.split, "n_questions": real["n"],
           "real": {"components": real["components"], "family_mean": real["family_mean"]},
           "shuffled": {"components": blind["components"], "family_mean": blind["family_mean"]},
           "gap": gap, "gauge": gauge, "command": " ".join(sys.argv)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1) + "\n")
    return dest


def run_curve(args) -> None:
    run = Path(args.run)
    cfg_batch = 8
    points: list[tuple[int, Path]] = []
    if args.stage1:
        points.append((0, Path(args.stage1) / "final"))
    for ck in sorted((run / "checkpoints").glob("step-*")):
        points.append((int(ck.name.split("-")[1]), ck))
    if (run / "final").exists():
        final = json.loads((run / "final" / "compactvlm.json").read_text()).get("step")
        if final and final not in {s for s, _ in points}:
            points.append((int(final), run / "final"))
    if args.steps:
        want = {int(s) for s in args.steps.split(",")}
        points = [p for p in points if p[0] in want]
    for step, ck in points:
        g = gauge_at(run if step else Path(args.stage1), step if step else gauge_last(Path(args.stage1)))
        p = evaluate_step(args, ck, step, step * cfg_batch, g)
        r = json.loads(p.read_text())
        d = r["gap"]["controls"]["shuffled"]["family_mean"]["delta"]
        print(f"{args.row} step {step}: family mean real {r['real']['family_mean']:.1f} shuffled "
              f"{r['shuffled']['family_mean']:.1f} gap {d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]", flush=True)


def gauge_last(run: Path) -> int:
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    return max(steps) if steps else 0


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[str, list[dict]] = {}
    for f in sorted(Path(args.plot).glob("curve-*.json")):
        r = json.loads(f.read_text())
        rows.setdefault(r["row"], []).append(r)
    if not rows:
        raise SystemExit(f"no curve-*.json under {args.plot}")
    if args.rows:
        want = args.rows.split(",")
        unknown = [r for r in want if r not in rows]
        if unknown:
            raise SystemExit(f"no curve points for row(s) {', '.join(unknown)} under {args.plot}; "
                             f"rows there: {', '.join(sorted(rows))}")
        rows = {r: rows[r] for r in want}
    fams = ["family_mean"] + [k.split("/")[-1] for k in next(iter(rows.values()))[0]["real"]["components"]]
    chance = {}
    man = Path(args.data) / "manifest.json" if args.data else None
    if man and man.exists():
        chance = {k: v["chance"] for k, v in json.loads(man.read_text())["baselines"]["test"].items()}
    n = len(fams)
    cols = 3
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.0 * ((n + cols - 1) // cols)),
                             squeeze=False)
    palette = plt.get_cmap("tab10").colors  # one colour per row, cycling (every row is drawn)
    for ax, fam in zip(axes.flat, fams):
        for k, (row, pts) in enumerate(sorted(rows.items())):
            c = palette[k % len(palette)]
            pts = sorted(pts, key=lambda r: r["step"])
            x = [p["stage2_samples"] for p in pts]

            def val(p, which):  # headlines on the 0-100 scale (MME as % of its maximum), from the paired gap
                g = p["gap"]["controls"]["shuffled"]
                v = g["family_mean"] if fam == "family_mean" else g["families"].get(fam)
                return None if v is None else v["a" if which == "real" else "b"]

            ax.plot(x, [val(p, "real") for p in pts], "-o", color=c, ms=3, label=f"{row} real")
            ax.plot(x, [val(p, "shuffled") for p in pts], "--x", color=c, ms=4, alpha=0.7,
                    label=f"{row} blind (images shuffled)")
        if fam in chance and fam != "mme":
            ax.axhline(chance[fam], color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(fam, fontsize=9)
        ax.set_xlabel("stage-2 samples (0 = after stage 1)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle("SceneQA test accuracy vs training: real images (solid) vs shuffled across questions (dashed)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(args.png, dpi=130)
    print(f"wrote {args.png}")


def table(args) -> None:
    """Markdown: one line per (row, step): family mean real / shuffled, the gap with its CI, and the families whose
    real - shuffled CI is above 0."""
    print("| row | stage-2 step (samples) | family mean real | shuffled | real - shuffled [95% CI] | families seen |")
    print("|---|---:|---:|---:|---:|---|")
    for f in sorted(Path(args.table).glob("curve-*.json")):
        r = json.loads(f.read_text())
        g = r["gap"]["controls"]["shuffled"]
        d = g["family_mean"]["delta"]
        seen = [k for k, v in r["gap"].get("sees", {}).items() if v and k != "family_mean"]
        print(f"| {r['row']} | {r['step']} ({r['stage2_samples']}) | {g['family_mean']['a']:.1f} | "
              f"{g['family_mean']['b']:.1f} | {d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}] | {', '.join(seen) or 'none'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run"), p.add_argument("--stage1"), p.add_argument("--row")
    p.add_argument("--data", default="data/recipe"), p.add_argument("--split", default="test")
    p.add_argument("--out", default="results/recipe"), p.add_argument("--steps", default=None)
    p.add_argument("--limit", type=int, default=None), p.add_argument("--threads", type=int, default=1)
    p.add_argument("--boot", type=int, default=500)
    p.add_argument("--plot", default=None), p.add_argument("--png", default="docs/recipe_learning_curves.png")
    p.add_argument("--rows", default=None, help="--plot: only these rows (comma-separated; default: every row)")
    p.add_argument("--table", default=None, help="print the Markdown table of the curve JSONs in this folder")
    args = p.parse_args()
    if args.table:
        table(args)
    elif args.plot:
        plot(args)
    else:
        run_curve(args)


if __name__ == "__main__":
    main()
