"""Does a model bind a colour to the named shape, or say the colour that is in the picture? Splits SceneQA's attribute
questions by whether the image's coloured shapes share one colour ("single") or not ("multi") and counts, per
evaluation folder, the right answers and the wrong answers that name a colour present in the image.

    python scripts/attribute_binding.py --data data/recipe results/recipe/eval/stf-k2e1-place-step00300/real \
        results/recipe/eval/stf-k2e1-place-step00300/shuffled
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compactvlm.evaluate.benchmarks.base import read_jsonl


def binding(data: Path, predictions: dict[str, str], split: str = "test") -> dict:
    """``predictions``: question_id -> answer text. Returns per kind ("single", "multi"): questions, right, and
    wrong answers that are another colour present in the image."""
    scenes = {s["image"]: s for s in read_jsonl(data / f"{split}_scenes.jsonl")}
    out = {k: {"questions": 0, "right": 0, "present_wrong": 0} for k in ("single", "multi")}
    for a in read_jsonl(data / f"{split}_answers.jsonl"):
        if a["family"] != "attribute" or str(a["question_id"]) not in predictions:
            continue
        colours = {o["color"] for o in scenes[a["image"]]["objects"] if o.get("color")}
        said = predictions[str(a["question_id"])].strip().lower().rstrip(".")
        r = out["single" if len(colours) <= 1 else "multi"]
        r["questions"] += 1
        r["right"] += said == a["answer"]
        r["present_wrong"] += said != a["answer"] and said in colours
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the SceneQA build the predictions answer")
    ap.add_argument("--split", default="test")
    ap.add_argument("runs", nargs="+", help="evaluation folders (each with predictions.jsonl)")
    a = ap.parse_args(argv)
    need = [Path(a.data) / f"{a.split}_{kind}.jsonl" for kind in ("scenes", "answers")]
    if not all(p.is_file() for p in need):
        print(f"{a.data} is not a SceneQA build with a {a.split} split (needs {', '.join(p.name for p in need)}): "
              "pass the --data folder the predictions answer", file=sys.stderr)
        return 2
    for run in a.runs:
        path = Path(run) / "predictions.jsonl"
        if not path.is_file():
            print(f"{path} not found: pass an evaluation folder (compactvlm eval --out ...)", file=sys.stderr)
            return 2
        preds = {str(r["question_id"]): r["text"] for r in read_jsonl(path)}  # read only: the folder is not ours
        res = binding(Path(a.data), preds, a.split)
        print(run, "  ".join(f"{k}: {v['right']}/{v['questions']} right, {v['present_wrong']} another colour present"
                            for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
