"""Does a model bind a colour to the named shape, or say the colour that is in the picture? Splits SceneQA's attribute
questions by whether the image's coloured shapes share one colour ("single") or not ("multi"), and the colour
questions of the unanswerable family by whether the named shape is in the image ("named present") or not ("named
absent", whose right answer is "unanswerable"), and counts, per run, the right answers and the wrong answers that name
a colour present in the image.

A run is an evaluation folder (with predictions.jsonl) or a study result file (results/<plan>/<row>/seed<N>.json; add
``:shuffled`` for its blind control's answers):

    python scripts/attribute_binding.py --data data/recipe results/recipe/eval/stf-k2e1-place-step00300/real \
        results/recipe/eval/stf-k2e1-place-step00300/shuffled
    python scripts/attribute_binding.py --data data/study_v2 results/study_v2_900/full-mlp2x/seed1.json \
        results/study_v2_900/stf-k2e1/seed1.json results/study_v2_900/stf-k2e1/seed1.json:shuffled
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compactvlm.evaluate.benchmarks.base import read_jsonl
from compactvlm.study.pairwise import read_result


KINDS = ("single", "multi", "named present", "named absent")


def colour_questions(data: Path, split: str = "test") -> list[tuple[dict, str, set[str]]]:
    """The build's colour questions, each as (answer record, kind of ``KINDS``, colours in its image); read once and
    shared by every run."""
    scenes = {s["image"]: s for s in read_jsonl(data / f"{split}_scenes.jsonl")}
    out = []
    for a in read_jsonl(data / f"{split}_answers.jsonl"):
        colours = {o["color"] for o in scenes[a["image"]]["objects"] if o.get("color")}
        if a["family"] == "attribute":
            kind = "single" if len(colours) <= 1 else "multi"
        elif a["family"] == "unanswerable" and "colo" in a.get("question", "").lower():
            kind = "named absent" if a.get("subset") == "unanswerable" else "named present"
        else:
            continue
        out.append((a, kind, colours))
    return out


def binding(data: Path | list, predictions: dict[str, str], split: str = "test") -> dict:
    """``predictions``: question_id -> answer text; ``data``: the SceneQA build, or its ``colour_questions``.
    Returns per kind (``KINDS``): questions, right, and wrong answers that are a colour present in the image."""
    questions = colour_questions(data, split) if isinstance(data, Path) else data
    out = {k: {"questions": 0, "right": 0, "present_wrong": 0} for k in KINDS}
    for a, kind, colours in questions:
        if str(a["question_id"]) not in predictions:
            continue
        said = predictions[str(a["question_id"])].strip().lower().rstrip(".")
        r = out[kind]
        r["questions"] += 1
        r["right"] += said == a["answer"]
        r["present_wrong"] += said != a["answer"] and said in colours
    return out


def read_run(run: str) -> dict[str, str]:
    """question_id -> answer text, from an evaluation folder or a study result file (``FILE.json[:shuffled]``).
    Raises FileNotFoundError / ValueError with what to pass instead."""
    path, _, control = run.rpartition(":") if run.endswith(":shuffled") else (run, "", "")
    p = Path(path)
    if p.is_dir():
        if control:
            raise ValueError(f"{run}: ':shuffled' applies to a study result file; an evaluation folder's blind control "
                             "is its own folder (compactvlm eval --control shuffled)")
        p = p / "predictions.jsonl"
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: pass an evaluation folder (compactvlm eval --out ...)")
        return {str(r["question_id"]): r["text"] for r in read_jsonl(p)}  # read only: the folder is not ours
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: pass an evaluation folder or a study result file")
    res = read_result(p)  # a CompactVLMError (a ValueError) where it is not valid JSON or holds no predictions
    preds = res.get("control_predictions", {}).get(control) if control else res["predictions"]
    if not isinstance(preds, dict):
        raise ValueError(f"{run}: no blind-control predictions in this file (a study result file, "
                         "results/<plan>/<row>/seed<N>.json, carries them)")
    return {str(k): v for k, v in preds.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the SceneQA build the predictions answer")
    ap.add_argument("--split", default="test")
    ap.add_argument("runs", nargs="+", help="evaluation folders (each with predictions.jsonl) or study result files "
                    "(results/<plan>/<row>/seed<N>.json, FILE.json:shuffled for its blind control)")
    a = ap.parse_args(argv)
    need = [Path(a.data) / f"{a.split}_{kind}.jsonl" for kind in ("scenes", "answers")]
    if not all(p.is_file() for p in need):
        print(f"{a.data} is not a SceneQA build with a {a.split} split (needs {', '.join(p.name for p in need)}): "
              "pass the --data folder the predictions answer", file=sys.stderr)
        return 2
    try:
        runs = [(run, read_run(run)) for run in a.runs]  # every run checked before any is scored
    except (FileNotFoundError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    questions = colour_questions(Path(a.data), a.split)
    for run, preds in runs:
        res = binding(questions, preds, a.split)
        print(run)
        for k, v in res.items():
            if v["questions"]:
                print(f"  {k:14s} {v['right']:4d}/{v['questions']:<4d} right ({100 * v['right'] / v['questions']:5.1f} %), "
                      f"{v['present_wrong']} a colour present in the image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
