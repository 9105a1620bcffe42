"""Running one (row, seed) of a plan: build the data once (and the plan's caption mix), train every stage (or
resume), evaluate on the test split with real images and with each blind control, evaluate the learning-curve
points (``eval_steps``), measure TTFT and FLOPs, write ``results/<plan>/<row>/seed<S>.json``."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from ..efficiency.cost import measure_cost
from ..errors import CompactVLMError
from ..model.build import EMULATED_BF16_COST, bf16_is_fast
from ..runtime import set_threads
from .controls import record_baselines
from .plan import StudyPlan, StudyRow, eval_dir, eval_features, eval_run_info, result_path, stage_dirs
from .source import missing_source


def data_build_lock(d: Path):
    """The inter-process lock that guards building the SceneQA folder ``d`` (a file next to it)."""
    from filelock import FileLock

    d.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d.parent / f".{d.name}.build.lock"))


def emulated_bf16(plan: StudyPlan) -> str | None:
    """Why this machine should not run the plan's rows, or None: a plan that answers in bfloat16 (``eval_dtype``)
    on a device whose bf16 matmuls are emulated (no AMX / AVX512-BF16): there its answers are slow
    (``EMULATED_BF16_COST``; a 64x576 @ 576x1536 matmul alone: 1.1 vs 49.6 GFLOP/s on one AVX2 core), and
    ``precision: auto`` trains in fp32, unlike rows trained where bf16 is native."""
    if plan.eval_dtype != "bfloat16" or bf16_is_fast(plan.device):
        return None
    import torch

    where = f"CPU (torch: {torch.backends.cpu.get_cpu_capability()})" if plan.device == "cpu" else "GPU"
    return (f"plan {plan.name!r} answers in bfloat16 (eval_dtype), and this {where} has no native bf16 matmuls: "
            f"they are emulated, and {EMULATED_BF16_COST}, so each of its test passes takes that much longer; "
            "its trained rows would also train in fp32 here "
            "(precision auto), not in the bf16 of rows trained on a native-bf16 machine")


def ensure_data(plan: StudyPlan, progress: bool = True) -> Path:
    """Build the plan's SceneQA once (and its caption mix, ``data.mix``). Safe when several study processes start
    at once on a fresh checkout: the first builds under a lock next to the folder, the others wait for it and then
    reuse its build (without the lock a second process found the half-written folder and failed with "is not
    empty and holds no SceneQA build")."""
    d = Path(plan.data.dir)
    if (d / "manifest.json").exists() and (plan.data.mix is None or mix_path(plan).exists()):
        return d
    with data_build_lock(d):
        if not (d / "manifest.json").exists():  # another process may have built it while this one waited
            from ..data.sceneqa import build_sceneqa

            build_sceneqa(d, seed=plan.data.seed, progress=progress, turns=plan.data.turns, workers=plan.data.workers,
                          sizes={"caption": plan.data.caption, "train": plan.data.train, "val": plan.data.val,
                                 "test": plan.data.test})
        if plan.data.mix is not None and not mix_path(plan).exists():
            write_mix(plan, d)
    return d


def mix_path(plan: StudyPlan) -> Path:
    """Where the plan's caption + QA mix lives: next to the data folder (a SceneQA build folder holds only the
    build's own files), named by its recipe, e.g. ``data/study_v2.mix-qa4200-cap4400-5800-s0.json``. Its image
    paths are relative to the data folder (the stage trains with ``data.image_root`` set to it)."""
    m, d = plan.data.mix, Path(plan.data.dir)
    return d.with_name(f"{d.name}.mix-qa{m.qa}-cap{m.captions[0]}-{m.captions[1]}-s{m.seed}.json")


def write_mix(plan: StudyPlan, data_dir: Path) -> Path:
    """The plan's mix (``data.mix``): see :func:`compactvlm.data.mix.mix_records`."""
    from ..data.mix import write_mix as write

    m = plan.data.mix
    return write(data_dir, mix_path(plan), m.qa, tuple(m.captions), m.seed)


def stage_overrides(plan: StudyPlan, row: StudyRow, seed: int, data_dir: Path, k: int, out: Path,
                    init: Path | None) -> list[str]:
    """The dotted overrides that turn stage ``k`` (0-based) of the plan's recipe into this row's run: output
    folder, seed, the stage's data from the plan's build, the row's compressor, threads, device, the previous
    stage's checkpoint, then the plan's ``train_overrides``, the stage's own (``stage_data[k].overrides``) and the
    row's (last, so they win)."""
    _, sd = plan.stages()[k]
    train = mix_path(plan) if sd.train == "mix" else data_dir / sd.train
    ov = [f"output_dir={out}", f"seed={seed}", f"data.train={train}",
          f"data.val={data_dir / sd.val}" if sd.val else "data.val=null", f"model.compressor={row.compressor}",
          f"threads={plan.threads}", f"device={plan.device}"]
    if sd.train == "mix":
        ov.append(f"data.image_root={data_dir}")  # the mix file lives outside the data folder
    if init is not None:
        ov.append(f"init.from={init}")
    return ov + list(plan.train_overrides) + list(sd.overrides) + list(row.train_overrides)


def stage_config(plan: StudyPlan, row: StudyRow, seed: int, data_dir: Path, k: int, out: Path, init: Path | None):
    """Stage ``k``'s ``TrainConfig`` for this row and seed."""
    from ..train import load_train_config

    cfg = load_train_config(plan.stages()[k][0], stage_overrides(plan, row, seed, data_dir, k, out, init))
    cfg.model.compressor_params = dict(row.params)  # a mapping, not a dotted override
    if row.trained and row.reduce and k == len(plan.stages()) - 1:  # the last stage trains with the row's reduction
        from ..train.config import ReduceConfig

        cfg.reduce = ReduceConfig(row.reduce, row.budget, dict(row.reduce_params))
        cfg.validate()
    return cfg


def check_stages(plan: StudyPlan) -> tuple[list, list[str]]:
    """Load every stage's config (for the reference row, seed 0) before any work, so a missing file or a bad
    key fails at once, and check that a caption mix does not repeat captions stage 1 trains on (stage 1 reads
    the first ``data.max_samples`` captions; an error). Returns the stage configs and warnings: a stage whose
    ``data.max_samples`` exceeds what the plan's data gives it trains fewer steps than its recipe says."""
    row = plan.row(plan.reference)
    row = row if row.trained else plan.row(row.from_)
    data_dir = Path(plan.data.dir)
    cfgs, warnings = [], []
    avail = {"caption.json": plan.data.caption, "train.json": plan.data.train}
    if plan.data.mix is not None:
        m = plan.data.mix
        avail["mix"] = m.qa + m.captions[1] - m.captions[0]
    stages = plan.stages()
    for k, (path, sd) in enumerate(stages):
        cfg = stage_config(plan, row, 0, data_dir, k, Path(plan.runs_dir) / "check", Path("prev") if k else None)
        cfgs.append(cfg)
        n = cfg.data.max_samples
        if n is not None and n > avail[sd.train]:
            warnings.append(f"stage {k + 1} ({path}) reads up to data.max_samples={n} samples of {sd.train}, the "
                            f"plan's data gives it {avail[sd.train]}: it trains fewer steps than its recipe says")
    mix = plan.data.mix
    if mix is not None and stages[0][1].train == "caption.json" and any(sd.train == "mix" for _, sd in stages[1:]):
        used = min(cfgs[0].data.max_samples or plan.data.caption, plan.data.caption)
        if mix.captions[0] < used and mix.captions[1] > mix.captions[0]:
            raise CompactVLMError(f"data.mix takes captions {mix.captions}, but stage 1 ({stages[0][0]}) trains on "
                                  f"the first {used}: the mix would repeat them",
                                  f"start the mix's caption range at {used} or later")
    return cfgs, warnings


def train_row(plan: StudyPlan, row: StudyRow, seed: int, data_dir: Path, snapshot_steps: list[int] | None = None) -> Path:
    """Train (or resume) every stage of a row's model, each from the previous stage's final checkpoint; returns
    the last stage's final checkpoint folder. ``snapshot_steps``: keep the last stage's weights at these steps
    (``curve.SnapshotAt``) for the learning curve."""
    from ..train import train

    dirs = stage_dirs(plan, row, seed)
    init = None
    for k, out in enumerate(dirs):
        final = out / "final"
        who = plan.row(row.from_stage1) if k == 0 and row.from_stage1 else row
        shared = k == 0 and plan.stage1_runs_dir is not None
        if shared:  # another plan's stage 1: its recipe must be this plan's, finished or not
            check_shared_stage1(plan, who, seed, data_dir, out)
        trained = False
        if not (final / "compactvlm.json").exists():
            cfg = stage_config(plan, who, seed, data_dir, k, out, init)
            callbacks = []
            if snapshot_steps and k == len(dirs) - 1:
                from .curve import SnapshotAt, snapshot_root

                callbacks.append(SnapshotAt(snapshot_steps, snapshot_root(out)))
            train(cfg, callbacks)
            trained = True
        if not plan.keep_checkpoints and (trained or not shared):  # never another plan's checkpoints
            drop_checkpoints(out)
        init = final
    return init


def check_shared_stage1(plan: StudyPlan, row: StudyRow, seed: int, data_dir: Path, out: Path) -> None:
    """A stage 1 under ``stage1_runs_dir`` (another plan's) is reused only when the recipe it was trained with (its
    ``train_config.yaml``) is the one this plan gives that row and seed: the same keys as a resume checks (output
    folder, threads, device, logging and the like aside); a clear error naming the differing keys otherwise. A
    folder without a config yet (never started) passes: this plan trains it there."""
    import yaml

    from ..train.config import to_plain
    from ..train.trainer import config_differences

    saved_file = out / "train_config.yaml"
    if not saved_file.exists():
        return
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    mine = to_plain(stage_config(plan, row, seed, data_dir, 0, out, None))
    diff = config_differences(saved, mine)
    if diff:
        raise CompactVLMError(
            f"stage 1 of `{row.name}` seed {seed} in {out} (the plan's stage1_runs_dir {plan.stage1_runs_dir}) was "
            f"trained with another recipe: {', '.join(diff)} differ from what this plan gives it",
            "point stage1_runs_dir at a plan whose stage 1 is this plan's (same train config, data and overrides), "
            "or drop stage1_runs_dir to train stage 1 in this plan's own runs_dir")


def drop_checkpoints(run_dir: Path) -> None:
    """Delete the resumable checkpoints of a finished training run (its ``final`` model stays)."""
    import shutil

    from ..train.state import list_checkpoints

    if (run_dir / "final" / "compactvlm.json").exists():
        for _, d in list_checkpoints(run_dir):
            shutil.rmtree(d)


def _train_stats(run_dir: Path) -> dict:
    """Seconds per optimiser step (median over the run, first two steps left out: warm-up), val-loss curve
    ([step, loss]), the shuffled-image gap of the blindness gauge at each validation pass ([step, gap]), global
    batch size (samples per step, from the run's ``train_config.yaml``) and wall time."""
    from ..train.logging import read_events

    events = read_events(run_dir)
    if not events:
        return {}
    steps, curve, tps, gaps = [], [], [], []
    precision = None
    end_step = 0  # the step the run's "end" event reports (train events come every logging.every_steps only)
    segments: list[float] = []  # wall clock of each (resumed) segment of the run: its last logged time
    for e in events:
        if e.get("event") == "start":
            end_step = 0
            if e.get("resumed_from") is None:  # a fresh start: what an earlier, abandoned attempt logged is void
                steps, curve, tps, gaps, segments = [], [], [], [], []
            else:  # resumed at step S: steps after S that the killed segment logged are done again
                s0 = int(e.get("step", 0))
                keep = [i for i, (st, _) in enumerate(steps) if st <= s0]
                steps, tps = [steps[i] for i in keep], [tps[i] for i in keep]
                curve = [c for c in curve if c[0] <= s0]
                gaps = [g for g in gaps if g[0] <= s0]
            segments.append(0.0)
            precision = e.get("precision", precision)  # autocast precision the segment ran with (auto resolved)
        if segments and e.get("time") is not None:
            segments[-1] = max(segments[-1], float(e["time"]))
        if e.get("event") == "train":
            steps.append((int(e["step"]), e["sec_per_step"]))  # (step, seconds)
            tps.append(e["tokens_per_sec"])
        elif e.get("event") == "end":
            end_step = int(e["step"])
        elif e.get("event") == "eval" and e.get("val_loss") is not None:
            curve.append([e["step"], e["val_loss"]])
            if e.get("gap_shuffled") is not None:
                gaps.append([e["step"], e["gap_shuffled"]])
    secs = [sec for _, sec in steps]
    tail = secs[2:] or secs
    # optimiser steps the run took: the end event's step, else the last logged one (not the number of train events,
    # which is steps / logging.every_steps)
    out = {"steps": max([end_step] + [st for st, _ in steps]), "sec_per_step": statistics.median(tail) if tail else None,
           "tokens_per_sec": statistics.median(tps[2:] or tps) if tps else None, "val_loss_curve": curve,
           "wall_seconds": sum(segments)}
    if gaps:
        out["val_gap_shuffled_curve"] = gaps
    if precision:
        out["precision"] = precision
    cfg = run_dir / "train_config.yaml"
    if cfg.exists():
        import yaml

        out["batch_size"] = int(((yaml.safe_load(cfg.read_text()) or {}).get("optim") or {}).get("batch_size") or 0) or None
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def run_row(plan: StudyPlan, name: str, seed: int, progress: bool = True, force: bool = False) -> Path:
    """Train/evaluate/measure one (row, seed) and write its result JSON (skipped when it exists, unless force).

    The result holds the test metrics and every answer, each blind control of the plan (``controls``: the same
    questions with the images replaced, and ``blind_gap``: real minus control per family with paired bootstrap
    CIs, as ``evaluate.controls.blind_gap`` computes it), the training summary of every stage (``stages``; ``train``
    is the last stage's, with its validation-loss curve), the learning-curve points (``curve``, trained rows with
    ``eval_steps``), cost, wall time and machine."""
    import torch

    from ..data.images import load_image
    from ..evaluate.answer import make_answer_fn
    from ..evaluate.benchmarks.base import read_jsonl
    from ..evaluate.controls import blind_gap
    from ..evaluate.harness import PREDICTIONS, evaluate, load_predictions
    from ..model.checkpoint import load_pretrained

    row = plan.row(name)
    res = result_path(plan, name, seed)
    if res.exists() and not force:
        return res
    gone = missing_source(plan, name, seed)
    if gone is not None and not gone.reproducible:  # before any slow work: it would train for hours in vain
        raise CompactVLMError(gone.message, gone.fix)
    previous = json.loads(res.read_text()) if res.exists() else None
    set_threads(plan.threads)
    t0 = time.perf_counter()
    data_dir = ensure_data(plan, progress)
    record_baselines(plan, data_dir)  # the test split's chance baseline, for the report's chance line
    src = plan.row(row.from_) if row.from_ else row
    curve_steps = plan.row_eval_steps(name) if row.trained else []
    ckpt = train_row(plan, src, seed, data_dir, snapshot_steps=curve_steps)
    t_train = time.perf_counter() - t0
    # evaluation-only rows may change test-time compressor options (e.g. mask_source: given)
    model = load_pretrained(ckpt, compressor_params=dict(row.params) if row.from_ else None, progress=False,
                            dtype=plan.eval_dtype)
    model.to(plan.device)
    row.set_test_time(model)
    tokens = model.num_image_tokens()
    out = eval_dir(plan, name, seed)
    run_info = eval_run_info(plan, {
        "name": name, "method": row.reduce or model.compressor.registry_name, "vision_tokens": tokens,
        "compressor": model.compressor.registry_name, "compressor_params": dict(model.compressor.params),
        "reduce": row.reduce, "budget": row.budget, "checkpoint": str(ckpt), "seed": seed})
    t1 = time.perf_counter()
    answer = make_answer_fn(model, str(data_dir), features=eval_features(plan))
    metrics = evaluate("sceneqa", str(data_dir), answer, out,
                       batch_size=plan.eval_batch_size, limit=plan.eval_limit, progress=progress, run_info=run_info)
    # + the answering time of earlier, interrupted processes on this folder (a row's evaluation spans sessions)
    t_eval = time.perf_counter() - t1 + metrics.get("answer_seconds_earlier", 0.0)
    # blind controls: the same questions, each image replaced (shuffled across questions / blank)
    t2 = time.perf_counter()
    answered_now = metrics.get("answered_now")
    controls, control_preds = {}, {}
    earlier_controls = 0.0
    for c in plan.controls:
        folder = eval_dir(plan, name, seed, control=c)
        cm = evaluate("sceneqa", str(data_dir), answer, folder, batch_size=plan.eval_batch_size,
                      limit=plan.eval_limit, progress=progress, run_info={**run_info, "control": c}, control=c)
        answered_now = (answered_now or 0) + (cm.get("answered_now") or 0)
        earlier_controls += cm.get("answer_seconds_earlier", 0.0)
        controls[c] = {k: cm[k] for k in ("components", "family_mean", "n")}
        control_preds[c] = load_predictions(folder / PREDICTIONS)
    predictions = load_predictions(out / PREDICTIONS)
    gap = None
    if control_preds:
        answers = read_jsonl(data_dir / "test_answers.jsonl")
        answers = answers[: plan.eval_limit] if plan.eval_limit else answers
        gap = blind_gap(answers, predictions, control_preds, n=plan.bootstrap if plan.bootstrap > 0 else 1000)
    t_controls = time.perf_counter() - t2 + earlier_controls
    first = json.loads((data_dir / "test_questions.jsonl").read_text().splitlines()[0])
    extra = None
    if model.compressor.wants_given_masks:  # the `given` mask source: SceneQA's own masks
        from ..data.sceneqa.masks import object_masks

        s = model.processor.size
        extra = {"masks": [torch.from_numpy(object_masks(str(data_dir), first["image"], size=(s, s))[0])]}
    cost = measure_cost(model, load_image(data_dir / first["image"]), first["text"], plan.ttft_repeats, extra)
    note = model.reduction.cost_note() if model.reduction is not None else None
    del model, answer  # the curve points load their own models
    stages = [{"stage": k + 1, "config": cfg, "train_file": sd.train, "val_file": sd.val, "output_dir": str(d),
               "train": _train_stats(d)}
              for k, ((cfg, sd), d) in enumerate(zip(plan.stages(), stage_dirs(plan, row, seed)))]
    t3 = time.perf_counter()
    curve = None
    if curve_steps:
        from .curve import evaluate_curve

        curve = evaluate_curve(plan, row, seed, data_dir, stages[-1]["train"].get("batch_size"), progress)
    t_curve = time.perf_counter() - t3 + sum(p.pop("answer_seconds_earlier", 0.0) for p in curve or [])
    result = {
        "plan": plan.name, "row": asdict(row), "seed": seed, "vision_tokens": tokens,
        "equivalent_tokens_note": note,
        "metrics": {k: metrics[k] for k in ("components", "family_mean", "headline", "n", "missing", "split")},
        "cost": cost, "train": stages[-1]["train"], "stages": stages,
        # every answer, so the report can re-score (test-image bootstrap, paired differences) from results/ alone
        "predictions": predictions,
        # a forced re-run that reused the checkpoint and every prediction keeps the wall time of the real run
        "wall_seconds": (previous["wall_seconds"] if previous and answered_now == 0 and t_train < 60 else
                         {"train_or_reuse": t_train, "eval": t_eval, "controls": t_controls, "curve": t_curve}),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": plan.device,
                     "gpu": torch.cuda.get_device_name() if plan.device == "cuda" else None,
                     # what the training precision "auto" and the step times depend on (AVX2 vs AMX, docs/recipe.md §15)
                     "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
                     "bf16_fast": bf16_is_fast(plan.device),
                     "eval_dtype": plan.eval_dtype},
        "command": f"compactvlm study run --plan <plan> --rows {name} --seeds {seed}",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if controls:
        result["controls"] = controls
        result["blind_gap"] = gap
        result["control_predictions"] = control_preds
    if curve is not None:
        result["curve"] = curve
    _write_json(res, result)
    if curve is not None and not plan.keep_checkpoints:
        import shutil

        from .curve import snapshot_root

        shutil.rmtree(snapshot_root(stage_dirs(plan, row, seed)[-1]), ignore_errors=True)
    return res
