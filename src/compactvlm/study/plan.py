"""A study plan (``configs/study/*.yaml``): the SceneQA build, one training recipe shared by every row (one stage,
``train_config``, or several run in order, ``train_configs``), the seeds, the rows, the head-to-head comparisons
and claims; and where each (row, seed) keeps its checkpoints and result.

Multi-stage recipes (``train_configs: [stage1.yaml, stage2.yaml]``): each trained row runs every stage in order,
each stage starting (``init.from``) from the same row's previous stage's final checkpoint at the same seed; the
row's compressor, ``params`` and ``train_overrides`` apply to every stage. Which file of the plan's SceneQA build
each stage trains and validates on (and any overrides of that stage alone) is ``stage_data`` (default: stage 1 the dense captions, the last stage the
instruction split or the plan's caption mix, ``data.mix``). A row may take its stage 1 from another row with the
same compressor and params (``from_stage1``) and differ only from stage 2 on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, read_file
from ..errors import CompactVLMError


@dataclass
class StudyMix:
    """A training file mixed from the plan's own SceneQA build (LLaVA-1.5 mixes detailed descriptions into its
    instruction data, so that answering from priors never lowers all of the loss): the first ``qa`` conversations
    of ``train.json`` and the captions ``caption.json[captions[0]:captions[1]]`` (a range stage 1 does not train
    on: stage 1 reads the first ``data.max_samples`` captions), shuffled together with ``seed``. Written once next
    to the data folder (``run.mix_path``); a stage trains on it with ``stage_data: [{train: mix}]``."""

    qa: int = 0
    captions: list[int] = field(default_factory=lambda: [0, 0])
    seed: int = 0

    def validate(self) -> None:
        if self.qa < 0 or len(self.captions) != 2 or not 0 <= self.captions[0] <= self.captions[1]:
            raise CompactVLMError(f"study data.mix needs qa >= 0 and captions [start, stop] with 0 <= start <= stop, "
                                  f"got qa={self.qa}, captions={self.captions}",
                                  "write e.g. mix: {qa: 4200, captions: [4400, 5800], seed: 0}")
        if self.qa + self.captions[1] - self.captions[0] == 0:
            raise CompactVLMError("study data.mix is empty (qa 0 and an empty caption range)",
                                  "give it QA conversations and/or a caption range")


@dataclass
class StudyData:
    dir: str = "data/study"
    seed: int = 0
    caption: int = 0
    train: int = 1000
    val: int = 100
    test: int = 150
    turns: int = 3  # question turns per training conversation (``data build sceneqa --turns``)
    workers: int = 1  # processes rendering the build
    mix: StudyMix | None = None  # a captions + QA mix built from this data (a stage's ``train: mix``)


#: the training files of a SceneQA build a stage may train / validate on (``mix``: the plan's ``data.mix``)
STAGE_TRAIN_FILES = ("caption.json", "train.json", "mix")
STAGE_VAL_FILES = ("caption_val.json", "val.json")


@dataclass
class StudyStageData:
    """What one training stage reads from the plan's SceneQA build: ``train`` (``caption.json``, ``train.json`` or
    ``mix``) and ``val`` (``caption_val.json``, ``val.json`` or null: no validation loss); ``overrides``: dotted
    key=value for this stage only (after the plan's ``train_overrides``, before the row's), e.g. its validation
    interval."""

    train: str = "train.json"
    val: str | None = "val.json"
    overrides: list[str] = field(default_factory=list)


@dataclass
class StudyRow:
    name: str = ""
    group: str = ""
    compressor: str | None = None  # trained rows
    params: dict[str, Any] = field(default_factory=dict)
    train_overrides: list[str] = field(default_factory=list)  # dotted.key=value on top of the plan's recipe
    from_: str | None = None  # evaluation-only rows: the trained row whose checkpoint they use
    budget: int | None = None  # test-time budget: the compressor's own (objects) or the reduction's
    # training-free reduction at inference; on a trained row also active in its last training stage (the model learns on
    # the tokens it keeps: train.config.ReduceConfig)
    reduce: str | None = None
    reduce_params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    seeds: list[int] | None = None  # this row's seeds (e.g. [0] for a 1-seed ablation); default: the plan's
    from_stage1: str | None = None  # multi-stage plans: reuse this trained row's stage-1 checkpoints
    eval_steps: list[int] | None = None  # trained rows: this row's learning-curve steps (default: the plan's)

    @property
    def trained(self) -> bool:
        return self.from_ is None

    def set_test_time(self, model) -> None:
        """Give a loaded model this row's test-time tokens: its reduction at ``budget`` (also the one a trained row
        trained with, in its last stage), else the compressor's own ``budget``, else nothing."""
        if self.reduce:
            model.set_budget(self.budget, reduce=self.reduce, **self.reduce_params)
        elif self.budget is not None:
            model.set_budget(self.budget)


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
class StudyMoonshot:
    """Issue 21's moonshot: the best row at ``tokens`` vision tokens (in-LLM reductions: equivalent tokens), its PRT
    against the reference with a CI, judged against ``target`` (%)."""

    tokens: int = 16
    target: float = 99.0


