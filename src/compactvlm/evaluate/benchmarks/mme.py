"""MME, read from the released folders::

    MME/MME_Benchmark_release_version/[MME_Benchmark/]<category>/
        <name>.jpg|png + <name>.txt                          (existence, count, position, color, OCR, ...)
        images/<name>.jpg + questions_answers_YN/<name>.txt  (artwork, celebrity, landmark, posters, scene)

Each ``.txt`` holds one "question<TAB>Yes|No" line per question (two per image). The prompt is the
question plus LLaVA's short-answer instruction. Metric: acc and acc+ per category, summed into the
perception score (the headline) and the cognition score.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import CompactVLMError
from ..metrics.mme import mme_score
from .base import SHORT_ANSWER, Benchmark, EvalItem, predictions_for, register, with_headline

IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG", ".bmp")


@register("mme")
class MME(Benchmark):
    name = "mme"
    headline = "perception"

    def __init__(self, data_dir, image_dir=None, instruction: str | None = SHORT_ANSWER):
        super().__init__(data_dir, image_dir)
        self.instruction = instruction

    def _root(self) -> Path:
        for c in ("MME_Benchmark_release_version/MME_Benchmark", "MME_Benchmark_release_version",
                  "MME_Benchmark", "."):
            p = self.data_dir / c
            if p.is_dir() and any(_question_files(p / d) for d in _dirs(p)):
                return p
        raise CompactVLMError(f"mme: no MME category folders under {self.data_dir}",
                              "pass the folder holding MME_Benchmark_release_version/")

    def load_items(self) -> list[EvalItem]:
        root = self._root()
        items = []
        for cat in _dirs(root):
            for txt in _question_files(root / cat):
                img_dir = txt.parent.parent / "images" if txt.parent.name == "questions_answers_YN" else txt.parent
                image = next((img_dir / (txt.stem + e) for e in IMAGE_EXTS if (img_dir / (txt.stem + e)).exists()),
                             img_dir / (txt.stem + ".jpg"))
                lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for k, line in enumerate(lines):
                    if "\t" not in line:
                        raise CompactVLMError(f"{txt}: line {k + 1} has no TAB between question and answer",
                                              "each line must be 'question<TAB>Yes' or 'question<TAB>No'")
                    question, answer = line.rsplit("\t", 1)
                    prompt = f"{question.strip()}\n{self.instruction}" if self.instruction else question.strip()
                    items.append(EvalItem(
                        question_id=f"{cat}/{txt.stem}/{k}", image_path=str(image), prompt=prompt, category=cat,
                        answers=[answer.strip().lower()], meta={"image_key": f"{cat}/{txt.stem}"},
                    ))
        return items

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        out = mme_score(preds, [it.answers[0] for it in items], [it.category for it in items],
                        [it.meta["image_key"] for it in items], rules=self.rules)
        out["missing"] = missing
        return with_headline(self.headline, out, self.rules)


NOT_CATEGORIES = {"answers", "eval_tool", "answers_upload", "images", "questions_answers_YN"}


def _dirs(p: Path) -> list[str]:
    return sorted(d.name for d in p.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name not in NOT_CATEGORIES)


def _question_files(cat_dir: Path) -> list[Path]:
    qa = cat_dir / "questions_answers_YN"
    src = qa if qa.is_dir() else cat_dir
    return sorted(src.glob("*.txt"))
