"""TextVQA val 0.5.1, as LLaVA lays it out::

    textvqa/llava_textvqa_val_v051_ocr.jsonl   {"question_id", "image", "text": question\\nReference OCR token: ...\\n<instruction>}
    textvqa/TextVQA_0.5.1_val.json             {"data": [{"question_id", "image_id", "question", "answers": [10 strings]}, ...]}
    textvqa/train_images/<image_id>.jpg

Answers are matched by question id when the ids agree with the annotation's (same image), else by
(image id, lower-cased question) as LLaVA's ``eval_textvqa.py`` does. Metric: VQA accuracy.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics.vqa import vqa_score
from .base import Benchmark, EvalItem, predictions_for, question_text, read_json, read_jsonl, register, with_headline


@register("textvqa")
class TextVQA(Benchmark):
    name = "textvqa"
    headline = "accuracy"

    def load_items(self) -> list[EvalItem]:
        qfile = self.find("llava_textvqa_val_v051_ocr.jsonl", what="question file")
        ann = read_json(self.find("TextVQA_0.5.1_val.json", what="annotation file"))["data"]
        by_id = {str(a["question_id"]): a for a in ann}
        by_text = {(str(a["image_id"]), a["question"].strip().lower()): a for a in ann}
        images = self.images_in("train_images", "images")
        items = []
        for q in read_jsonl(qfile):
            stem = Path(q["image"]).stem
            a = by_id.get(str(q["question_id"]))
            if a is None or str(a["image_id"]) != stem:
                a = by_text.get((stem, question_text(q["text"]).lower()))
            items.append(EvalItem(question_id=q["question_id"], image_path=str(images / q["image"]),
                                  prompt=q["text"], category=q.get("category", "default"),
                                  answers=list(a["answers"]) if a else []))
        return items

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        have = [i for i, it in enumerate(items) if it.answers]
        out = vqa_score([preds[i] for i in have], [items[i].answers for i in have], rules=self.rules)
        out["missing"] = missing
        out["unmatched"] = len(items) - len(have)
        return with_headline(self.headline, out, self.rules)