@dataclass
class StudyPlan:
    name: str = "study"
    description: str = ""
    data: StudyData = field(default_factory=StudyData)
    train_config: str = "configs/train/study_cpu.yaml"  # a one-stage recipe
    # a multi-stage recipe, run in order per row (stage k + 1 starts from stage k's final checkpoint); replaces
    # train_config
    train_configs: list[str] = field(default_factory=list)
    stage_data: list[StudyStageData] = field(default_factory=list)  # per stage (default: see ``stages``)
    train_overrides: list[str] = field(default_factory=list)  # dotted.key=value for every stage of every row
    # false: once a stage's final model is written, delete its resumable checkpoints (optimiser state included),
    # and a row's learning-curve snapshots once its result is written (a fully trained LLM is 545 MB per folder,
    # its checkpoint with AdamW state ~1.6 GB: a study of ~40 trained runs would not fit on the disk otherwise)
    keep_checkpoints: bool = True
    runs_dir: str = "runs/study"
    # multi-stage plans: stage 1 of every row under this folder instead of runs_dir (read, and written when a row's
    # stage 1 is not there yet): another plan's runs_dir with the same stage-1 recipe, so that a plan changing only
    # later stages (e.g. a longer stage 2) reuses its stage-1 models; ``study run`` checks the recipe of each stage 1
    # it finds there against this plan's (``run.check_shared_stage1``) and never deletes its checkpoints
    stage1_runs_dir: str | None = None
    results_dir: str = "results/study"
    report: str = "docs/results.md"
    notes: str | None = None  # hand-written reading of the results (Markdown file), included in the report as is
    reference: str = "full-mlp2x"
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_batch_size: int = 8
    # the weights' dtype when a row is evaluated (test split, its blind controls, learning-curve points, TTFT):
    # float32 (the default: every v2 row) or bfloat16 (1.9x faster answers where the CPU has native bf16; the v2
    # reference gave the same answer to 298 of 320 test questions in both: docs/study_notes_v2.md §6). Named,
    # not "auto": a row's comparisons pair its answers with the reference's, so a plan keeps one dtype on every
    # machine. bfloat16 evaluations have their own folders (``eval_dir``); the result files record the dtype.
    eval_dtype: str = "float32"
    eval_limit: int | None = None
    ttft_repeats: int = 5
    bootstrap: int = 1000  # draws of the test-image bootstrap in the report (0: leave it out)
    threads: int = 2
    device: str = "cpu"  # cpu | cuda (training, evaluation and the cost measurement)
    groups: dict[str, str] = field(default_factory=dict)  # group id -> title
    # a plan extending another (`_base_: other.yaml`) inherits its rows whole; `drop_rows: [names]` leaves some out,
    # `add_rows: [...]` appends its own (and `add_comparisons` to the comparisons)
    rows: list[StudyRow] = field(default_factory=list)
    # head-to-head contrasts [a, b] the papers claim (a beats / matches b): reported as a - b, paired by seed, with a
    # test-image bootstrap CI, next to the paired difference in validation loss
    comparisons: list[list[str]] = field(default_factory=list)
    # the papers' accuracy claims, each with one of the four verdicts (holds / direction only / not reproduced /
    # untested) in the report's claims table
    claims: list[StudyClaim] = field(default_factory=list)
    # blind controls evaluated for every (row, seed) next to the real images (``evaluate.controls``); the
    # shuffled one is what the claims' verdicts read
    controls: list[str] = field(default_factory=lambda: ["shuffled"])
    # steps of the last training stage at which trained rows are also evaluated on the test split (a learning
    # curve; 0 = the stage's starting checkpoint); the weights at those steps are kept for it
    eval_steps: list[int] = field(default_factory=list)
    # convergence: a comparison is flagged "not converged" when a row's validation loss still changes by more than
    # this many nats per 1000 training samples over the last third of its last stage (least-squares slope)
    flat_slope: float = 0.02
    ci_target: float = 2.0  # target half-width (points) of each row's paired 95% CI of Δ family mean vs the reference
    moonshot: StudyMoonshot | None = None  # the report's "Moonshot" section (none: left out)
    # minutes per (row, seed) for the ETA before any row has finished: keys `trained`, `eval` or a row name
    cost_hint: dict[str, float] = field(default_factory=dict)

    @property
    def multi_stage(self) -> bool:
        return len(self.train_configs) > 1

    def stages(self) -> list[tuple[str, StudyStageData]]:
        """(train config, data) of each training stage, in order. Default data: one stage trains on the
        instruction split (``train.json`` / ``val.json``); with several, the first on the dense captions
        (``caption.json`` / ``caption_val.json``) and the others on ``mix`` when ``data.mix`` is set, else on
        ``train.json`` (``val.json``)."""
        configs = list(self.train_configs) or [self.train_config]
        if self.stage_data:
            return list(zip(configs, self.stage_data))
        if len(configs) == 1:
            return [(configs[0], StudyStageData())]
        later = StudyStageData(train="mix" if self.data.mix is not None else "train.json", val="val.json")
        return [(configs[0], StudyStageData(train="caption.json", val="caption_val.json"))] + \
            [(c, later) for c in configs[1:]]

    def row_seeds(self, name: str, seeds: list[int] | None = None) -> list[int]:
        """The seeds of ``seeds`` (default: the plan's) that row ``name`` runs at (its own ``seeds`` if set)."""
        seeds = self.seeds if seeds is None else seeds
        own = self.row(name).seeds
        return [s for s in seeds if own is None or s in own]

    def row_eval_steps(self, name: str) -> list[int]:
        """The last-stage steps at which trained row ``name`` is also evaluated on the test split: its own
        ``eval_steps`` if set (e.g. a longer run's), else the plan's."""
        own = self.row(name).eval_steps
        return list(self.eval_steps if own is None else own)

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
        self._check_stages()
        for r in self.rows:
            if r.seeds is not None and not r.seeds:
                raise CompactVLMError(f"study row {r.name!r} has an empty seeds list", "give it e.g. seeds: [0], or drop it")
            if r.from_stage1 is not None:
                self._check_from_stage1(r)
            if r.trained and r.reduce:
                from ..train.config import ReduceConfig

                try:
                    ReduceConfig(r.reduce, r.budget, dict(r.reduce_params)).validate()
                except CompactVLMError as e:
                    raise CompactVLMError(f"study row {r.name!r} trains with reduce {r.reduce!r}: {e.problem}",
                                          e.fix) from None
        if self.stage1_runs_dir is not None and (
                not self.multi_stage or Path(self.stage1_runs_dir).resolve() == Path(self.runs_dir).resolve()):
            raise CompactVLMError(f"study stage1_runs_dir {self.stage1_runs_dir!r} needs a plan with two or more "
                                  f"training stages and a folder other than its runs_dir ({self.runs_dir!r})",
                                  "point it at another plan's runs_dir with the same stage-1 recipe, or drop it")
        if not self.flat_slope > 0 or not self.ci_target > 0:
            raise CompactVLMError(f"study flat_slope ({self.flat_slope}) and ci_target ({self.ci_target}) must be > 0",
                                  "use e.g. flat_slope: 0.02 (nats per 1000 samples) and ci_target: 2.0 (points)")
        if self.eval_dtype not in ("float32", "bfloat16"):
            raise CompactVLMError(f"study eval_dtype {self.eval_dtype!r} is not supported",
                                  "use float32 or bfloat16 (one dtype for every row and machine of the plan)")
        if self.moonshot is not None and (self.moonshot.tokens < 1 or not 0 < self.moonshot.target <= 100):
            raise CompactVLMError(f"study moonshot {self.moonshot} needs tokens >= 1 and a target PRT in (0, 100]",
                                  "write e.g. moonshot: {tokens: 16, target: 99}")
        for where, steps in [("", self.eval_steps)] + [(f"row {r.name!r}'s ", r.eval_steps) for r in self.rows
                                                       if r.eval_steps is not None]:
            if [s for s in steps if s < 0] or len(set(steps)) != len(steps):
                raise CompactVLMError(f"study {where}eval_steps must be distinct steps >= 0, got {steps}",
                                      "write e.g. eval_steps: [100, 300, 700]")
        untrained = [r.name for r in self.rows if r.eval_steps is not None and not r.trained]
        if untrained:
            raise CompactVLMError(f"study rows {untrained} set eval_steps but train nothing (evaluation-only rows)",
                                  "set eval_steps on trained rows only: the learning curve is of their training")
        from ..evaluate.controls import CONTROLS

        if [c for c in self.controls if c not in CONTROLS] or len(set(self.controls)) != len(self.controls):
            raise CompactVLMError(f"study controls must be distinct entries of {list(CONTROLS)}, got {self.controls}",
                                  "write e.g. controls: [shuffled] (the claims read the shuffled one), or [] for none")
        bad_hint = [k for k, v in self.cost_hint.items() if not (k in ("trained", "eval") or k in names) or not v > 0]
        if bad_hint:
            raise CompactVLMError(f"study cost_hint has bad entries {bad_hint}",
                                  "use keys `trained`, `eval` or row names, each with minutes > 0")

    def _check_stages(self) -> None:
        n = len(self.train_configs) or 1
        if self.stage_data and len(self.stage_data) != n:
            raise CompactVLMError(f"study stage_data has {len(self.stage_data)} entries for {n} training stage(s)",
                                  "give one {train: ..., val: ...} per entry of train_configs, in order")
        sizes = {"caption.json": self.data.caption, "train.json": self.data.train,
                 "caption_val.json": self.data.val, "val.json": self.data.val}
        for k, (cfg, sd) in enumerate(self.stages(), 1):
            if sd.train not in STAGE_TRAIN_FILES:
                raise CompactVLMError(f"study stage {k} ({cfg}) trains on {sd.train!r}",
                                      f"use one of {', '.join(STAGE_TRAIN_FILES)}")
            if sd.val is not None and sd.val not in STAGE_VAL_FILES:
                raise CompactVLMError(f"study stage {k} ({cfg}) validates on {sd.val!r}",
                                      f"use one of {', '.join(STAGE_VAL_FILES)}, or null")
            if sd.train == "mix" and self.data.mix is None:
                raise CompactVLMError(f"study stage {k} ({cfg}) trains on `mix`, but the plan's data has no mix",
                                      "add data.mix: {qa: N, captions: [START, STOP], seed: 0}")
            empty = [f for f in (sd.train, sd.val) if f in sizes and not sizes[f]]
            if empty:
                raise CompactVLMError(f"study stage {k} ({cfg}) reads {', '.join(empty)}, which the plan's data build "
                                      "does not write (its split size is 0)",
                                      "raise data.caption / data.train / data.val, or change stage_data")
        mix = self.data.mix
        if mix is not None and (mix.qa > self.data.train or mix.captions[1] > self.data.caption):
            raise CompactVLMError(f"study data.mix takes {mix.qa} QA conversations and captions {mix.captions}, the "
                                  f"build has {self.data.train} train and {self.data.caption} caption images",
                                  "raise data.train / data.caption or shrink the mix")

    def _check_from_stage1(self, r: StudyRow) -> None:
        what = f"study row {r.name!r} has from_stage1 {r.from_stage1!r}"
        if not self.multi_stage:
            raise CompactVLMError(f"{what}, but the plan has one training stage",
                                  "drop from_stage1, or give the plan train_configs with two or more stages")
        if not r.trained or r.from_stage1 == r.name:
            raise CompactVLMError(f"{what}: only a trained row can take another row's stage 1",
                                  "set it on a row with a compressor, naming another trained row")
        src = self.row(r.from_stage1)
        if not src.trained or src.from_stage1 is not None:
            raise CompactVLMError(f"{what}, which is not a trained row with a stage 1 of its own",
                                  "name a trained row without from_stage1")
        if (src.compressor, src.params) != (r.compressor, r.params):
            raise CompactVLMError(f"{what}, whose compressor differs ({src.compressor} {src.params} vs "
                                  f"{r.compressor} {r.params})", "share stage 1 only between rows with the same "
                                  "compressor and params")

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
    _drop_rows(data, data.pop("drop_rows", None) or [], path)
    for key in ("rows", "comparisons"):  # `add_rows` / `add_comparisons`: appended to the inherited lists
        extra = data.pop(f"add_{key}", None)
        if extra is not None and not isinstance(extra, list):
            raise CompactVLMError(f"study plan {path}: add_{key} must be a list", f"write add_{key}: [...]")
        if extra:
            data[key] = list(data.get(key) or []) + extra
    if data.get("train_config") and data.get("train_configs"):
        raise CompactVLMError(f"study plan {path} has both train_config and train_configs",
                              "keep train_config for a one-stage recipe or train_configs for several stages")
    for r in data.get("rows") or []:
        if isinstance(r, dict) and "from" in r:
            r["from_"] = r.pop("from")
    plan = from_dict(StudyPlan, data, prefix="study.")
    plan.validate()
    return plan


