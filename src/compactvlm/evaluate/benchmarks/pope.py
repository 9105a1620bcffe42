"""POPE (COCO), as LLaVA lays it out::

    pope/llava_pope_test.jsonl                {"question_id", "image", "text", "category": random|popular|adversarial}
    pope/coco/coco_pope_{random,popular,adversarial}.json   one JSON per line: {"question_id", "image", "text", "label"}
    pope/val2014/COCO_val2014_*.jpg

Labels are matched to questions by (split, image, question text); where that fails, by position within
the split, as LLaVA's ``eval_pope.py`` does. Metric: accuracy / precision / recall / F1 / yes-ratio per
split with LLaVA's yes/no reading (or lmms-eval's: ``metrics.pope``); headline: F1 averaged over the splits (what LLaVA papers report).
"""

from __future__ import annotations

from collections import defaultdict

from ..metrics.pope import pope_score
from .base import Benchmark, EvalItem, predictions_for, question_text, read_jsonl, register, with_headline

SPLITS = ("adversarial", "popular", "random")


@register("pope")
class POPE(Benchmark):
    name = "pope"
    headline = "mean_f1"

    def load_items(self) -> list[EvalItem]:
        qfile = self.find("llava_pope_test.jsonl", what="question file")
        images = self.images_in("val2014", "images")
        labels: dict[str, dict] = {}
        by_pos: dict[str, list[str]] = {}
        for split in SPLITS:
            try:
                f = self.find(f"coco/coco_pope_{split}.json", f"coco_pope_{split}.json", what=f"{split} labels")
            except Exception:
                continue
            rows = read_jsonl(f)
            labels[split] = {(r["image"], r["text"].strip().lower()): r["label"] for r in rows}
            by_pos[split] = [r["label"] for r in rows]
        if not labels:
            self.find("coco/coco_pope_random.json", what="label file")  # raises the helpful error
        items = []
        seen: dict[str, int] = defaultdict(int)
        for q in read_jsonl(qfile):
            split = q.get("category", "random")
            if split not in labels:
                continue
            key = (q["image"], question_text(q["text"]).lower())
            label = labels[split].get(key)
            pos = seen[split]
            seen[split] += 1
            if label is None and pos < len(by_pos[split]):
                label = by_pos[split][pos]
            items.append(EvalItem(question_id=q["question_id"], image_path=str(images / q["image"]),
                                  prompt=q["text"], category=split, answers=[label] if label else [],
                                  meta={"split": split}))
        return items

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        have = [i for i, it in enumerate(items) if it.answers]
        out = pope_score([preds[i] for i in have], [items[i].answers[0] for i in have],
                         [items[i].category for i in have], rules=self.rules)
        out["missing"] = missing
        return with_headline(self.headline, out, self.rules)
