"""A study plan (``configs/study/*.yaml``): the SceneQA build, one training recipe shared by every row, the seeds,
the rows and the head-to-head comparisons; and where each (row, seed) keeps its checkpoint and result."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, read_file
from ..errors import CompactVLMError


@dataclass
class StudyData:
    dir: str = "data/study"
    seed: int = 0
    caption: int = 0
    train: int = 1000
    val: int = 100
    test: int = 150


@dataclass
class StudyRow:
    name: str = ""
    group: str = ""
    compressor: str | None = None  # trained rows
    params: dict[str, Any] = field(default_factory=dict)
    train_overrides: list[str] = field(default_factory=list)  # dotted.key=value on top of the plan's recipe
    from_: str | None = None  # evaluation-only rows: the trained row whose checkpoint they use
    budget: int | None = None  # test-time budget: the compressor's own (objects) or the reduction's
    reduce: str | None = None  # training-free reduction at inference
    reduce_params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def trained(self) -> bool:
        return self.from_ is None


@dataclass
class StudyClaim:
    """A paper's accuracy claim, judged in the report's claims table by ``study.verdicts``: ``kind`` ``greater`` /
    ``less`` (row ``a`` beats / is worse than row ``b``), ``equal`` (no difference beyond ±``tol`` points) or
    ``retains`` (``a`` keeps the reference's accuracy: PRT within ±``tol`` points of 100; no ``b``)."""

    claim: str = ""
    kind: str = "greater"
    a: str = ""
    b: str | None = None
    families: list[str] = field(default_factory=list)  # SceneQA families it is about (empty: the family mean)
    tol: float = 3.0


@dataclass
class StudyPlan:
    name: str = "study"
    description: str = ""
    data: StudyData = field(default_factory=StudyData)
    train_config: str = "configs/train/study_cpu.yaml"
    runs_dir: str = "runs/study"
    results_dir: str = "results/study"
    report: str = "docs/results.md"
    notes: str | None = None  # hand-written reading of the results (Markdown file), included in the report as is
    reference: str = "full-mlp2x"
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_batch_size: int = 8
    eval_limit: int | None = None
    ttft_repeats: int = 5
    bootstrap: int = 1000  # draws of the test-image bootstrap in the report (0: leave it out)
    threads: int = 2
    device: str = "cpu"  # cpu | cuda (training, evaluation and the cost measurement)
    groups: dict[str, str] = field(default_factory=dict)  # group id -> title
    rows: list[StudyRow] = field(default_factory=list)
    # head-to-head contrasts [a, b] the papers claim (a beats / matches b): reported as a - b, paired by seed, with a
    # test-image bootstrap CI, next to the paired difference in validation loss
    comparisons: list[list[str]] = field(default_factory=list)
    # the papers' accuracy claims, each with one of the four verdicts (holds / direction only / not reproduced /
    # untested) in the report's claims table
    claims: list[StudyClaim] = field(default_factory=list)

    def row(self, name: str) -> StudyRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise CompactVLMError(f"the plan has no row {name!r}", f"rows: {', '.join(r.name for r in self.rows)}")

    def validate(self) -> None:
        names = [r.name for r in self.rows]
        dup = {n for n in names if names.count(n) > 1}
        if dup or not all(names):
            raise CompactVLMError(f"study rows need unique, non-empty names (duplicates: {sorted(dup)})",
                                  "give every row its own name")
        for r in self.rows:
            if (r.compressor is None) == (r.from_ is None):
                raise CompactVLMError(f"study row {r.name!r} must have exactly one of `compressor` (trained) or "
                                      "`from` (evaluation-only)", "set one of them")
            if r.from_ is not None and not self.row(r.from_).trained:
                raise CompactVLMError(f"study row {r.name!r} uses {r.from_!r}, which is not a trained row",
                                      "point `from` at a row with a compressor")
        for c in self.comparisons:
            if len(c) != 2 or c[0] == c[1] or not all(n in names for n in c):
                raise CompactVLMError(f"study comparison {c!r} must name two different rows of the plan",
                                      "write comparisons as [row_a, row_b] pairs, e.g. [stf-k2e1, avgpool-k2]")
        if self.reference not in names:
            raise CompactVLMError(f"study reference {self.reference!r} is not a row", "name a row as reference")
        for c in self.claims:
            self._check_claim(c, names)

    @staticmethod
    def _check_claim(c: StudyClaim, names: list[str]) -> None:
        from ..evaluate.benchmarks.sceneqa import FAMILY_HEADLINE
        from .verdicts import KINDS

        what = f"study claim {c.claim!r}"
        if not c.claim:
            raise CompactVLMError("a study claim has no text", "write what the paper claims in `claim`")
        if c.kind not in KINDS:
            raise CompactVLMError(f"{what} has kind {c.kind!r}", f"use one of {', '.join(KINDS)}")
        if c.a not in names:
            raise CompactVLMError(f"{what} names row a={c.a!r}, which is not in the plan", "name a row of the plan")
        if c.kind == "retains":
            if c.b is not None:
                raise CompactVLMError(f"{what}: `retains` is judged against the reference, it takes no b",
                                      "drop `b` (or use kind equal for a row-vs-row claim)")
        elif c.b not in names or c.b == c.a:
            raise CompactVLMError(f"{what} must name a second row b, different from a={c.a!r}",
                                  "set b to the row the claim compares with")
        bad = [f for f in c.families if f not in FAMILY_HEADLINE]
        if bad:
            raise CompactVLMError(f"{what} names unknown SceneQA families {bad}",
                                  f"use {', '.join(FAMILY_HEADLINE)} (or none: the family mean)")
        if c.tol <= 0:
            raise CompactVLMError(f"{what} has tol {c.tol}", "use a positive tolerance in points, e.g. 3")


def load_plan(path: str | os.PathLike) -> StudyPlan:
    data = read_file(Path(path))
    for r in data.get("rows") or []:
        if isinstance(r, dict) and "from" in r:
            r["from_"] = r.pop("from")
    plan = from_dict(StudyPlan, data, prefix="study.")
    plan.validate()
    return plan


def result_path(plan: StudyPlan, row: str, seed: int) -> Path:
    return Path(plan.results_dir) / row / f"seed{seed}.json"


def checkpoint_dir(plan: StudyPlan, row: StudyRow, seed: int) -> Path:
    name = row.from_ or row.name
    return Path(plan.runs_dir) / name / f"s{seed}"
