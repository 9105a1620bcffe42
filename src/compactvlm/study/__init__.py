"""The study: the papers' experiments on SceneQA, one result JSON per (row, seed), and the report built from them.

A *plan* (``configs/study/*.yaml``) names the SceneQA build, one training recipe shared by every row, the seeds and
the rows. A row is either trained (``compressor`` + ``params``) or evaluation-only on another row's checkpoint
(``from``), optionally with a test-time ``budget`` (Mask-LLaVA's object tokens) or a training-free ``reduce``
(random / avgpool / visionzip / fastv). For each (row, seed) ``run_row`` trains (resuming an interrupted run),
evaluates on the SceneQA test split (resuming an interrupted evaluation), measures TTFT (encode + compress +
prefill + first-token logits, median of repeats, batch 1) and counts FLOPs of that same forward with
``torch.utils.flop_counter.FlopCounterMode`` (``efficiency.flops.flop_counter``; vision = encoder + compressor;
LLM = the rest), then writes
``results/<plan>/<row>/seed<S>.json``. ``write_report`` aggregates those files only: mean and 95% CI (Student t)
over seeds per question family, PRT against the plan's reference row, plots of accuracy and TTFT versus tokens.
Nothing in the report is typed by hand.

    compactvlm study run --plan configs/study/sceneqa_cpu.yaml [--rows stf-k2e1,full-mlp2x] [--seeds 0,1,2]
    compactvlm study report --plan configs/study/sceneqa_cpu.yaml
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
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


def load_plan(path: str | os.PathLike) -> StudyPlan:
    data = read_file(Path(path))
    for r in data.get("rows") or []:
        if isinstance(r, dict) and "from" in r:
            r["from_"] = r.pop("from")
    plan = from_dict(StudyPlan, data, prefix="study.")
    plan.validate()
    return plan


# ---- running --------------------------------------------------------------------------------------------------
def result_path(plan: StudyPlan, row: str, seed: int) -> Path:
    return Path(plan.results_dir) / row / f"seed{seed}.json"


def checkpoint_dir(plan: StudyPlan, row: StudyRow, seed: int) -> Path:
    name = row.from_ or row.name
    return Path(plan.runs_dir) / name / f"s{seed}"


def data_build_lock(d: Path):
    """The inter-process lock that guards building the SceneQA folder ``d`` (a file next to it)."""
    from filelock import FileLock

    d.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d.parent / f".{d.name}.build.lock"))


def ensure_data(plan: StudyPlan, progress: bool = True) -> Path:
    """Build the plan's SceneQA once. Safe when several study processes start at once on a fresh checkout: the
    first builds under a lock next to the folder, the others wait for it and then reuse its build (without the lock
    a second process found the half-written folder and failed with "is not empty and holds no SceneQA build")."""
    d = Path(plan.data.dir)
    if (d / "manifest.json").exists():
        return d
    with data_build_lock(d):
        if not (d / "manifest.json").exists():  # another process may have built it while this one waited
            from ..data.sceneqa import build_sceneqa

            build_sceneqa(d, seed=plan.data.seed, progress=progress,
                          sizes={"caption": plan.data.caption, "train": plan.data.train, "val": plan.data.val,
                                 "test": plan.data.test})
    return d


def train_row(plan: StudyPlan, row: StudyRow, seed: int, data_dir: Path) -> Path:
    """Train (or resume) a row's model; returns the final checkpoint folder."""
    from ..train import load_train_config, train

    out = checkpoint_dir(plan, row, seed)
    final = out / "final"
    if (final / "compactvlm.json").exists():
        return final
    overrides = [f"output_dir={out}", f"seed={seed}", f"data.train={data_dir / 'train.json'}",
                 f"data.val={data_dir / 'val.json'}", f"model.compressor={row.compressor}",
                 f"threads={plan.threads}", f"device={plan.device}"]
    cfg = load_train_config(plan.train_config, overrides + list(row.train_overrides))
    cfg.model.compressor_params = dict(row.params)  # a mapping, not a dotted override
    return train(cfg).final_dir


