"""GQA accuracy: exact match of the cleaned prediction and the answer.

Rules ``llava`` (LLaVA's ``convert_gqa_for_eval.py`` + GQA's ``eval.py``): the (stripped) prediction with trailing
periods removed, lower-cased, equals the answer. Rules ``lmms-eval`` (its ``gqa`` task: ``exact_match`` with
``ignore_case`` and ``ignore_punctuation``): both lower-cased (numpy's one-to-one mapping), every ASCII punctuation character deleted,
then compared as they are (inner and trailing spaces count).
"""

from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .rules import check_rules

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _lmms_clean(text: str) -> str:
    # numpy's lower-casing, as lmms-eval's exact_match uses: one character for one ("İ" -> "i", not "i̇")
    return str(np.char.lower(np.asarray(str(text)))).translate(_NO_PUNCTUATION)


def gqa_clean(prediction: str, rules: str = "llava") -> str:
    """The prediction as the rule set compares it."""
    if check_rules(rules) == "lmms-eval":
        return _lmms_clean(str(prediction).strip())
    return str(prediction).strip().rstrip(".").lower()


def exact_match(prediction: str, answer: str, rules: str = "llava") -> bool:
    if check_rules(rules) == "lmms-eval":
        return gqa_clean(prediction, rules) == _lmms_clean(answer)
    return gqa_clean(prediction, rules) == str(answer).strip().lower()


def gqa_score(predictions: Sequence[str], answers: Sequence[str], groups: Sequence[str] | None = None,
              rules: str = "llava") -> dict:
    """Accuracy in percent; with ``groups`` also the accuracy of each group (e.g. GQA's question types)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    hits = [exact_match(p, a, rules) for p, a in zip(predictions, answers)]
    out: dict = {"accuracy": 100.0 * sum(hits) / len(hits) if hits else 0.0, "n": len(hits)}
    if groups is not None:
        per: dict[str, list[bool]] = defaultdict(list)
        for g, h in zip(groups, hits):
            per[g].append(h)
        out["per_group"] = {g: 100.0 * sum(v) / len(v) for g, v in sorted(per.items())}
    return out