def _drop_rows(data: dict, drop: list, path) -> None:
    """``drop_rows: [names]`` in a plan that extends another (``_base_``): leave those inherited rows out, with the
    comparisons and claims that name them, their ``cost_hint`` and any group left without a row (``rows`` is a
    list, which ``_base_`` replaces whole rather than merging)."""
    if not drop:
        return
    rows = [r for r in data.get("rows") or [] if isinstance(r, dict)]
    unknown = sorted(set(map(str, drop)) - {str(r.get("name")) for r in rows})
    if unknown:
        raise CompactVLMError(f"study plan {path}: drop_rows names rows it does not have: {', '.join(unknown)}",
                              "name rows of the plan or of its _base_ (compactvlm study status lists them)")
    gone = set(map(str, drop))
    # a malformed (non-mapping) row stays for the plan's own validation to name, instead of vanishing here
    data["rows"] = [r for r in data.get("rows") or [] if not (isinstance(r, dict) and str(r.get("name")) in gone)]
    data["comparisons"] = [c for c in data.get("comparisons") or [] if not gone & set(map(str, c))]
    data["claims"] = [c for c in data.get("claims") or [] if not gone & {str(c.get("a")), str(c.get("b"))}]
    data["cost_hint"] = {k: v for k, v in (data.get("cost_hint") or {}).items() if k not in gone}
    used = {str(r.get("group")) for r in data["rows"] if isinstance(r, dict)}
    data["groups"] = {k: v for k, v in (data.get("groups") or {}).items() if str(k) in used}


