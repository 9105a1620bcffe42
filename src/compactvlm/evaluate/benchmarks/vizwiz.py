"""VizWiz-VQA, as LLaVA lays it out::

    vizwiz/llava_test.jsonl      {"question_id", "image", "text": question\\n<unanswerable hint>\\n<instruction>}
    vizwiz/test/VizWiz_test_*.jpg

Test answers are not public: ``export`` writes the EvalAI upload file (``answers_upload.json``,
``[{"image", "answer"}]``). With an annotation file in VizWiz's format (``annotations=``, e.g. the val
split's ``val.json``: ``[{"image", "question", "answers": [{"answer", ...}] * 10}]``), matched by image
name, VQA accuracy is computed ("unanswerable" is an ordinary answer).
"""

from __future__ import annotations

from pathlib import Path

from ..metrics.normalize import normalize_answer
from .base import Benchmark, EvalItem, predictions_for, read_json, read_jsonl, register, score_vqa_or_upload, write_json


@register("vizwiz")
class VizWiz(Benchmark):
    name = "vizwiz"
    headline = "accuracy"

    def __init__(self, data_dir, image_dir=None, questions: str = "llava_test.jsonl", annotations: str | None = None):
        super().__init__(data_dir, image_dir)
        self.questions_name, self.annotations_name = questions, annotations

    def load_items(self) -> list[EvalItem]:
        qfile = self.find(self.questions_name, what="question file")
        answers: dict[str, list[str]] = {}
        if self.annotations_name:
            for a in read_json(self.find(self.annotations_name, what="annotation file")):
                answers[a["image"]] = [x["answer"] for x in a["answers"]]
        images = self.images_in("test", "val", "images")
        return [EvalItem(question_id=q["question_id"], image_path=str(images / q["image"]), prompt=q["text"],
                         category=q.get("category", "default"), answers=answers.get(q["image"], []),
                         meta={"image": q["image"]})
                for q in read_jsonl(qfile)]

    def score(self, items, predictions) -> dict:
        return score_vqa_or_upload(self, items, predictions)

    def export(self, items, predictions, out_dir: Path) -> list[Path]:
        preds, _ = predictions_for(items, predictions)
        rows = [{"image": it.meta["image"], "answer": normalize_answer(p)} for it, p in zip(items, preds)]
        return [write_json(Path(out_dir) / "answers_upload.json", rows)]
