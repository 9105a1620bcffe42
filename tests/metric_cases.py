"""The scoring case table (tests/fixtures/metric_cases.json) and this project's answer to each case under a
rule set, in the form the references give theirs (see test_metric_rules.py / test_metric_references.py)."""

from __future__ import annotations

import json
from pathlib import Path

from compactvlm.evaluate.metrics import (exact_match, mmbench_option, mme_yes_no, normalize_answer, pope_yes_no,
                                         sqa_option, vqa_accuracy, vqa_eval_normalize)
from compactvlm.evaluate.metrics.choice import LETTERS
from compactvlm.evaluate.metrics.mme import mme_label

CASES_FILE = Path(__file__).parent / "fixtures" / "metric_cases.json"
KINDS = ("evalai", "vqa", "pope", "mme", "gqa", "sqa", "mmbench")
# why a llava-rules answer departs from lmms-eval's (each id is explained in docs/metrics.md)
WHY = {"vqav2-normaliser", "pope-reading", "mme-reading", "gqa-punctuation", "sqa-reading", "mmbench-reading"}


def load_cases() -> dict[str, list]:
    return json.loads(CASES_FILE.read_text(encoding="utf-8"))


def pope_label(label: str, rules: str) -> str:
    return str(label).strip().lower() if rules == "lmms-eval" else ("no" if label == "no" else "yes")


def ours(kind: str, case, rules: str):
    """This project's output for one case: a normalised string (evalai; with lmms-eval rules also the VQAv2
    script's form), an accuracy (vqa), whether the answer counts as right (pope, mme, gqa, sqa) or the
    option picked (mmbench, None for none)."""
    if kind == "evalai":
        return normalize_answer(case) if rules == "llava" else [normalize_answer(case), vqa_eval_normalize(case)]
    if kind == "vqa":
        return round(vqa_accuracy(case["pred"], case["answers"], rules, case["task"]), 9)
    if kind == "pope":
        return pope_yes_no(case["pred"], rules) == pope_label(case["label"], rules)
    if kind == "mme":
        return mme_yes_no(case["pred"], rules) == mme_label(case["label"], rules)
    if kind == "gqa":
        return bool(exact_match(case["pred"], case["answer"], rules))
    if kind == "sqa":
        return sqa_option(case["pred"], case["n_choices"], rules) == LETTERS[case["answer"]]
    if kind == "mmbench":
        return mmbench_option(case["pred"], case["options"], rules)
    raise ValueError(kind)
