"""POPE: accuracy, precision, recall, F1 and yes-ratio of yes/no answers, in percent.

Rules ``llava`` (LLaVA's ``eval_pope.py``): the (stripped) answer's first sentence (up to the first ".") is read as "no"
if, with commas removed and split on spaces, it contains the word ``No``, ``no`` or ``not``, and as "yes"
otherwise (so ``NO`` and ``Nope`` are "yes"); a label is "no" iff it is exactly ``no``. The yes-ratio is the
share of answers read as yes.

Rules ``lmms-eval`` (its ``pope`` task): the answer, stripped and lower-cased, must be exactly ``yes`` or ``no``;
anything else is "other", which is never right, counts in neither precision's nor recall's denominator, and is
not a yes. Its ``yes_ratio`` is the share of *labels* that are yes (not answers), reproduced as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from .rules import check_rules


def pope_yes_no(text: str, rules: str = "llava") -> str:
    """The answer read as "yes", "no" (or, with lmms-eval rules, "other")."""
    if check_rules(rules) == "lmms-eval":
        t = str(text).strip().lower()
        return t if t in ("yes", "no") else "other"
    t = str(text).strip()  # LLaVA's generation scripts strip what the model says
    if "." in t:
        t = t.split(".")[0]
    words = t.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def _label(label: str, rules: str) -> str:
    if rules == "lmms-eval":
        return str(label).strip().lower()
    return "no" if str(label) == "no" else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str], rules: str = "llava") -> dict:
    """Metrics in percent; ``labels`` are "yes"/"no". Precision/recall/F1 are 0 when undefined."""
    rules = check_rules(rules)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pred = [pope_yes_no(p, rules) for p in predictions]
    gold = [_label(lab, rules) for lab in labels]
    pairs = list(zip(pred, gold))
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if rules == "lmms-eval":
        correct = sum(p == g for p, g in pairs)
        yes_ratio = sum(g == "yes" for g in gold) / n if n else 0.0
    else:
        correct = tp + tn
        yes_ratio = sum(p == "yes" for p in pred) / n if n else 0.0
    return {
        "accuracy": 100.0 * correct / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * yes_ratio,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "other": sum(p == "other" for p in pred), "n": n,
    }


def pope_score(predictions: Sequence[str], labels: Sequence[str], splits: Sequence[str], rules: str = "llava") -> dict:
    """POPE metrics per split (random / popular / adversarial) plus their means; with lmms-eval rules also
    ``all``, the metrics over every split together (what lmms-eval's ``pope`` task reports)."""
    rules = check_rules(rules)
    out: dict = {}
    for s in sorted(set(splits)):
        idx = [i for i, x in enumerate(splits) if x == s]
        out[s] = pope_metrics([predictions[i] for i in idx], [labels[i] for i in idx], rules)
    names = [s for s in out]
    for key in ("accuracy", "f1", "precision", "recall", "yes_ratio"):
        out[f"mean_{key}"] = sum(out[s][key] for s in names) / len(names) if names else 0.0
    if rules == "lmms-eval":
        out["all"] = pope_metrics(predictions, labels, rules)
    out["n"] = len(predictions)
    return out
