"""lmms-eval 0.7.3's own scoring code, run on the case table (tests/fixtures/metric_cases.json).

lmms-eval is installed code-only (``make test-lmms-eval``), without its heavy dependencies (datasets, pandas,
sacrebleu, ...). Importing its task packages would pull those in, so the functions that score are taken
from lmms-eval's source files as they are (parsed with ``ast``, the chosen top-level definitions executed
with the few names they use). Nothing here re-implements lmms-eval: every output comes from its code.
"""

from __future__ import annotations

import ast
import re
import statistics
import string
from pathlib import Path

import numpy as np
from loguru import logger

import lmms_eval

ROOT = Path(lmms_eval.__file__).parent


def _defs(relpath: str, names: tuple[str, ...] | None = None, **names_used) -> dict:
    """Execute the top-level definitions ``names`` (all, when None) of an lmms-eval source file."""
    path = ROOT / relpath
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if names is not None:
        tree.body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
        missing = set(names) - {n.name for n in tree.body}
        if missing:
            raise RuntimeError(f"{path} has no {sorted(missing)}: not lmms-eval 0.7.3?")
    ns = {"__name__": f"lmms_reference.{relpath}", "__file__": str(path), **names_used}
    exec(compile(tree, str(path), "exec"), ns)  # noqa: S102 - lmms-eval's own code, from the installed package
    return ns


class Reference:
    """lmms-eval's scoring functions, loaded once."""

    def __init__(self) -> None:
        self.EvalAI = _defs("tasks/_task_utils/vqa_eval_metric.py")["EvalAIAnswerProcessor"]
        used = {"EvalAIAnswerProcessor": self.EvalAI, "statistics": statistics, "eval_logger": logger}
        self.textvqa = _defs("tasks/textvqa/utils.py", ("textvqa_process_results",), **used)["textvqa_process_results"]
        self.vizwiz = _defs("tasks/vizwiz_vqa/utils.py", ("vizwiz_vqa_process_results",), **used)["vizwiz_vqa_process_results"]
        self.vqav2 = _defs("tasks/vqav2/utils.py", ("vqav2_process_results",), **used)["vqav2_process_results"]
        self.pope = _defs("tasks/pope/utils.py")
        self.mme = _defs("tasks/mme/utils.py")
        self.sqa = _defs("tasks/scienceqa/utils.py")["sqa_process_results"]
        self.exact_match = _defs("api/metrics.py", ("exact_match_hf_evaluate",), np=np, re=re,
                                 string=string)["exact_match_hf_evaluate"]
        evaluator = _defs("tasks/mmbench/mmbench_evals.py", ("MMBench_Evaluator",), string=string,
                          eval_logger=logger)["MMBench_Evaluator"]
        self.mmbench = evaluator.__new__(evaluator)  # its __init__ only stores API settings
        self.mcq = _defs("tasks/_task_utils/mcq_extract.py")["extract_mcq_answer"]

    # lmms-eval strips every generated answer before process_results (api/task.py); so do these
    def output(self, kind: str, case):
        if kind == "evalai":
            p = self.EvalAI()
            script = p.process_digit_article(p.process_punctuation(case.replace("\n", " ").replace("\t", " ").strip()))
            return [p(case), script]
        if kind == "vqa":
            fn = {"textvqa": self.textvqa, "vizwiz": self.vizwiz, "vqav2": self.vqav2}[case["task"]]
            if case["task"] == "vqav2":
                answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                           for i, a in enumerate(case["answers"])]
            else:
                answers = list(case["answers"])
            return round(float(fn({"question_id": 1, "answers": answers}, [case["pred"].strip()])["exact_match"]), 9)
        if kind == "pope":
            doc = {"question_id": 1, "answer": case["label"]}
            return self.pope["pope_process_results"](doc, [case["pred"].strip()])["pope_accuracy"]["score"] == 1.0
        if kind == "mme":
            doc = {"question_id": "x.png", "answer": case["label"], "category": "existence"}
            out = self.mme["mme_process_results"](doc, [case["pred"].strip()])
            return next(iter(out.values()))["score"] == 1.0
        if kind == "gqa":
            got = self.exact_match(predictions=[case["pred"].strip()], references=[case["answer"]], ignore_case=True,
                                   ignore_punctuation=True)["exact_match"]
            return bool(got == 1.0)
        if kind == "sqa":
            doc = {"choices": [f"choice {i}" for i in range(case["n_choices"])], "answer": case["answer"]}
            return self.sqa(doc, [case["pred"].strip()])["exact_match"] == 1.0
        if kind == "mmbench":
            pred = case["pred"].strip()
            choices = {k: v for k, v in zip("ABCD", case["options"])}
            picked = self.mmbench.can_infer(pred, dict(choices)) or self.mcq(pred, choices=sorted(choices))
            return picked or None
        raise ValueError(kind)

    # whole-set aggregates (lmms-eval's aggregation functions)
    def pope_aggregate(self, cases) -> dict:
        rows = [self.pope["pope_process_results"]({"question_id": i, "answer": c["label"]}, [c["pred"].strip()])
                ["pope_accuracy"] for i, c in enumerate(cases)]
        return {k: self.pope[f"pope_aggregate_{k}"](rows) for k in ("accuracy", "precision", "recall", "f1_score",
                                                                    "yes_ratio")}

    def mme_aggregate(self, cases, categories, images) -> float:
        rows = []
        for c, cat, img in zip(cases, categories, images):
            doc = {"question_id": img, "answer": c["label"], "category": cat}
            rows.append(next(iter(self.mme["mme_process_results"](doc, [c["pred"].strip()]).values())))
        return self.mme["mme_aggregate_results"](rows)
