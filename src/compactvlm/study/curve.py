"""The test-set learning curve of a trained row (the plan's ``eval_steps``): the last stage's weights are kept at
those steps during training (``SnapshotAt``, a trainer callback) and each is evaluated on the test split with
real images (``evaluate_curve``).

Snapshots are compact-model folders (compressor + trained LLM weights, no optimiser state) in
``<stage output>.snapshots/step-NNNNNN`` beside the training folder; step 0 is the stage's starting checkpoint (the
previous stage's final), the last step the stage's own ``final``. A run killed between a step and its snapshot
falls back to the trainer's checkpoint of that step, if it kept one; a point with neither is reported missing. A
point whose evaluation folder already holds every answer is re-scored without its checkpoint (so a plan with
``keep_checkpoints: false``, which deletes the snapshots once the row's result is written, can still re-run it).
Every point but the end of training keeps its answers in the result (``predictions``; the end's are the result's
own), so the report can test whether the score still rose over the last stretch (``stats.end_gains``) without the
evaluation folders, which live under ``runs_dir`` and not in git.
"""

from __future__ import annotations

import json
from pathlib import Path

from .plan import StudyPlan, StudyRow, eval_dir, eval_features, eval_run_info, stage_dirs

SNAPSHOTS_SUFFIX = ".snapshots"


def snapshot_root(stage_out: Path) -> Path:
    return Path(stage_out).with_name(Path(stage_out).name + SNAPSHOTS_SUFFIX)


class SnapshotAt:
    """Trainer callback: save the model's trainable weights at each of ``steps`` (the final step excepted: the
    run's ``final`` is that model) into ``root/step-NNNNNN``."""

    def __init__(self, steps, root: Path):
        self.steps = {int(s) for s in steps if int(s) > 0}
        self.root = Path(root)

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        from ..model.checkpoint import CONFIG_NAME, save_pretrained
        from ..train.config import to_plain

        if step not in self.steps or step >= trainer.total_steps or not trainer.main:
            return
        dest = self.root / f"step-{step:06d}"
        if (dest / CONFIG_NAME).exists():
            return
        save_pretrained(trainer.accelerator.unwrap_model(trainer.model).vlm, dest,
                        save_llm=trainer.cfg.checkpoint.save_frozen, trainable_only=True,
                        extra={"train": to_plain(trainer.cfg), "step": step})


def curve_points(plan: StudyPlan, row: StudyRow, seed: int) -> list[tuple[int, Path | None, str | None]]:
    """(step, checkpoint or None, why it is missing) for each of the row's ``eval_steps`` (its own, else the
    plan's) of its last training stage."""
    from ..model.checkpoint import CONFIG_NAME
    from ..train.state import checkpoint_dir as train_checkpoint

    dirs = stage_dirs(plan, row, seed)
    out = dirs[-1]
    final = out / "final"
    last = json.loads((final / CONFIG_NAME).read_text()).get("step")
    points = []
    for s in sorted(plan.row_eval_steps(row.name)):
        if s == 0:
            cands = [dirs[-2] / "final"] if len(dirs) > 1 else []
            why = "a one-stage recipe has no starting checkpoint to evaluate"
        elif last is not None and s > last:
            cands, why = [], f"the stage ran {last} steps"
        elif s == last:
            cands, why = [final], "no final checkpoint"
        else:
            cands = [snapshot_root(out) / f"step-{s:06d}", train_checkpoint(out, s)]
            why = "no snapshot (the stage was trained before eval_steps asked for it, or was killed right after it)"
        ck = next((c for c in cands if (c / CONFIG_NAME).exists()), None)
        points.append((s, ck, None if ck else why))
    return points


class _NeedsModel(Exception):
    """Raised by the stand-in answer function: some question of a curve point has no stored answer yet."""


def _never(items):
    raise _NeedsModel


def evaluate_curve(plan: StudyPlan, row: StudyRow, seed: int, data_dir: Path, batch_size: int | None,
                   progress: bool = False) -> list[dict]:
    """Test family mean and components at each learning-curve point (resumable evaluation folders under
    ``<runs_dir>/eval/<row>/s<seed>.step-NNNNNN``); ``samples`` = step × the stage's global batch."""
    import torch

    from ..evaluate.answer import make_answer_fn
    from ..evaluate.harness import PREDICTIONS, evaluate, load_predictions
    from ..model.checkpoint import load_pretrained

    out = []
    features = eval_features(plan)  # the test images' encoder blocks, written by the row's own evaluation
    final = stage_dirs(plan, row, seed)[-1] / "final"
    for step, ck, why in curve_points(plan, row, seed):
        entry = {"step": step, "samples": step * batch_size if batch_size else None}
        own = eval_dir(plan, row.name, seed)
        # the end of training is the row's own test evaluation (run_row): its answers, not a rerun
        folder = own if ck == final else eval_dir(plan, row.name, seed, step=step)
        kw = dict(batch_size=plan.eval_batch_size, limit=plan.eval_limit, progress=progress)
        m = None
        done = folder / "metrics.json"
        if (folder / PREDICTIONS).exists() and done.exists():  # every answer stored: re-score, no checkpoint needed
            info = json.loads(done.read_text()).get("run") or {}
            try:
                m = evaluate("sceneqa", str(data_dir), _never, folder, run_info=info, **kw)
                ck = ck or (Path(info["checkpoint"]) if info.get("checkpoint") else None)
            except _NeedsModel:
                m = None
        if m is None:
            if ck is None:
                out.append({**entry, "missing": why})
                continue
            model = load_pretrained(ck, progress=False, dtype=plan.eval_dtype)
            model.to(plan.device)
            row.set_test_time(model)  # a row trained with a reduction active answers with it at every point
            m = evaluate("sceneqa", str(data_dir), make_answer_fn(model, str(data_dir), features=features), folder,
                         run_info=eval_run_info(plan, {"name": row.name, "seed": seed, "step": step,
                                                       "checkpoint": str(ck),
                                                       "vision_tokens": model.num_image_tokens()}), **kw)
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        point = {**entry, "checkpoint": str(ck), "family_mean": m["family_mean"], "components": m["components"]}
        if folder != own:  # this point's answers, kept with the result (runs_dir is not): the report's paired
            point["predictions"] = load_predictions(folder / PREDICTIONS)  # end-vs-point test (stats.end_gains)
        out.append({**point,
                    # answering time of earlier processes on this folder, which run_row adds to the curve's wall
                    # time (the final point's folder is the row's own evaluation, already counted there)
                    "answer_seconds_earlier": 0.0 if folder == own else m.get("answer_seconds_earlier", 0.0)})
    return out
