"""MME: per category, accuracy over questions and accuracy+ over images (both of an image's two
questions right); a category scores ``100 * (acc + acc+)`` and the perception / cognition scores are
sums over their categories. Answers are read like MME's ``calculation.py``: lower-cased, exactly yes/no,
else "yes"/"no" within the first four characters, else "other" (always wrong)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_yes_no(text: str) -> str:
    t = str(text).strip().lower()
    if t in ("yes", "no"):
        return t
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_score(predictions: Sequence[str], labels: Sequence[str], categories: Sequence[str],
              images: Sequence[str]) -> dict:
    """``images`` groups the questions asked about the same image (two per image in MME)."""
    n = len(predictions)
    if not (len(labels) == len(categories) == len(images) == n):
        raise ValueError("predictions, labels, categories and images must have the same length")
    per_cat: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for p, lab, c, img in zip(predictions, labels, categories, images):
        per_cat[c][img].append(mme_yes_no(p) == str(lab).strip().lower())
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
