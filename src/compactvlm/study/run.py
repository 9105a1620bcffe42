"""Running one (row, seed) of a plan: build the data once, train (or resume), evaluate, measure TTFT and FLOPs,
write ``results/<plan>/<row>/seed<S>.json``."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from .controls import record_baselines
from .plan import StudyPlan, StudyRow, checkpoint_dir, result_path


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
    record_baselines(plan, data_dir)  # the test split's chance baseline, for the report's chance line
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