def _train_stats(run_dir: Path) -> dict:
    """Seconds per optimiser step (median over the run, first two steps left out: warm-up), val-loss curve."""
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        return {}
    steps, curve, tps = [], [], []
    segments: list[float] = []  # wall clock of each (resumed) segment of the run: its last logged time
    for line in f.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("event") == "start":
            if e.get("resumed_from") is None:  # a fresh start: what an earlier, abandoned attempt logged is void
                steps, curve, tps, segments = [], [], [], []
            else:  # resumed at step S: steps after S that the killed segment logged are done again
                s0 = int(e.get("step", 0))
                keep = [i for i, (st, _) in enumerate(steps) if st <= s0]
                steps, tps = [steps[i] for i in keep], [tps[i] for i in keep]
                curve = [c for c in curve if c[0] <= s0]
            segments.append(0.0)
        if segments and e.get("time") is not None:
            segments[-1] = max(segments[-1], float(e["time"]))
        if e.get("event") == "train":
            steps.append((int(e["step"]), e["sec_per_step"]))  # (step, seconds)
            tps.append(e["tokens_per_sec"])
        elif e.get("event") == "eval" and e.get("val_loss") is not None:
            curve.append([e["step"], e["val_loss"]])
    secs = [sec for _, sec in steps]
    tail = secs[2:] or secs
    return {"steps": len(secs), "sec_per_step": statistics.median(tail) if tail else None,
            "tokens_per_sec": statistics.median(tps[2:] or tps) if tps else None, "val_loss_curve": curve,
            "wall_seconds": sum(segments)}


def measure_cost(model, image, question: str, repeats: int, extra_state: dict | None = None) -> dict:
    """TTFT (median ms, with min/max and process CPU ms) and FLOPs of one batch-1 forward: encode + compress +
    prefill + first-token logits (``logits_to_keep=1``); FLOPs split into vision (encoder + compressor) and LLM.
    The time comes from ``efficiency.timing.compare_ttft``, the one timing path; to compare rows' speed, time
    them together with it (interleaved), as ``compactvlm demo`` and ``bench`` do."""
    import torch

    from ..efficiency.flops import flop_counter
    from ..efficiency.timing import compare_ttft

    dev = next(model.llm.parameters()).device
    ids, mask = model.pad_left([model.prompt_ids(question)])
    ids, mask, pix = ids.to(dev), mask.to(dev), model.processor([image]).to(dev)
    with torch.inference_mode():
        with flop_counter() as fc:
            model.forward(ids, mask, pix, logits_to_keep=1, extra_state=extra_state)
        total = fc.get_total_flops()
        with flop_counter() as fv:
            model.encode_images(pix, extra_state)
        vision = fv.get_total_flops()
    wall = cpu = {"median": None, "min": None, "max": None}
    if repeats > 0:  # repeats 0: FLOPs only (callers that time several models together, interleaved)
        cmp = compare_ttft([("row", model)], pix, question, repeats=repeats, warmup=1,
                           extra_states={"row": extra_state})
        wall, cpu = cmp.wall_ms["row"], cmp.cpu_ms["row"]
    return {"ttft_ms": wall["median"], "ttft_ms_min": wall["min"], "ttft_ms_max": wall["max"],
            "ttft_cpu_ms": cpu["median"], "dtype": str(next(model.llm.parameters()).dtype).replace("torch.", ""),
            "prompt_tokens": int(ids.shape[1]), "flops_total": int(total), "flops_vision": int(vision),
            "flops_llm": int(total - vision), "threads": torch.get_num_threads()}


