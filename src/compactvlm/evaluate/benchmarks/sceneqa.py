"""SceneQA, the built-in benchmark (``compactvlm data build sceneqa``)::

    <dir>/{val,test}_questions.jsonl   {"question_id", "image", "text", "category": family}
    <dir>/{val,test}_answers.jsonl     {"question_id", "family", "subset", "answer", "answers", "metric", "n_choices", ...}
    <dir>/images/<split>/*.jpg

Each family is scored with the metric of the benchmark it mirrors: existence -> POPE, counting / ocr /
unanswerable -> VQA accuracy, attribute / spatial -> GQA exact match, multiple_choice -> option accuracy
over all circular shifts (ScienceQA-style, headline) and CircularEval (MMBench), mme -> MME acc + acc+.
Headline per family: accuracy (POPE: mean accuracy over the three negative splits, because always
answering "yes" already gets F1 66.7), MME: the summed score. ``family_mean`` averages the family
headlines with MME's score as a percentage of its maximum (200 per category).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

from ..metrics.choice import circular_accuracy, mmbench_option, option_accuracy
from ..metrics.gqa import gqa_score
from ..metrics.mme import mme_score
from ..metrics.pope import pope_score
from ..metrics.vqa import vqa_score
from .base import Benchmark, EvalItem, predictions_for, read_jsonl, register, with_headline

FAMILY_HEADLINE = {"existence": "mean_accuracy", "counting": "accuracy", "attribute": "accuracy",
                   "spatial": "accuracy", "ocr": "accuracy", "multiple_choice": "accuracy", "mme": "total",
                   "unanswerable": "accuracy"}


def score_family(family: str, rows: Sequence[dict], preds: Sequence[str], rules: str = "llava") -> dict:
    """Score one family; ``rows`` are answer records (``*_answers.jsonl``), ``preds`` the answers given,
    ``rules`` the scoring rule set (``metrics.rules``) of the benchmark metric the family mirrors."""
    if family == "existence":
        out = pope_score(preds, [r["answer"] for r in rows], [r["subset"] for r in rows], rules=rules)
    elif family in ("counting", "ocr", "unanswerable"):
        out = vqa_score(preds, [r["answers"] for r in rows], rules=rules)
        if family == "unanswerable":
            for sub in ("answerable", "unanswerable"):
                idx = [i for i, r in enumerate(rows) if r["subset"] == sub]
                if idx:
                    out[sub] = vqa_score([preds[i] for i in idx], [rows[i]["answers"] for i in idx],
                                         rules=rules)["accuracy"]
    elif family in ("attribute", "spatial"):
        out = gqa_score(preds, [r["answer"] for r in rows], rules=rules)
    elif family == "multiple_choice":
        picked = [mmbench_option(p, r["options"], rules) for p, r in zip(preds, rows)]
        answers = [r["answer"] for r in rows]
        out = option_accuracy(picked, answers)
        circ = circular_accuracy(picked, answers, [r["group"] for r in rows], [r["subset"] for r in rows])
        out.update(circular_accuracy=circ["circular_accuracy"], per_kind_circular=circ["per_category"],
                   n_questions=circ["n_questions"])
    elif family == "mme":
        out = mme_score(preds, [r["answer"] for r in rows], [r["subset"] for r in rows], [r["group"] for r in rows],
                        rules=rules)
    else:
        raise ValueError(f"unknown SceneQA family {family!r}")
    return with_headline(FAMILY_HEADLINE[family], out)


def percent_headline(family: str, scores: dict) -> float:
    """The family headline on a 0-100 scale (MME's summed score divided by its maximum)."""
    if family == "mme":
        return scores["total"] / (2.0 * max(len(scores["categories"]), 1))
    return scores["headline"]


def score_rows(rows: Sequence[dict], preds: Sequence[str], rules: str = "llava") -> dict:
    by_family: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_family[r["family"]].append(i)
    families = {}
    for fam in FAMILY_HEADLINE:
        if fam in by_family:
            idx = by_family[fam]
            families[fam] = score_family(fam, [rows[i] for i in idx], [preds[i] for i in idx], rules)
    components = {f"sceneqa/{f}": s["headline"] for f, s in families.items()}
    mean = sum(percent_headline(f, s) for f, s in families.items()) / max(len(families), 1)
    return {"families": families, "components": components, "family_mean": mean, "n": len(rows)}


def chance_headline(family: str, rows: Sequence[dict]) -> float:
    """Expected headline of guessing uniformly among each question's possible answers."""
    if family == "existence":
        return 50.0
    if family == "mme":
        return 75.0 * len({r["subset"] for r in rows})          # acc 50 + acc+ 25 per category
    return 100.0 * sum(1.0 / r["n_choices"] for r in rows) / len(rows)


def chance_circular(rows: Sequence[dict]) -> float:
    groups: dict = defaultdict(lambda: 1.0)
    for r in rows:
        groups[r["group"]] *= 1.0 / r["n_choices"]
    return 100.0 * sum(groups.values()) / len(groups)


@register("sceneqa")
class SceneQA(Benchmark):
    name = "sceneqa"
    headline = "family_mean"

    def __init__(self, data_dir, image_dir=None, split: str = "test", families: Sequence[str] | None = None):
        super().__init__(data_dir, image_dir)
        self.split = split
        self.families = set(families) if families else None

    def load_items(self) -> list[EvalItem]:
        qfile = self.find(f"{self.split}_questions.jsonl", what=f"{self.split} question file")
        answers = {str(r["question_id"]): r for r in read_jsonl(self.find(f"{self.split}_answers.jsonl",
                                                                           what=f"{self.split} answer file"))}
        root = self.image_dir or self.data_dir
        items = []
        for q in read_jsonl(qfile):
            a = answers[str(q["question_id"])]
            if self.families and a["family"] not in self.families:
                continue
            items.append(EvalItem(question_id=q["question_id"], image_path=str(root / q["image"]), prompt=q["text"],
                                  category=q.get("category", a["family"]), answers=list(a["answers"]), meta=a))
        return items

    def baselines(self, items) -> dict[str, tuple[float, float | None]]:
        """Per family of ``items``: (chance, majority) in the family's headline units (MME: its total). Both as the
        build's manifest records them for this split (its majority answer comes from the training split), else
        chance from the questions' answer choices (``n_choices``) and no majority; a family with neither is left out
        (a hand-made folder need not carry them)."""
        rows: dict[str, list[dict]] = defaultdict(list)
        for it in items:
            rows[it.meta["family"]].append(it.meta)
        man = self.data_dir / "manifest.json"
        rec = (json.loads(man.read_text()).get("baselines") or {}).get(self.split, {}) if man.is_file() else {}
        out = {}
        for fam in FAMILY_HEADLINE:
            if fam not in rows:
                continue
            b = rec.get(fam) or {}
            if "chance" in b:
                chance = float(b["chance"])
            elif fam == "existence" or all(r.get("subset" if fam == "mme" else "n_choices") for r in rows[fam]):
                chance = chance_headline(fam, rows[fam])
            else:
                continue
            out[fam] = (chance, float(b["majority"]) if "majority" in b else None)
        return out

    def score(self, items, predictions) -> dict:
        preds, missing = predictions_for(items, predictions)
        out = score_rows([it.meta for it in items], preds, self.rules)
        out["missing"] = missing
        out["split"] = self.split
        return with_headline(self.headline, out, self.rules)


@register("sceneqa-val")
class SceneQAVal(SceneQA):
    name = "sceneqa-val"

    def __init__(self, data_dir, image_dir=None, split: str = "val", families: Sequence[str] | None = None):
        super().__init__(data_dir, image_dir, split=split, families=families)
