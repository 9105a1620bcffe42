"""Where each (row, seed) of a study plan stands, read from its files alone (no model is loaded, nothing is written):
a study spans sessions, and what a restart keeps is the question after every stop.

States: ``done`` (its result file exists: family mean with real images and with each blind control), ``evaluating``
(the model it evaluates is trained, its result is not written yet: the answers each evaluation pass has written so
far), ``training`` (a process holds the stage's output lock) or ``interrupted`` (none does): stage k of n, the last
logged step of the stage's total, the median time of its recent steps with the time the stage's remaining steps
would take at that pace (plus its remaining validation passes at the median time of those it ran, where the stage
logged their duration), the stage's validation losses so far, and the last resumable checkpoint, which is where a
restart continues; ``waiting`` (an evaluation-only row whose source model is not trained yet, or whose source has a
result but no model on this machine: running it trains the source again first), ``blocked`` (the same, where a
training here cannot reproduce the source's result: ``study.source``), ``not started``.

Each pair also carries an estimate of the compute it still needs (``minutes_left``): a training stage's remaining
steps and validation passes at their measured pace where it is in its last stage, else the plan's ``cost_hint``
(minutes for the row's name, else for its kind, ``trained`` or ``eval``), plus an evaluation's hint for a trained row
still to be evaluated; none for a blocked pair. :func:`compute_left` sums them for ``study status``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import CompactVLMError
from ..evaluate.harness import PREDICTIONS
from ..model.checkpoint import CONFIG_NAME
from ..train.config import train_config_from_dict
from ..train.logging import read_events
from ..train.state import LOCK, list_checkpoints
from .plan import StudyPlan, eval_dir, result_path, stage_dirs
from .source import missing_source


@dataclass
class PairStatus:
    row: str
    seed: int
    state: str  # done | evaluating | training | interrupted | waiting | blocked | not started
    detail: str = ""
    minutes_left: float | None = None  # compute still needed by the estimate of the module docstring; 0 once done
    # an evaluation-only pair: the (source row, seed) whose training it waits for (not trained yet, or its model is
    # gone and can be trained again) and that training's minutes
    needs: tuple[str, int, float | None] | None = None


def _finished(stage_dir: Path) -> bool:
    return (stage_dir / "final" / CONFIG_NAME).exists()  # written once the stage has finished


def _running(stage_dir: Path) -> bool:
    """True while a training process holds the stage folder's lock (``Trainer._claim_output``)."""
    from filelock import FileLock, Timeout

    path = stage_dir / LOCK
    if not path.exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


_RECENT = 20  # steps whose median time is a stage's pace


def _median(values: list[float]) -> float | None:
    return statistics.median_high(values) if values else None  # the upper middle: a time that was measured


def _stage_progress(stage_dir: Path) -> tuple[int, int | None, float | None, dict[int, float], float | None]:
    """(last logged training step, the stage's total steps from its latest start event, median seconds per step
    over the last ``_RECENT`` steps logged since that start, validation loss by step: the last logged for a step,
    median seconds of a validation pass: those since that start, else all the stage logged; None where none logged
    its duration) of a stage's metrics."""
    step, total, times, val, passes, passes_before = 0, None, [], {}, [], []
    for e in read_events(stage_dir):
        if e.get("event") == "eval" and e.get("val_loss") is not None:
            val[int(e.get("step", 0))] = float(e["val_loss"])
            if e.get("seconds") is not None:
                passes.append(float(e["seconds"]))
        elif e.get("event") == "start":
            total = e.get("total_steps", total)
            step = e.get("step", 0) or 0  # a resumed start logs the step it resumed at
            times = []  # another start: maybe another machine or thread count
            passes_before, passes = passes_before + passes, []
        elif e.get("event") == "train":
            step = max(step, int(e.get("step", 0)))
            if e.get("sec_per_step") is not None:
                times.append(float(e["sec_per_step"]))
    return step, total, _median(times[-_RECENT:]), val, _median(passes or passes_before)


