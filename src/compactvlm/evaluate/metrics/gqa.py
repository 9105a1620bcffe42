"""GQA accuracy: exact match after LLaVA's conversion (trailing periods stripped, lower-cased)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def gqa_clean(prediction: str) -> str:
    return str(prediction).strip().rstrip(".").strip().lower()


def exact_match(prediction: str, answer: str) -> bool:
    return gqa_clean(prediction) == str(answer).strip().lower()


def gqa_score(predictions: Sequence[str], answers: Sequence[str], groups: Sequence[str] | None = None) -> dict:
    """Accuracy in percent; with ``groups`` also the accuracy of each group (e.g. GQA's question types)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    hits = [exact_match(p, a) for p, a in zip(predictions, answers)]
    out: dict = {"accuracy": 100.0 * sum(hits) / len(hits) if hits else 0.0, "n": len(hits)}
    if groups is not None:
        per: dict[str, list[bool]] = defaultdict(list)
        for g, h in zip(groups, hits):
            per[g].append(h)
        out["per_group"] = {g: 100.0 * sum(v) / len(v) for g, v in sorted(per.items())}
    return out
