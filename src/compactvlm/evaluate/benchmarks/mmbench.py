"""MMBench (and MMBench-CN) dev, read from the TSV LLaVA uses::

    mmbench/mmbench_dev_20230712.tsv        (mmbench_cn: mmbench_dev_cn_20231003.tsv)
    columns: index, question, hint, A, B, C, D, answer, category, image (base64), [l2-category, ...]

Like LLaVA's ``--all-rounds``, every question is asked once per circular shift of its options
(question id ``index + shift * 1_000_000``, MMBench's convention); a TSV that already holds shifted
copies (indices >= 1e6) is read as it is. Images are decoded once into ``<tsv stem>_images/``.
Metric: CircularEval (headline) and first-pass accuracy, per category too, with option extraction
from free text (``metrics.choice.mmbench_option``, by the rule set).
"""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path

from ...errors import CompactVLMError
from ..metrics.choice import LETTERS, circular_accuracy, mmbench_option
from .base import LETTER_ANSWER, Benchmark, EvalItem, predictions_for, register, with_headline

CN_ANSWER = "请直接回答选项字母。"
SHIFT = 1_000_000


def _blank(v) -> bool:
    return v is None or str(v).strip() == "" or str(v).strip().lower() == "nan"


@register("mmbench")
class MMBench(Benchmark):
    name = "mmbench"
    headline = "circular_accuracy"
    default_tsv = "mmbench_dev_20230712.tsv"
    instruction = LETTER_ANSWER

    def __init__(self, data_dir, image_dir=None, tsv: str | None = None, circular: bool = True):
        super().__init__(data_dir, image_dir)
        self.tsv, self.circular = tsv or self.default_tsv, circular

    def _image_folder(self, tsv: Path) -> Path:
        if self.image_dir is not None:
            return self.image_dir
        target = tsv.parent / f"{tsv.stem}_images"
        try:
            target.mkdir(exist_ok=True)
            return target
        except OSError:
            from ...zoo.cache import cache_dir

            d = cache_dir() / "mmbench" / tsv.stem
            d.mkdir(parents=True, exist_ok=True)
            return d

    def load_items(self) -> list[EvalItem]:
        tsv = self.find(self.tsv, what="TSV")
        csv.field_size_limit(sys.maxsize)
        with open(tsv, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and not {"index", "question", "A", "B"} <= set(rows[0]):
            raise CompactVLMError(f"{tsv} lacks MMBench columns (index, question, A, B, ...)",
                                  "pass the MMBench TSV (e.g. mmbench_dev_20230712.tsv)")
        img_dir = self._image_folder(tsv)
        pre_shifted = any(int(r["index"]) >= SHIFT for r in rows)
        items = []
        for r in rows:
            index = int(r["index"])
            image = img_dir / f"{index % SHIFT}.jpg"
            if not image.exists() and not _blank(r.get("image")):
                image.write_bytes(base64.b64decode(r["image"]))
            options = [str(r[c]).strip() for c in "ABCDEFGHIJ" if c in r and not _blank(r[c])]
            answer = str(r.get("answer", "")).strip()
            answer_idx = LETTERS.index(answer) if answer and answer in LETTERS[:len(options)] else None
            question = str(r["question"]).strip()
            if not _blank(r.get("hint")):
                question = f"{str(r['hint']).strip()}\n{question}"
            shifts = range(len(options)) if (self.circular and not pre_shifted) else range(1)
            for s in shifts:
                opts = options[s:] + options[:s]
                listed = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(opts))
                prompt = f"{question}{listed}\n{self.instruction}"
                ans = [LETTERS[(answer_idx - s) % len(options)]] if answer_idx is not None else []
                items.append(EvalItem(
                    question_id=index + s * SHIFT, image_path=str(image), prompt=prompt,
                    category=str(r.get("category", "default")), answers=ans,
                    meta={"group": index % SHIFT, "shift": s, "options": opts,
                          "l2_category": r.get("l2-category") or r.get("l2_category")},
                ))
        return items

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        have = [i for i, it in enumerate(items) if it.answers]
        picked = [mmbench_option(preds[i], items[i].meta["options"], self.rules) for i in have]
        out = circular_accuracy(picked, [items[i].answers[0] for i in have], [items[i].meta["group"] for i in have],
                                [items[i].category for i in have])
        out["unparsed"] = sum(p is None for p in picked)
        out["missing"] = missing
        return with_headline(self.headline, out, self.rules)


@register("mmbench_cn")
class MMBenchCN(MMBench):
    name = "mmbench_cn"
    default_tsv = "mmbench_dev_cn_20231003.tsv"
    instruction = CN_ANSWER
