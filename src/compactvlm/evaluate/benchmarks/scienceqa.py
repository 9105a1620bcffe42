"""ScienceQA-IMG (test), as LLaVA lays it out::

    scienceqa/llava_test_CQM-A.json   [{"id", "image": "<id>/image.png" (image questions only),
                                        "conversations": [{"from": "human", "value": "<image>\\nContext: ...\\nQuestion: ...\\nOptions: (A) ... (B) ..."}, ...]}]
    scienceqa/problems.json           {pid: {"choices": [...], "answer": int, "image": ..., ...}}
    scienceqa/pid_splits.json         {"test": [pid, ...], ...}
    scienceqa/images/test/<pid>/image.png

Only questions with an image are read (``img_only=False`` reads all). The prompt is the human turn
without ``<image>`` plus LLaVA's single-prediction instruction. Metric: option accuracy with LLaVA's
strict reading (a letter, "B. ...", or "The answer is B"), or lmms-eval's (``metrics.choice.sqa_option``).
"""

from __future__ import annotations

from ..metrics.choice import LETTERS, option_accuracy, sqa_option
from .base import LETTER_ANSWER, Benchmark, EvalItem, predictions_for, read_json, register, with_headline


@register("scienceqa")
class ScienceQA(Benchmark):
    name = "scienceqa"
    headline = "accuracy"

    def __init__(self, data_dir, image_dir=None, split: str = "test", img_only: bool = True):
        super().__init__(data_dir, image_dir)
        self.split, self.img_only = split, img_only

    def load_items(self) -> list[EvalItem]:
        questions = read_json(self.find("llava_test_CQM-A.json", what="question file"))
        problems = read_json(self.find("problems.json", what="problems file"))
        try:
            wanted = set(read_json(self.find("pid_splits.json"))[self.split])
        except Exception:
            wanted = None
        images = self.images_in(f"images/{self.split}", "images")
        items = []
        for q in questions:
            pid = str(q["id"])
            if (wanted is not None and pid not in wanted) or pid not in problems:
                continue
            if self.img_only and not q.get("image"):
                continue
            prob = problems[pid]
            text = q["conversations"][0]["value"].replace("<image>", "").strip()
            items.append(EvalItem(
                question_id=pid, image_path=str(images / q["image"]) if q.get("image") else None,
                prompt=f"{text}\n{LETTER_ANSWER}", category=prob.get("subject", "default"),
                answers=[LETTERS[int(prob["answer"])]],
                meta={"n_choices": len(prob["choices"]), "choices": prob["choices"]},
            ))
        return items

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        picked = [sqa_option(p, it.meta["n_choices"], self.rules) for p, it in zip(preds, items)]
        out = option_accuracy(picked, [it.answers[0] for it in items])
        out["missing"] = missing
        return with_headline(self.headline, out, self.rules)
