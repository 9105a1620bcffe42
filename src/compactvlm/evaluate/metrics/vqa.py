"""VQA accuracy (VQAv2, TextVQA, VizWiz): ``min(#humans who gave the answer / 3, 1)``, averaged over the
leave-one-out subsets of the human answers (one per human: the other n-1 vote), both sides normalised.

Normalisation: the EvalAI processor (:func:`normalize_answer`) for both rule sets, except lmms-eval's
``vqav2`` task, which runs the VQAv2 evaluation script's steps (:func:`vqa_eval_normalize`): pass
``task="vqav2"`` with ``rules="lmms-eval"``. A list of one human answer scores 0 (its only subset is empty),
as in both references.
"""

from __future__ import annotations

from collections.abc import Sequence

from .normalize import normalize_answer, vqa_eval_normalize
from .rules import check_rules


def _normalizer(rules: str, task: str | None):
    return vqa_eval_normalize if (rules == "lmms-eval" and task == "vqav2") else normalize_answer


def vqa_accuracy(prediction: str, human_answers: Sequence[str], rules: str = "llava", task: str | None = None) -> float:
    """Accuracy in [0, 1] of one prediction against the (usually ten) human answers."""
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    norm = _normalizer(check_rules(rules), task)
    pred = norm(str(prediction).strip())
    gts = [norm(a) for a in human_answers]
    total = 0.0
    for i in range(len(gts)):  # leave human i out; the other len-1 answers vote
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        total += min(1.0, matches / 3.0)
    return total / len(gts)


def vqa_score(predictions: Sequence[str], answers: Sequence[Sequence[str]], rules: str = "llava",
              task: str | None = None) -> dict:
    """Mean VQA accuracy in percent over questions."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    accs = [vqa_accuracy(p, a, rules, task) for p, a in zip(predictions, answers)]
    return {"accuracy": 100.0 * sum(accs) / len(accs) if accs else 0.0, "n": len(accs)}
