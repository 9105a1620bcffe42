"""MME: per category, accuracy over questions and accuracy+ over images (both of an image's two
questions right); a category scores ``100 * (acc + acc+)`` and the perception / cognition scores are
sums over their categories.

Answers are read, with rules ``llava``, like MME's ``calculation.py`` (LLaVA's MME script): stripped, lower-cased,
exactly yes/no, else "yes"/"no" within the first four characters, else "other" (always wrong). With rules
``lmms-eval`` (its ``mme`` task, from Otter): the same after also deleting every ".", and a one-character
answer reads "y" -> yes, "n" -> no, anything else -> other (llava rules read "y" and "n" as other).
Labels: lower-cased (lmms-eval also deletes "."). Both score a category as acc + acc+ in the same way."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .rules import check_rules

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_yes_no(text: str, rules: str = "llava") -> str:
    t = str(text).strip().lower()
    if check_rules(rules) == "lmms-eval":
        t = t.replace(".", "")
        if len(t) == 1:
            return {"y": "yes", "n": "no"}.get(t, "other")
    if t in ("yes", "no"):
        return t
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_label(label: str, rules: str = "llava") -> str:
    t = str(label).strip().lower()
    return t.replace(".", "") if check_rules(rules) == "lmms-eval" else t


def mme_score(predictions: Sequence[str], labels: Sequence[str], categories: Sequence[str],
              images: Sequence[str], rules: str = "llava") -> dict:
    """``images`` groups the questions asked about the same image (two per image in MME)."""
    n = len(predictions)
    if not (len(labels) == len(categories) == len(images) == n):
        raise ValueError("predictions, labels, categories and images must have the same length")
    per_cat: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for p, lab, c, img in zip(predictions, labels, categories, images):
        per_cat[c][img].append(mme_yes_no(p, rules) == mme_label(lab, rules))
    out: dict = {"categories": {}}
    for c in sorted(per_cat):
        by_image = per_cat[c]
        answers = [h for hits in by_image.values() for h in hits]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(h) for h in by_image.values()) / len(by_image)
        out["categories"][c] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                                "n_questions": len(answers), "n_images": len(by_image)}
    cats = out["categories"]
    out["perception"] = sum(v["score"] for c, v in cats.items() if c in PERCEPTION)
    out["cognition"] = sum(v["score"] for c, v in cats.items() if c in COGNITION)
    out["total"] = sum(v["score"] for v in cats.values())
    out["n"] = n
    return out
