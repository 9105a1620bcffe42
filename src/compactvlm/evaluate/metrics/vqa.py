"""VQA accuracy (VQAv2, TextVQA, VizWiz): ``min(#humans who gave the answer / 3, 1)``, averaged over the
ten leave-one-out subsets of nine human answers, both sides normalised by :func:`normalize_answer`."""

from __future__ import annotations

from collections.abc import Sequence

from .normalize import normalize_answer


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction against the (usually ten) human answers."""
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in human_answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    total = 0.0
    for i in range(len(gts)):  # leave human i out; the other len-1 answers vote
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict:
    """Mean VQA accuracy in percent over questions."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    accs = [vqa_accuracy(p, a) for p, a in zip(predictions, answers)]
    return {"accuracy": 100.0 * sum(accs) / len(accs) if accs else 0.0, "n": len(accs)}