def run_row(plan: StudyPlan, name: str, seed: int, progress: bool = True, force: bool = False) -> Path:
    """Train/evaluate/measure one (row, seed) and write its result JSON (skipped when it exists, unless force)."""
    import torch

    from ..evaluate.answer import make_answer_fn
    from ..data.images import load_image
    from ..evaluate.harness import PREDICTIONS, evaluate, load_predictions
    from ..model.checkpoint import load_pretrained

    row = plan.row(name)
    res = result_path(plan, name, seed)
    if res.exists() and not force:
        return res
    previous = json.loads(res.read_text()) if res.exists() else None
    torch.set_num_threads(plan.threads)
    t0 = time.perf_counter()
    data_dir = ensure_data(plan, progress)
    src = plan.row(row.from_) if row.from_ else row
    ckpt = train_row(plan, src, seed, data_dir)
    t_train = time.perf_counter() - t0
    # evaluation-only rows may change test-time compressor options (e.g. mask_source: given)
    model = load_pretrained(ckpt, compressor_params=dict(row.params) if row.from_ else None, progress=False)
    model.to(plan.device)
    if row.reduce:
        from ..registry import REDUCTIONS

        model.reduction = REDUCTIONS.create(row.reduce, budget=row.budget, model=model, **row.reduce_params)
    elif row.budget is not None:
        model.set_budget(row.budget)
    tokens = model.num_image_tokens()
    out = Path(plan.runs_dir) / "eval" / name / f"s{seed}"
    run_info = {"name": name, "method": row.reduce or model.compressor.registry_name, "vision_tokens": tokens,
                "compressor": model.compressor.registry_name, "compressor_params": dict(model.compressor.params),
                "reduce": row.reduce, "budget": row.budget, "checkpoint": str(ckpt), "seed": seed}
    t1 = time.perf_counter()
    metrics = evaluate("sceneqa", str(data_dir), make_answer_fn(model, str(data_dir)), out,
                       batch_size=plan.eval_batch_size, limit=plan.eval_limit, progress=progress, run_info=run_info)
    t_eval = time.perf_counter() - t1
    first = json.loads((data_dir / "test_questions.jsonl").read_text().splitlines()[0])
    extra = None
    if model.compressor.wants_given_masks:  # the `given` mask source: SceneQA's own masks
        from ..data.sceneqa.masks import object_masks

        s = model.processor.size
        extra = {"masks": [torch.from_numpy(object_masks(str(data_dir), first["image"], size=(s, s))[0])]}
    cost = measure_cost(model, load_image(data_dir / first["image"]), first["text"], plan.ttft_repeats, extra)
    result = {
        "plan": plan.name, "row": asdict(row), "seed": seed, "vision_tokens": tokens,
        "equivalent_tokens_note": getattr(model.reduction, "note", None) if row.reduce == "fastv" else None,
        "metrics": {k: metrics[k] for k in ("components", "family_mean", "headline", "n", "missing", "split")},
        "cost": cost, "train": _train_stats(checkpoint_dir(plan, row, seed)),
        # every answer, so the report can re-score (test-image bootstrap, paired differences) from results/ alone
        "predictions": load_predictions(out / PREDICTIONS),
        # a forced re-run that reused the checkpoint and every prediction keeps the wall time of the real run
        "wall_seconds": (previous["wall_seconds"] if previous and metrics.get("answered_now") == 0
                         and t_train < 60 else {"train_or_reuse": t_train, "eval": t_eval}),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": plan.device,
                     "gpu": torch.cuda.get_device_name() if plan.device == "cuda" else None},
        "command": f"compactvlm study run --plan <plan> --rows {name} --seeds {seed}",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    res.parent.mkdir(parents=True, exist_ok=True)
    tmp = res.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(res)
    return res


def attach_predictions(plan: StudyPlan) -> list[Path]:
    """Add the answers to result files written before results carried them (from the run's evaluation folder
    under ``runs_dir``), after checking that re-scoring those answers gives exactly the stored metrics."""
    from ..evaluate.benchmarks.base import read_jsonl
    from ..evaluate.benchmarks.sceneqa import score_rows
    from ..evaluate.harness import PREDICTIONS, load_predictions

    rows = None
    done = []
    for f in sorted(Path(plan.results_dir).glob("*/seed*.json")):
        res = json.loads(f.read_text())
        if "predictions" in res:
            continue
        pred_file = Path(plan.runs_dir) / "eval" / res["row"]["name"] / f"s{res['seed']}" / PREDICTIONS
        if not pred_file.exists():
            continue
        if rows is None:
            rows = read_jsonl(Path(plan.data.dir) / "test_answers.jsonl")
        preds = load_predictions(pred_file)
        if any(str(r["question_id"]) not in preds for r in rows):
            continue
        again = score_rows(rows, [preds[str(r["question_id"])] for r in rows])
        if abs(again["family_mean"] - res["metrics"]["family_mean"]) > 1e-9:
            raise CompactVLMError(f"the answers in {pred_file} re-score to family mean {again['family_mean']:.3f}, "
                                  f"but {f} says {res['metrics']['family_mean']:.3f}: they are not from the same run",
                                  f"re-run it: compactvlm study run --plan <plan> --rows {res['row']['name']} "
                                  f"--seeds {res['seed']} --force")
        res["predictions"] = preds
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(f)
        done.append(f)
    return done


