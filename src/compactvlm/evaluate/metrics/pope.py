"""POPE: accuracy, precision, recall, F1 and yes-ratio of yes/no answers, with LLaVA's reading of
free-form answers (first sentence; "no" if it contains the word No / no / not, else "yes")."""

from __future__ import annotations

from collections.abc import Sequence


def pope_yes_no(text: str) -> str:
    """LLaVA's ``eval_pope`` parsing: anything without a negation word counts as yes."""
    t = str(text)
    if "." in t:
        t = t.split(".")[0]
    words = t.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """Metrics in percent; ``labels`` are "yes"/"no". Precision/F1 are 0 when undefined."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pred = [pope_yes_no(p) == "yes" for p in predictions]
    gold = [str(lab).strip().lower() != "no" for lab in labels]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum((not p) and (not g) for p, g in zip(pred, gold))
    fn = sum((not p) and g for p, g in zip(pred, gold))
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(pred) / n if n else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n,
    }


def pope_score(predictions: Sequence[str], labels: Sequence[str], splits: Sequence[str]) -> dict:
    """POPE metrics per split (random / popular / adversarial) plus their means."""
    out: dict = {}
    for s in sorted(set(splits)):
        idx = [i for i, x in enumerate(splits) if x == s]
        out[s] = pope_metrics([predictions[i] for i in idx], [labels[i] for i in idx])
    names = [s for s in out]
    for key in ("accuracy", "f1", "precision", "recall", "yes_ratio"):
        out[f"mean_{key}"] = sum(out[s][key] for s in names) / len(names) if names else 0.0
    out["n"] = len(predictions)
    return out
