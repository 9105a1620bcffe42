"""GQA test-dev balanced, as LLaVA lays it out::

    gqa/llava_gqa_testdev_balanced.jsonl          {"question_id", "image", "text", "category"}
    gqa/data/testdev_balanced_questions.json      {qid: {"answer", "imageId", "question", "types", ...}}
    gqa/data/images/<imageId>.jpg

Metric: exact match after LLaVA's conversion (trailing "." stripped, lower case; rules ``lmms-eval``: case and
punctuation ignored, see ``metrics.gqa``); accuracy per
structural type when the answers carry ``types``. ``export`` writes GQA's own predictions file.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics.gqa import gqa_clean, gqa_score
from .base import Benchmark, EvalItem, predictions_for, read_json, read_jsonl, register, with_headline, write_json


@register("gqa")
class GQA(Benchmark):
    name = "gqa"
    headline = "accuracy"

    def __init__(self, data_dir, image_dir=None, questions: str = "llava_gqa_testdev_balanced.jsonl",
                 answers: str = "testdev_balanced_questions.json"):
        super().__init__(data_dir, image_dir)
        self.questions_name, self.answers_name = questions, answers

    def load_items(self) -> list[EvalItem]:
        qfile = self.find(self.questions_name, f"data/{self.questions_name}", what="question file")
        gt = read_json(self.find(f"data/{self.answers_name}", self.answers_name, what="answer file"))
        images = self.images_in("data/images", "images")
        items = []
        for q in read_jsonl(qfile):
            a = gt.get(str(q["question_id"]), {})
            types = a.get("types") or {}
            items.append(EvalItem(
                question_id=q["question_id"], image_path=str(images / q["image"]), prompt=q["text"],
                category=q.get("category", "default"),
                answers=[a["answer"]] if "answer" in a else [],
                meta={"structural": types.get("structural"), "semantic": types.get("semantic")},
            ))
        return items

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        have = [i for i, it in enumerate(items) if it.answers]
        groups = [items[i].meta.get("structural") or "all" for i in have]
        out = gqa_score([preds[i] for i in have], [items[i].answers[0] for i in have], groups, rules=self.rules)
        out["missing"] = missing
        return with_headline(self.headline, out, self.rules)

    def export(self, items, predictions, out_dir: Path) -> list[Path]:
        preds, _ = predictions_for(items, predictions)
        rows = [{"questionId": str(it.meta.get("original_question_id", it.question_id)), "prediction": gqa_clean(p, self.rules)}
                for it, p in zip(items, preds)]
        return [write_json(Path(out_dir) / "testdev_balanced_predictions.json", rows)]