# ---- report ---------------------------------------------------------------------------------------------------
def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student t; None for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    from scipy.stats import t

    return m, float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def collect(plan: StudyPlan) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in plan.rows:
        d = Path(plan.results_dir) / r.name
        files = sorted(d.glob("seed*.json")) if d.exists() else []
        if files:
            out[r.name] = [json.loads(f.read_text()) for f in files]
    return out


def _fmt(m: float | None, ci: float | None = None, digits: int = 1) -> str:
    if m is None:
        return "–"
    return f"{m:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def summarize(plan: StudyPlan, results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: seeds, tokens, per-family and overall mean ± CI, PRT (per seed against the reference's mean)."""
    from ..evaluate.prt import prt

    ref_runs = results.get(plan.reference, [])
    ref = {}
    if ref_runs:
        comps = [r["metrics"]["components"] for r in ref_runs]
        ref = {k: statistics.fmean(c[k] for c in comps if c.get(k) is not None) for k in comps[0]}
    boots = _bootstraps(plan, results)
    rows = {}
    for name, runs in results.items():
        comps = [r["metrics"]["components"] for r in runs]
        final_loss = [r["train"]["val_loss_curve"][-1][1] for r in runs if r["train"].get("val_loss_curve")]
        fams = {k: mean_ci([c[k] for c in comps if c.get(k) is not None]) for k in comps[0]}
        prts = [prt(c, ref)["prt"] for c in comps] if ref else []
        spec = runs[0]["row"]
        # in-LLM reductions (fastv, pyramiddrop, sparsevlm) keep every vision token in the prompt and prune inside
        # the LLM: plotted at their budget (tokens after layer K for fastv, equivalent tokens for the staged ones)
        from ..registry import REDUCTIONS

        in_llm = bool(spec.get("reduce")) and spec["reduce"] in REDUCTIONS and REDUCTIONS.get(spec["reduce"]).in_llm
        rows[name] = {
            "seeds": [r["seed"] for r in runs], "families": fams,
            "tokens": spec["budget"] if in_llm else runs[0]["vision_tokens"],
            "tokens_label": (f"{runs[0]['vision_tokens']}→{spec['budget']}" if in_llm else str(runs[0]["vision_tokens"])),
            "overall": mean_ci([r["metrics"]["family_mean"] for r in runs]),
            "prt": mean_ci(prts) if prts else (None, None),
            "ttft_ms": statistics.fmean(r["cost"]["ttft_ms"] for r in runs),
            "llm_gflops": statistics.fmean(r["cost"]["flops_llm"] for r in runs) / 1e9,
            "vision_gflops": statistics.fmean(r["cost"]["flops_vision"] for r in runs) / 1e9,
            "sec_per_step": (statistics.fmean(x for x in (r["train"].get("sec_per_step") for r in runs) if x)
                             if any(r["train"].get("sec_per_step") for r in runs) else None),
            "train_steps": runs[0]["train"].get("steps"),
            "val_loss_curve": runs[0]["train"].get("val_loss_curve", []),
            "final_val_loss": mean_ci(final_loss) if final_loss and runs[0]["row"].get("from_") is None else (None, None),
            "final_val_loss_by_seed": ({r["seed"]: r["train"]["val_loss_curve"][-1][1] for r in runs
                                        if r["train"].get("val_loss_curve")} if runs[0]["row"].get("from_") is None else {}),
            "bootstrap": boots.get(name),
            # evaluation, plus training (from the run's own log) for trained rows
            "wall_s": sum(r["wall_seconds"]["eval"] + (r["train"].get("wall_seconds", r["wall_seconds"]["train_or_reuse"])
                                                       if spec.get("from_") is None else 0.0) for r in runs),
            "note": runs[0]["row"].get("note", ""), "from": runs[0]["row"].get("from_"),
            "retrained_source_seeds": _retrained_source_seeds(results, runs),
        }
    return rows


