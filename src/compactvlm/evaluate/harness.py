"""Run a benchmark with any answering function and score it.

``answer_fn(list[EvalItem]) -> list[str]`` is the model (the caller builds it; this module never imports
torch). Answers go to ``predictions.jsonl`` one line per question, flushed and fsync'ed after every
batch, so an interrupted run picks up where it stopped (``resume=True``) and ends with the same
metrics as an uninterrupted one. The metrics are written to ``metrics.json`` and returned.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import CompactVLMError
from .benchmarks.base import Benchmark, EvalItem, get_benchmark, iter_batches, write_json

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
RUN = "run.json"


def load_predictions(path: Path) -> dict[str, str]:
    """Answers already written; a torn last line (killed mid-write) is dropped and the file repaired."""
    done: dict[str, str] = {}
    good: list[str] = []
    torn = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                done[str(row["question_id"])] = row["text"]
                good.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError):
                torn = True
    if torn:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(good), encoding="utf-8")
        tmp.replace(path)
    return done


def evaluate(benchmark: str | Benchmark, data_dir: str | os.PathLike | None,
             answer_fn: Callable[[list[EvalItem]], Sequence[str]], out_dir: str | os.PathLike,
             batch_size: int = 8, resume: bool = True, limit: int | None = None, progress: bool = True,
             run_info: dict[str, Any] | None = None, control: str | None = None, **reader_kwargs: Any) -> dict:
    """Answer every question of ``benchmark`` (a name, or a reader instance) with ``answer_fn`` in
    batches of ``batch_size``, then score. ``limit``: only the first N questions. ``run_info``
    (e.g. ``{"name": "stf-64", "method": "stf", "vision_tokens": 64}``) is stored with the metrics for
    reports and PRT. Extra keyword arguments go to the reader (e.g. ``split="val"`` for SceneQA).
    ``control``: ``shuffled`` or ``blank`` answers every question with its image replaced (a blind control, see
    ``evaluate.controls``); scoring is unchanged. Returns the metrics dict (also written to
    ``out_dir/metrics.json``)."""
    from .controls import apply_control, check_control

    check_control(control)
    if batch_size < 1:
        raise CompactVLMError(f"batch_size must be >= 1, got {batch_size}", "use e.g. batch_size=8")
    if limit is not None and limit < 1:
        raise CompactVLMError(f"limit must be >= 1, got {limit}", "leave it out to run every question")
    reader = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark, data_dir, **reader_kwargs)
    items = reader.items()
    if limit is not None:
        items = items[:limit]
    out = Path(out_dir).expanduser()
    asked = apply_control(items, control, out)
    out.mkdir(parents=True, exist_ok=True)
    pred_path, run_path = out / PREDICTIONS, out / RUN
    identity = {"benchmark": reader.name, "data_dir": str(reader.data_dir),
                **({"split": reader.split} if hasattr(reader, "split") else {}), "control": control}
    done: dict[str, str] = {}
    if resume and pred_path.exists():
        if run_path.exists():
            before = json.loads(run_path.read_text(encoding="utf-8"))
            if {k: before.get(k) for k in identity} != identity:
                raise CompactVLMError(
                    f"{out} holds predictions of another run ({before.get('benchmark')} on {before.get('data_dir')}, "
                    f"control {before.get('control')})",
                    "use a fresh --out folder, or resume=False to start over",
                )
        done = load_predictions(pred_path)
    else:
        pred_path.write_text("", encoding="utf-8")
    write_json(run_path, identity)

    todo = [it for it in asked if it.key not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=reader.name, unit="q", disable=not progress)
    t0 = time.perf_counter()
    with open(pred_path, "a", encoding="utf-8") as f:
        for batch in iter_batches(todo, batch_size):
            answers = list(answer_fn(list(batch)))
            if len(answers) != len(batch):
                raise CompactVLMError(f"answer_fn returned {len(answers)} answers for {len(batch)} questions",
                                      "return exactly one string per EvalItem, in order")
            for it, a in zip(batch, answers):
                f.write(json.dumps({"question_id": it.question_id, "prompt": it.prompt, "text": str(a),
                                    "category": it.category}, ensure_ascii=False) + "\n")
                done[it.key] = str(a)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - t0

    preds = {it.key: done[it.key] for it in items}
    metrics = reader.score(items, preds)
    exports = [str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in reader.export(items, preds, out)]
    metrics.update(benchmark=reader.name, n_items=len(items), limit=limit, run=run_info or {},
                   predictions=PREDICTIONS, exports=exports,
                   answer_seconds=round(seconds, 3), answered_now=len(todo), control=control)
    if hasattr(reader, "split"):
        metrics.setdefault("split", reader.split)
    write_json(out / METRICS, metrics)
    return metrics
