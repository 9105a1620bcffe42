"""Whether a (row, seed) has a result whose model is no longer on this machine, and what running it would do.

A trained row run with ``--force`` whose final model is gone is trained again (not re-scored):
``forced_retraining`` says so before the hours start.

An evaluation-only row (``from: full-mlp2x``) loads its source's final model from ``runs_dir``. In a fresh checkout,
or on a machine that did not keep ``runs_dir``, the source's result file (committed) may exist while its model does
not: running the row then trains the source again first — hours of CPU — and evaluates that new model, which the
report pairs with the source's result only if the new training reproduced the old one (same validation-loss curve,
``stats._retrained_source_seeds``). A training in another precision (fp32 on an AVX2 CPU, bf16 where the hardware has
it: ``precision: auto``) or on another device cannot reproduce it, so ``study run`` refuses such a row before any
work, and ``study status`` says why it is blocked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .plan import StudyPlan, result_path, stage_dirs


@dataclass(frozen=True)
class MissingSource:
    source: str
    seed: int
    message: str  # what is missing and what running the row would do
    reproducible: bool  # False: a retraining here cannot give the model behind the source's result
    fix: str


def _precisions_here(plan: StudyPlan) -> list[str]:
    """The autocast precision each stage of the plan's recipe resolves to on ``plan.device`` here."""
    from ..train import load_train_config
    from ..train.trainer import resolve_precision

    out = []
    for path, sd in plan.stages():
        cfg = load_train_config(path, list(plan.train_overrides) + list(sd.overrides))
        out.append(resolve_precision(cfg.precision, plan.device))
    return out


def _result_without_model(plan: StudyPlan, row, seed: int):
    """(result file, final-model dir) of a (row, seed) whose result exists but whose final model is not under
    ``runs_dir``; None otherwise."""
    res = result_path(plan, row.name, seed)
    final = stage_dirs(plan, row, seed)[-1] / "final"
    if not res.exists() or (final / "compactvlm.json").exists():
        return None
    return res, final


def _cost(plan: StudyPlan, name: str) -> str:
    hours = plan.cost_hint.get(name, plan.cost_hint.get("trained"))
    return f" (~{hours / 60:.1f} h by the plan's cost_hint)" if hours else ""


def forced_retraining(plan: StudyPlan, name: str, seed: int) -> str | None:
    """What ``study run --force`` does to a finished trained (row, seed) whose final model is no longer on disk: it
    trains it again and replaces the result with the new training's (not a re-score of the old model); None for
    an evaluation-only row, a row without a result, or one whose model is there."""
    row = plan.row(name)
    gone = _result_without_model(plan, row, seed) if row.trained else None
    if gone is None:
        return None
    return (f"{name} seed {seed}: --force with its model not on disk ({gone[1]} is missing): it is trained again"
            f"{_cost(plan, name)} and its result replaced by the new training's, not re-scored; stop now (Ctrl-C) "
            "if you meant to re-score or re-measure the old model (that needs it on disk)")


def missing_source(plan: StudyPlan, name: str, seed: int) -> MissingSource | None:
    """For an evaluation-only row whose source (row, seed) has a result file but no final model under
    ``runs_dir``: what is missing, and whether training the source again here could reproduce that result
    (the same autocast precision, stage by stage, and the same device kind). ``None`` otherwise (a trained row,
    a source whose model is there, or a source without a result yet: it is trained for this row and its own
    result will come from the same model)."""
    row = plan.row(name)
    if row.trained:
        return None
    src = plan.row(row.from_)
    gone = _result_without_model(plan, src, seed)
    if gone is None:
        return None
    res, final = gone
    r = json.loads(res.read_text(encoding="utf-8"))
    then = [s.get("train", {}).get("precision") for s in r.get("stages", [])]
    hw = r.get("hardware") or {}
    reasons = []
    if all(then) and then:
        here = _precisions_here(plan)
        if len(here) == len(then) and here != then:
            reasons.append(f"its result was trained in {'/'.join(then)} ({hw.get('cpu_capability', '?')}), "
                           f"this machine trains the plan's recipe in {'/'.join(here)}")
    if hw.get("device") and hw["device"] != plan.device:
        reasons.append(f"its result was trained on {hw['device']}, this run uses {plan.device}")
    message = (f"`{src.name}` seed {seed} has a result ({res}) but its model is not on this machine ({final} is "
               f"missing): running `{name}` would train `{src.name}` again first{_cost(plan, src.name)} and evaluate "
               f"that new model, which the report pairs with `{src.name}`'s result only if the training reproduces it")
    if reasons:
        message += "; it cannot here: " + "; ".join(reasons)
    fix = (f"run `{name}` where `{src.name}` seed {seed}'s model is (the machine that trained it, with its "
           f"{plan.runs_dir}), or train and evaluate `{src.name}` again here first: `compactvlm study run --plan "
           f"<plan> --rows {src.name} --seeds {seed} --force` (replaces its result; the report then no longer pairs "
           f"the evaluation-only rows measured on the old model with it)")
    return MissingSource(src.name, seed, message, not reasons, fix)