def _retrained_source_seeds(results: dict[str, list[dict]], runs: list[dict]) -> list[int]:
    """Seeds at which an evaluation-only row evaluated a checkpoint of its source row other than the one behind the
    source's own result (its training curve differs: the source was trained again, e.g. in a fresh checkout, and did
    not reproduce). Such seeds are not paired with the source's result."""
    src = runs[0]["row"].get("from_")
    if src is None:
        return []
    theirs = {r["seed"]: r["train"].get("val_loss_curve") for r in results.get(src, [])}
    return [r["seed"] for r in runs
            if r["seed"] in theirs and r["train"].get("val_loss_curve") != theirs[r["seed"]]]


class _Bootstrapper:
    """Test-image bootstraps (``evaluate.bootstrap``) of rows and of paired row-vs-row differences, cached in
    ``<results_dir>/<row>/`` and recomputed only when any answer (or the number of draws) changes."""

    def __init__(self, plan: StudyPlan, results: dict[str, list[dict]]):
        self.plan, self.results, self._answers = plan, results, None

    def runs(self, name: str) -> dict[int, dict]:
        return {r["seed"]: r for r in self.results.get(name, []) if "predictions" in r}

    def __call__(self, name: str, other: str | None, cache: Path) -> dict | None:
        import hashlib

        from ..evaluate.benchmarks.base import read_jsonl
        from ..evaluate.bootstrap import bootstrap_sceneqa

        mine, theirs = self.runs(name), (self.runs(other) if other else None)
        seeds = sorted(s for s in mine if theirs is None or s in theirs)
        if not seeds:
            return None
        preds = [mine[s]["predictions"] for s in seeds]
        refs = [theirs[s]["predictions"] for s in seeds] if theirs is not None else None
        key = hashlib.sha256(json.dumps([preds, refs, self.plan.bootstrap], sort_keys=True).encode()).hexdigest()
        if cache.exists():
            c = json.loads(cache.read_text())
            if c.get("key") == key:
                return c["result"]
        if self._answers is None:
            self._answers = read_jsonl(ensure_data(self.plan, progress=False) / "test_answers.jsonl")
        res = bootstrap_sceneqa(self._answers, preds, refs, n=self.plan.bootstrap, seed=0)
        res["seeds"] = seeds
        cache.write_text(json.dumps({"key": key, "result": res}, indent=1))
        return res