def _validations_left(stage_dir: Path, from_step: int, total: int) -> int | None:
    """The validation passes a stage still runs after ``from_step``, by the ``eval`` section of the
    ``train_config.yaml`` it wrote (read as the trainer's config, with its defaults): one every ``every_steps``
    steps before the last, and one at the end (``at_end``); None where that file is missing or unreadable."""
    try:
        ev = train_config_from_dict(yaml.safe_load((stage_dir / "train_config.yaml").read_text(encoding="utf-8"))
                                    or {}).eval
    except (OSError, yaml.YAMLError, CompactVLMError, AttributeError, TypeError, ValueError):
        return None
    every = ev.every_steps
    before_last = len(range(every * (from_step // every + 1), total, every)) if every > 0 else 0
    return before_last + (1 if ev.at_end else 0)


def _duration(seconds: float) -> str:
    if seconds < 60:  # a validation pass of a small stage: not "0 min"
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _eval_progress(plan: StudyPlan, name: str, seed: int, trained_stage: Path | None) -> str:
    """Answers written so far by each evaluation pass of a (row, seed): real images, each blind control, and a
    trained row's learning-curve points (their last step is the real pass itself), e.g. ``real 2125/2125,
    shuffled 530/2125, step 100 0/2125``."""
    questions = Path(plan.data.dir) / "test_questions.jsonl"
    total = _count_lines(questions) if questions.exists() else None
    if total is not None and plan.eval_limit:
        total = min(total, plan.eval_limit)
    out = eval_dir(plan, name, seed)
    passes = [("real", out)] + [(c, eval_dir(plan, name, seed, control=c)) for c in plan.controls]
    steps = plan.row_eval_steps(name) if trained_stage is not None else []
    if steps:
        last = json.loads((trained_stage / "final" / CONFIG_NAME).read_text(encoding="utf-8")).get("step")
        passes += [(f"step {s}", eval_dir(plan, name, seed, step=s)) for s in sorted(steps) if s != last]
    of = f"/{total}" if total is not None else ""
    return ", ".join(f"{label} {_count_lines(folder / PREDICTIONS)}{of}" for label, folder in passes)


def _per_step(seconds: float) -> str:
    """``42 s/step``; below 10 s one decimal, below 1 s two (a stage-1 step of 0.21 s is not "0 s/step")."""
    return f"{seconds:.0f} s/step" if seconds >= 10 else f"{seconds:.1f} s/step" if seconds >= 1 else f"{seconds:.2f} s/step"


def _hint(plan: StudyPlan, name: str, kind: str) -> float | None:
    """The plan's ``cost_hint`` minutes for a row: its own entry, else its kind's (``trained`` / ``eval``)."""
    hint = plan.cost_hint.get(name, plan.cost_hint.get(kind))
    return float(hint) if hint is not None else None


def pair_status(plan: StudyPlan, name: str, seed: int) -> PairStatus:
    res = result_path(plan, name, seed)
    if res.exists():
        r = json.loads(res.read_text(encoding="utf-8"))
        parts = [f"family mean {r['metrics']['family_mean']:.1f}"]
        for control, c in (r.get("controls") or {}).items():
            parts.append(f"{control} {c['family_mean']:.1f}")
        return PairStatus(name, seed, "done", ", ".join(parts), 0.0)
    row = plan.row(name)
    eval_hint = plan.cost_hint.get("eval")
    eval_hint = float(eval_hint) if eval_hint is not None else None
    own = _hint(plan, name, "trained" if row.trained else "eval")  # the whole pair: training and evaluation
    dirs = stage_dirs(plan, row, seed)
    if _finished(dirs[-1]):
        return PairStatus(name, seed, "evaluating", "model trained, result not written yet; answers "
                          + _eval_progress(plan, name, seed, dirs[-1] if row.trained else None),
                          eval_hint if row.trained else own)
    if not row.trained:
        gone = missing_source(plan, name, seed)
        if gone is not None:
            if not gone.reproducible:
                return PairStatus(name, seed, "blocked", gone.message)
            return PairStatus(name, seed, "waiting", gone.message, own, (row.from_, seed, _hint(plan, row.from_, "trained")))
        return PairStatus(name, seed, "waiting", f"for `{row.from_}` seed {seed} to finish training", own,
                          (row.from_, seed, _hint(plan, row.from_, "trained")))
    k, d = next((k, d) for k, d in enumerate(dirs) if not _finished(d))  # the last one is not (checked above)
    step, total, per_step, val, per_pass = _stage_progress(d)
    if step == 0 and total is None and k == 0:
        return PairStatus(name, seed, "not started", "", own)
    cks = list_checkpoints(d)
    running = _running(d)
    if step == 0 and total is None and k == 1 and row.from_stage1 and not cks and not running:
        # its only stage 1 is the source row's, trained for that row: nothing of this row's own has run
        return PairStatus(name, seed, "not started", f"`{row.from_stage1}`'s stage 1, which it shares, is trained",
                          own)
    keeps = f"a restart resumes at step {cks[-1][0]}" if cks else (
        "a restart begins the stage again (no checkpoint yet)" if step else "")
    detail = f"stage {k + 1}/{len(dirs)}: step {step}/{total if total is not None else '?'}"
    if k == 0 and row.from_stage1:  # the stage 1 it shares is the source row's (one training for both pairs)
        detail = f"`{row.from_stage1}`'s {detail}"
    from_step = step if running else (cks[-1][0] if cks else 0)  # where the steps left are counted from
    seconds_left = None  # the stage's steps left at their pace, and its validation passes left where measured
    if per_step is not None and total is not None and from_step < total:
        seconds_left = (total - from_step) * per_step
        pace = f"{_per_step(per_step)}, ~{_duration(seconds_left)} of steps left"
        passes = _validations_left(d, from_step, total) if per_pass is not None else None
        if passes:
            seconds_left += passes * per_pass
            pace += (f" + {passes} validation pass{'es' if passes != 1 else ''} at ~{_duration(per_pass)}: "
                     f"~{_duration(seconds_left)}")
        detail += f" ({pace})"
    if val:  # the curve so far: is a long stage still learning?
        detail += "; val loss " + ", ".join(f"{s}: {v:.3f}" for s, v in sorted(val.items()))
    state = "training" if running else "interrupted"
    left = own  # an earlier stage: the row's hint (the stages left are not measured yet)
    if k == len(dirs) - 1 and per_step is not None and total is not None and eval_hint is not None:
        left = (seconds_left or 0.0) / 60 + eval_hint
    return PairStatus(name, seed, state, detail + (f"; {keeps}" if keeps else ""), left)


def compute_left(pairs: list[PairStatus]) -> str:
    """One line: the compute the listed pairs still need by their estimates (hours), how many pairs it counts and
    which it cannot: blocked pairs, and pairs without an estimate (the plan has no ``cost_hint`` for them). The
    training an evaluation-only pair waits for counts once however many pairs wait for it: at the source's own pair
    where that is listed and not done, else on its own (a source left out of ``--rows``, or whose model is gone)."""
    todo = [p for p in pairs if p.state != "done"]
    if not todo:
        return "compute left: none (every listed pair is done)"
    listed = {(p.row, p.seed) for p in todo}
    known = [p for p in todo if p.minutes_left is not None and (p.needs is None or p.needs[:2] in listed
                                                                  or p.needs[2] is not None)]
    retrain = {p.needs[:2]: p.needs[2] for p in known if p.needs is not None and p.needs[:2] not in listed}
    blocked = sum(1 for p in todo if p.state == "blocked")
    unknown = len(todo) - len(known) - blocked
    if not known:
        return (f"compute left: unknown ({unknown} pair{'s' if unknown != 1 else ''} without a cost_hint"
                + (f", {blocked} blocked" if blocked else "") + ")")
    hours = (sum(p.minutes_left for p in known) + sum(retrain.values())) / 60
    out = (f"compute left: ~{hours:.1f} h for {len(known)} pair{'s' if len(known) != 1 else ''} "
           "(measured pace of a last stage in progress, else the plan's cost_hint)")
    skipped = ([f"{blocked} blocked"] if blocked else []) + ([f"{unknown} without a cost_hint"] if unknown else [])
    return out + (f"; not counted: {', '.join(skipped)}" if skipped else "")


def plan_status(plan: StudyPlan, rows: list[str] | None = None, seeds: list[int] | None = None) -> list[PairStatus]:
    """The status of every (row, seed) of the plan (the row's own seeds, or those of ``seeds`` it has)."""
    out = []
    for row in plan.rows:
        if rows is not None and row.name not in rows:
            continue
        for seed in plan.row_seeds(row.name, seeds or plan.seeds):
            out.append(pair_status(plan, row.name, seed))
    return out
