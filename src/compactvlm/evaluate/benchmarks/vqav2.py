"""VQAv2 test-dev, as LLaVA lays it out::

    vqav2/llava_vqav2_mscoco_test-dev2015.jsonl   {"question_id", "image", "text", "category"}
    vqav2/test2015/COCO_test2015_*.jpg

Test-dev answers are not public: ``export`` writes the EvalAI upload file (``answers_upload.json``,
``[{"question_id", "answer"}]`` with normalised answers). If an annotation file in the official VQA
format is present (``annotations=`` or ``v2_mscoco_val2014_annotations.json``), VQA accuracy is computed.
"""

from __future__ import annotations

from pathlib import Path

from ..metrics.normalize import normalize_answer
from .base import Benchmark, EvalItem, predictions_for, read_json, read_jsonl, register, score_vqa_or_upload, write_json


@register("vqav2")
class VQAv2(Benchmark):
    name = "vqav2"
    headline = "accuracy"

    def __init__(self, data_dir, image_dir=None, questions: str = "llava_vqav2_mscoco_test-dev2015.jsonl",
                 annotations: str | None = None):
        super().__init__(data_dir, image_dir)
        self.questions_name, self.annotations_name = questions, annotations

    def _answers(self) -> dict[str, list[str]]:
        names = [self.annotations_name] if self.annotations_name else ["v2_mscoco_val2014_annotations.json"]
        for n in names:
            p = self.data_dir / n
            if p.exists():
                ann = read_json(p)
                return {str(a["question_id"]): [x["answer"] for x in a["answers"]] for a in ann["annotations"]}
        return {}

    def load_items(self) -> list[EvalItem]:
        qfile = self.find(self.questions_name, what="question file")
        answers = self._answers()
        images = self.images_in("test2015", "images")
        return [EvalItem(question_id=q["question_id"], image_path=str(images / q["image"]), prompt=q["text"],
                         category=q.get("category", "default"), answers=answers.get(str(q["question_id"]), []))
                for q in read_jsonl(qfile)]

    def score(self, items, predictions) -> dict:
        return score_vqa_or_upload(self, items, predictions, task="vqav2")

    def export(self, items, predictions, out_dir: Path) -> list[Path]:
        preds, _ = predictions_for(items, predictions)
        rows = [{"question_id": it.meta.get("original_question_id", it.question_id), "answer": normalize_answer(p)}
                for it, p in zip(items, preds)]
        return [write_json(Path(out_dir) / "answers_upload.json", rows)]