def _bootstraps(plan: StudyPlan, results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: the bootstrap of its family mean and of its paired difference to the reference over the seeds
    both have."""
    if plan.bootstrap <= 0:
        return {}
    boot = _Bootstrapper(plan, results)
    out = {}
    for name in results:
        other = None if name == plan.reference else plan.reference
        res = boot(name, other, Path(plan.results_dir) / name / "bootstrap.json")
        if res is not None:
            out[name] = res
    return out


def compare(plan: StudyPlan, results: dict[str, list[dict]], rows: dict[str, dict]) -> list[dict]:
    """The plan's head-to-head comparisons [a, b]: a - b in family mean over the seeds both have, with its
    test-image bootstrap CI, and the paired difference in final validation loss (both trained)."""
    boot = _Bootstrapper(plan, results)
    out = []
    for a, b in plan.comparisons:
        entry = {"a": a, "b": b, "seeds": [], "delta": None, "val_loss_delta": (None, None)}
        if a in rows and b in rows:
            if plan.bootstrap > 0:
                res = boot(a, b, Path(plan.results_dir) / a / f"vs-{b}.bootstrap.json")
                if res is not None:
                    entry["seeds"], entry["delta"] = res["seeds"], res["delta"]
            pairs = _paired_loss_deltas(rows[a], rows[b])
            if pairs:
                entry["val_loss_delta"] = mean_ci(pairs)
                entry["val_loss_seeds"] = len(pairs)
        out.append(entry)
    return out


def _paired_loss_deltas(a: dict, b: dict) -> list[float]:
    """Final validation loss of summarized row ``a`` minus row ``b``'s, at each seed both have."""
    la, lb = a["final_val_loss_by_seed"], b["final_val_loss_by_seed"]
    return [la[k] - lb[k] for k in la if k in lb]


def _fmt_signed(m: float, ci: float | None = None, digits: int = 1) -> str:
    return ("+" if m >= 0 else "") + _fmt(m, ci, digits)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _fmt_delta(b: dict | None) -> str:
    if not b or not b.get("delta"):
        return "–"
    d, lo, hi = b["delta"]
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def write_report(plan: StudyPlan, plan_path: str | os.PathLike, out_md: str | os.PathLike | None = None) -> Path:
    attached = attach_predictions(plan)
    if attached:
        print(f"[study] attached the answers of {len(attached)} earlier result file(s) from {plan.runs_dir}/eval")
    results = collect(plan)
    if not results:
        raise CompactVLMError(f"no study results under {plan.results_dir}",
                              f"run `compactvlm study run --plan {plan_path}` first")
    rows = summarize(plan, results)
    out = Path(out_md or plan.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    png_acc, png_ttft = _plots(plan, rows, out)
    fams = list(next(iter(results.values()))[0]["metrics"]["components"])
    hw = next(iter(results.values()))[0]["hardware"]
    n_img = next((s["bootstrap"]["clusters"] for s in rows.values() if s.get("bootstrap")), "the")
    lines = [f"# Results: {plan.name}", "", plan.description.strip(), "",
             f"Generated by `compactvlm study report --plan {plan_path}` from the JSON files under "
             f"`{plan.results_dir}/` (one per row and seed, written by `compactvlm study run --plan {plan_path}`). "
             f"Hardware: {hw['cpus']} CPU cores ({hw['processor']}), {hw['torch_threads']} torch threads, "
             f"{('GPU ' + str(hw.get('gpu'))) if hw.get('device') == 'cuda' else 'no GPU'}. "
             f"Scores are in % (MME: its own 0–400 scale per family as summed acc + acc+); ± is the 95% CI over "
             f"seeds (Student t), shown only with ≥ 2 seeds. Δ vs ref: the row's family mean minus the reference's, "
             f"averaged over the seeds both have, with a 95% percentile CI from a paired cluster bootstrap over the "
             f"{n_img} test images ({plan.bootstrap} draws; `compactvlm.evaluate.bootstrap`): it measures how much the "
             f"gap depends on which questions were asked, not on the training seed. Final val loss: SceneQA validation "
             f"loss at the last step, mean ± CI over seeds (trained rows). PRT: performance retained versus `{plan.reference}` "
             f"(VisToG Eq. 6–7, mean over families of score / reference score). FastV rows (`256→B`) keep all "
             f"vision tokens for the first K LLM layers and B after; their FLOPs and TTFT include that. TTFT here is measured once per run (batch 1, "
             f"median of {plan.ttft_repeats}) under whatever else the machine was running then; for controlled ratios "
             f"between methods use one `compactvlm bench` run (results/bench/). Train s/step is the median step time "
             f"of each run under the same caveat.", ""]
    if plan.notes and Path(plan.notes).exists():
        lines += ["## Reading these results", "", Path(plan.notes).read_text().strip(), ""]
    missing = [r.name for r in plan.rows if r.name not in rows]
    if missing:
        lines += [f"**Not yet run** (rows in the plan without a result file): {', '.join(missing)}.", ""]
    for gid, title in plan.groups.items():
        members = [r for r in plan.rows if r.group == gid and r.name in rows]
        if not members:
            continue
        lines += [f"## {gid}. {title}", "",
                  "| row | seeds | vision tokens | " + " | ".join(f.split("/")[-1] for f in fams)
                  + " | family mean | Δ vs ref [95% CI, test images] | PRT % | final val loss | LLM prefill GFLOPs "
                  "| TTFT ms | train s/step |",
                  "|---|---:|---:|" + "---:|" * (len(fams) + 7)]
        for r in members:
            s = rows[r.name]
            lines.append(f"| `{r.name}` | {len(s['seeds'])} | {s['tokens_label']} | "
                         + " | ".join(_fmt(*s["families"][f]) for f in fams)
                         + f" | {_fmt(*s['overall'])} | {_fmt_delta(s['bootstrap'])} | {_fmt(*s['prt'])} | "
                         f"{_fmt(*s['final_val_loss'], digits=3)} | {s['llm_gflops']:.1f} | "
                         f"{s['ttft_ms']:.0f} | {_fmt(s['sec_per_step'], None, 2)} |")
        notes = [f"- `{r.name}`: " + "; ".join(filter(None, [
                     r.note, f"evaluates `{r.from_}`'s checkpoint" if r.from_ else "",
                     (f"**seed(s) {', '.join(map(str, rows[r.name]['retrained_source_seeds']))} evaluate a retrained "
                      f"`{r.from_}` checkpoint whose training did not reproduce `{r.from_}`'s result (different "
                      "validation-loss curve): not paired with it**") if rows[r.name]["retrained_source_seeds"] else ""]))
                 for r in members if r.note or r.from_]
        lines += [""] + notes + ([""] if notes else [])
        lines += ["Reproduce: `compactvlm study run --plan " + str(plan_path) + " --rows "
                  + ",".join(r.name for r in members) + "` then `compactvlm study report --plan " + str(plan_path)
                  + "`; wall time of these rows here: " + f"{sum(rows[r.name]['wall_s'] for r in members) / 60:.1f} min.",
                  ""]
    comparisons = compare(plan, results, rows)
    if comparisons:
        lines += ["## Head-to-head comparisons", "",
                  "The papers' direct claims (row a beats or matches row b), from the same result files. Δ a − b: "
                  "family mean over the seeds both rows have, with a 95% CI from the paired test-image bootstrap; "
                  "Δ val loss: final validation loss paired by seed (mean ± 95% CI over seeds; lower is better "
                  "for a).", "",
                  "| a | b | tokens a / b | family mean a / b | Δ a − b [95% CI, test images] | Δ val loss a − b |",
                  "|---|---|---:|---:|---:|---:|"]
        for c in comparisons:
            a, b = rows.get(c["a"]), rows.get(c["b"])
            if a is None or b is None:
                lines.append(f"| `{c['a']}` | `{c['b']}` | not yet run | | | |")
                continue
            vl = c["val_loss_delta"]
            vl_txt = "–" if vl[0] is None else _fmt_signed(*vl, digits=3) + f" ({_seeds(c['val_loss_seeds'])})"
            n_seeds = f" ({_seeds(len(c['seeds']))})" if c["seeds"] else ""
            lines.append(f"| `{c['a']}` | `{c['b']}` | {a['tokens_label']} / {b['tokens_label']} | "
                         f"{_fmt(a['overall'][0])} / {_fmt(b['overall'][0])} | "
                         f"{_fmt_delta({'delta': c['delta']})}{n_seeds} | {vl_txt} |")
        lines += [""]
    ref_row = rows.get(plan.reference)
    lines += ["## Validation loss during training", "",
              f"Final val loss per seed, and its difference to `{plan.reference}` paired by seed (same data order and "
              "validation samples; mean ± 95% CI over the seeds both have, shown with ≥ 2).", "",
              "| row | steps | final val loss by seed | Δ vs ref (paired) | val loss curve, first seed (step: loss) |",
              "|---|---:|---|---:|---|"]
    for name, s in rows.items():
        if s["from"] is None and s["val_loss_curve"]:
            curve = ", ".join(f"{st}: {v:.3f}" for st, v in s["val_loss_curve"])
            by_seed = s["final_val_loss_by_seed"]
            pairs = _paired_loss_deltas(s, ref_row) if ref_row and name != plan.reference else []
            delta = _fmt_signed(*mean_ci(pairs), digits=3) if pairs else "–"
            seeds_txt = ", ".join(f"s{k}: {v:.3f}" for k, v in sorted(by_seed.items()))
            lines.append(f"| `{name}` | {s['train_steps']} | {seeds_txt} | {delta} | {curve} |")
    lines += ["", f"![accuracy vs tokens]({png_acc.name})", "", f"![TTFT vs tokens]({png_ttft.name})", ""]
    out.write_text("\n".join(lines) + "\n")
    (out.parent / (out.stem + ".json")).write_text(json.dumps(rows, indent=1))
    (out.parent / (out.stem + "_comparisons.json")).write_text(json.dumps(comparisons, indent=1))
    return out


def _series(plan: StudyPlan, row: StudyRow) -> str:
    """The plot series a row belongs to: one line per method and variant, test-time variants apart."""
    if row.reduce:
        return f"{row.reduce} (training-free)"
    src = plan.row(row.from_) if row.from_ else row
    params = {**src.params, **(row.params if row.from_ else {})}
    name = "mbtf+stf" if src.compressor == "stf" and params.get("mbtf") else str(src.compressor)
    if params.get("attention") == "full":
        name += " (full attention)"
    if params.get("mask_source") == "given":
        name += " (given masks)"
    return name


def _plots(plan: StudyPlan, rows: dict, out_md: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method = {r.name: _series(plan, r) for r in plan.rows}
    paths = []
    for key, ylabel, fname in (("overall", "SceneQA family mean (%)", "accuracy_vs_tokens"),
                               ("ttft_ms", "TTFT on CPU (ms)", "ttft_vs_tokens")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_method: dict[str, list] = {}
        for name, s in rows.items():
            y = s[key][0] if isinstance(s[key], tuple) else s[key]
            err = s[key][1] if isinstance(s[key], tuple) else None
            by_method.setdefault(method.get(name, name), []).append((s["tokens"], y, err, name))
        for m, pts in sorted(by_method.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], marker="o",
                        capsize=3, label=m, linestyle="-" if len(pts) > 1 else "none")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("vision tokens reaching the LLM")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = out_md.parent / f"{out_md.stem}_{fname}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths[0], paths[1]


# ---- export (the demo's shipped weights) ----------------------------------------------------------------------
def export_rows(plan: StudyPlan, rows: list[str], seed: int, out_dir: str | os.PathLike,
                dtype: str = "float16") -> list[Path]:
    """Copy trained rows' compressor checkpoints into ``out_dir/<row>/`` (weights cast to ``dtype`` to keep the
    package small; they load into a float32 model unchanged up to that rounding) with ``provenance.json``: the
    plan, seed, training config and the row's measured study result."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from ..model.checkpoint import COMPRESSOR_WEIGHTS, CONFIG_NAME
    from ..model.manifest import write_manifest

    written = []
    for name in rows:
        row = plan.row(name)
        if not row.trained:
            raise CompactVLMError(f"row {name!r} is evaluation-only; it has no weights of its own",
                                  f"export {row.from_!r} instead")
        final = checkpoint_dir(plan, row, seed) / "final"
        res = result_path(plan, name, seed)
        if not (final / CONFIG_NAME).exists() or not res.exists():
            raise CompactVLMError(f"row {name!r} seed {seed} has no finished checkpoint and result",
                                  f"run `compactvlm study run --plan <plan> --rows {name} --seeds {seed}` first")
        dest = Path(out_dir) / name
        if dest.exists() and not ((dest / "provenance.json").is_file() and (dest / CONFIG_NAME).is_file()):
            raise CompactVLMError(f"{dest} exists and is not an earlier `study export` of a row (no provenance.json "
                                  f"and {CONFIG_NAME}); nothing was changed",
                                  "export into a new folder, or move that folder away first")
        tmp = dest.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(final / CONFIG_NAME, tmp / CONFIG_NAME)
        sd = load_file(str(final / COMPRESSOR_WEIGHTS))
        save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in sd.items()}, tmp / COMPRESSOR_WEIGHTS)
        result = json.loads(res.read_text())
        train_cfg = (checkpoint_dir(plan, row, seed) / "train_config.yaml")
        (tmp / "provenance.json").write_text(json.dumps({
            "plan": plan.name, "row": name, "seed": seed, "weights_dtype": dtype,
            "trained_by": f"compactvlm study run --plan <plan> --rows {name} --seeds {seed}",
            "exported_by": f"compactvlm study export --plan <plan> --rows {name} --seed {seed}",
            "train_config": train_cfg.read_text() if train_cfg.exists() else None,
            "study_result": {k: result[k] for k in ("vision_tokens", "metrics", "cost", "train", "finished")},
        }, indent=1))
        write_manifest(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        written.append(dest)
    return written