def result_path(plan: StudyPlan, row: str, seed: int) -> Path:
    return Path(plan.results_dir) / row / f"seed{seed}.json"


def eval_dir(plan: StudyPlan, row: str, seed: int, control: str | None = None, step: int | None = None) -> Path:
    """A (row, seed)'s test evaluation with real images: ``<runs_dir>/eval/<row>/s<seed>``; with ``control``, its
    blind control ``s<seed>.<control>``; with ``step``, its learning-curve point ``s<seed>.step-NNNNNN``; each with
    ``.bfloat16`` last where the plan evaluates in bfloat16 (answers of two dtypes never share a folder)."""
    name = f"s{seed}" + (f".{control}" if control else "") + (f".step-{step:06d}" if step is not None else "")
    return Path(plan.runs_dir) / "eval" / row / (name + (".bfloat16" if plan.eval_dtype == "bfloat16" else ""))


def eval_run_info(plan: StudyPlan, info: dict) -> dict:
    """An evaluation's record (``metrics.json``'s ``run``) with the plan's evaluation dtype where it is not float32
    (the only dtype before the plan had ``eval_dtype``)."""
    return info if plan.eval_dtype == "float32" else {**info, "dtype": plan.eval_dtype}


def eval_features(plan: StudyPlan):
    """The frozen encoder's blocks of the test images, on disk under ``<runs_dir>/features-eval`` (one folder per
    encoder, blocks and dtype): a row's real-image pass encodes each image once; its blind controls, its
    learning-curve checkpoints and the evaluation-only rows built on it read them (``model.features``)."""
    from ..model.features import ImageFeatureCache

    return ImageFeatureCache(root=Path(plan.runs_dir) / "features-eval")


def stage_dirs(plan: StudyPlan, row: StudyRow, seed: int) -> list[Path]:
    """The training output folder of each stage of a row (an evaluation-only row: its source's). One stage:
    ``<runs_dir>/<row>/s<seed>``; several: ``<runs_dir>/<row>/s<seed>/stage<k>``, stage 1 in the ``from_stage1``
    row's folder when the row shares it, under ``stage1_runs_dir`` when the plan takes its stage 1 from another's."""
    src = plan.row(row.from_) if row.from_ else row
    base = Path(plan.runs_dir) / src.name / f"s{seed}"
    if not plan.multi_stage:
        return [base]
    dirs = [base / f"stage{k}" for k in range(1, len(plan.train_configs) + 1)]
    dirs[0] = Path(plan.stage1_runs_dir or plan.runs_dir) / (src.from_stage1 or src.name) / f"s{seed}" / "stage1"
    return dirs


def checkpoint_dir(plan: StudyPlan, row: StudyRow, seed: int) -> Path:
    """The training output folder of the row's last stage (whose ``final`` is the model the row evaluates)."""
    return stage_dirs(plan, row, seed)[-1]
