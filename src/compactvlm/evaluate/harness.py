"""Run a benchmark with any answering function and score it.

``answer_fn(list[EvalItem]) -> list[str]`` is the model (the caller builds it; this module never imports
torch). Answers go to ``predictions.jsonl`` one line per question, flushed and fsync'ed after every
batch, so an interrupted run picks up where it stopped (``resume=True``) and ends with the same
metrics as an uninterrupted one. The metrics are written to ``metrics.json`` and returned.

``run.json`` records what the answers belong to: benchmark, data folder, split and the ``producer`` the
caller passes (checkpoint digest, compressor spec, reduction, budget, decoding settings, ...). A resume whose
producer differs is refused, so one model's answers are never reported under another's name. The output
folder carries the eval-run marker (``model.manifest.MARKER_NAME``); a folder compactvlm did not write is
refused, and a lock file (``.compactvlm.lock``) makes a second process writing the same folder fail at once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contextlib import contextmanager

from ..errors import CompactVLMError
from ..model.manifest import LOCK_NAME as LOCK, MARKER_NAME, marker_kind, refuse_foreign, write_marker
from .benchmarks.base import Benchmark, EvalItem, get_benchmark, iter_batches, write_json

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
RUN = "run.json"
_HELD: dict[str, Any] = {}  # locks this process holds, by path (held again by a nested evaluate())


def load_predictions(path: Path) -> dict[str, str]:
    """Answers already written; a torn last line (killed mid-write) is dropped and the file repaired."""
    return read_predictions(path)[0]


def read_predictions(path: Path) -> tuple[dict[str, str], float]:
    """``(answers, answering seconds)`` of a predictions file in one pass; a torn last line (killed mid-write) is
    dropped and the file repaired. The seconds are each line's ``seconds`` (its batch's time / batch size; lines
    written before that field existed count 0): what a resumed run adds to its own time."""
    done: dict[str, str] = {}
    good: list[str] = []
    seconds = 0.0
    torn = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                done[str(row["question_id"])] = row["text"]
                good.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError):
                torn = True
                continue
            try:
                seconds += float(row.get("seconds") or 0.0)
            except (TypeError, ValueError):
                pass
    if torn or (good and not good[-1].endswith("\n")) or _missing_final_newline(path):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(good), encoding="utf-8")
        tmp.replace(path)
    return done, seconds


def _missing_final_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def run_identity(reader: Benchmark, producer: dict | None = None, control: str | None = None) -> dict:
    """What ``run.json`` records: benchmark, data folder, split, blind control and (when given) the producer."""
    import hashlib

    h = hashlib.sha256()  # the questions themselves: a folder rebuilt with other questions is another run
    for it in reader.items():
        h.update(json.dumps([it.key, it.prompt, it.image_path and Path(it.image_path).name], ensure_ascii=False).encode())
    ident = {"benchmark": reader.name, "data_dir": str(reader.data_dir),
             **({"split": reader.split} if hasattr(reader, "split") else {}), "control": control,
             "questions_sha256": h.hexdigest()}
    if producer is not None:
        ident["producer"] = json.loads(json.dumps(producer, default=str))  # as it reads back from JSON
    return ident


def _check_identity(out: Path, identity: dict) -> None:
    pred_path, run_path = out / PREDICTIONS, out / RUN
    if not pred_path.exists():
        return
    fix = "use a fresh --out folder, or --no-resume (resume=False) to start over"
    before: Any = None
    if run_path.exists():
        try:
            before = json.loads(run_path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            before = None
    if not isinstance(before, dict):
        raise CompactVLMError(f"{out} holds predictions but no readable {RUN} saying what produced them", fix)
    base = {k: v for k, v in identity.items() if k not in ("producer", "questions_sha256")}
    if {k: before.get(k) for k in base} != base:
        raise CompactVLMError(
            f"{out} holds predictions of another run ({before.get('benchmark')} on {before.get('data_dir')}"
            + (f", split {before.get('split')}" if before.get("split") else "")
            + (f", control {before.get('control')}" if before.get("control") != identity.get("control") else "")
            + ")", fix)
    if before.get("questions_sha256", identity["questions_sha256"]) != identity["questions_sha256"]:  # older: absent
        raise CompactVLMError(f"{out} holds predictions for other questions: the benchmark files in "
                              f"{identity['data_dir']} changed since (rebuilt or edited)", fix)
    if "producer" not in identity:
        return
    old, new = before.get("producer"), identity["producer"]
    if old is None:
        raise CompactVLMError(f"{out} holds predictions written without a record of the model that produced them",
                              fix)
    if old != new:
        def show(v: Any) -> str:
            t = repr(v)
            return t if len(t) <= 40 else t[:36] + "...'"

        diff = [f"{k}: {show(old.get(k))} there, {show(new.get(k))} here" for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)]
        raise CompactVLMError(f"{out} holds predictions of another model ({'; '.join(diff[:4])})", fix)


def _legacy_run(out: Path) -> bool:
    """An eval folder written before markers existed: run.json naming a benchmark."""
    try:
        before = json.loads((out / RUN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(before, dict) and "benchmark" in before


@contextmanager
def hold_run(out_dir: str | os.PathLike, identity: dict, resume: bool = True):
    """Claim ``out_dir`` for an evaluation: refuse a file or a folder compactvlm did not write, refuse a resume
    whose identity (producer included) differs, then hold its lock (a second process fails at once). Re-entrant
    in one process, so a command can hold it across the model load and ``evaluate()`` takes it again."""
    from filelock import FileLock, Timeout

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CompactVLMError(f"--out {out} is a file, not a folder; nothing was changed",
                              "pass a new or existing evaluation folder for --out")
    if out.is_dir() and any(out.iterdir()):
        kind = marker_kind(out)
        if kind not in (None, "eval-run") or (kind is None and not _legacy_run(out)):
            raise refuse_foreign(out, "eval-run", "--out", kind)
    if resume:
        _check_identity(out, identity)  # before anything is created
    created = not out.exists()
    key = str(out.resolve() / LOCK)
    lock = _HELD.get(key)
    if lock is None:
        write_marker(out, "eval-run") if marker_kind(out) is None else None
        lock = FileLock(key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CompactVLMError(f"another process is writing to {out} (it holds {out / LOCK})",
                              "wait for it to finish, or evaluate into another --out folder") from None
    _HELD[key] = lock
    try:
        if resume:
            _check_identity(out, identity)  # again, now that no one else can write
        yield out
    finally:
        if lock.lock_counter == 1 and created and {p.name for p in out.iterdir()} <= {MARKER_NAME, LOCK}:
            for name in (MARKER_NAME, LOCK):  # nothing was written: leave no empty folder behind
                (out / name).unlink(missing_ok=True)
            out.rmdir()
        lock.release()
        if not lock.is_locked:
            _HELD.pop(key, None)


def evaluate(benchmark: str | Benchmark, data_dir: str | os.PathLike | None,
             answer_fn: Callable[[list[EvalItem]], Sequence[str]], out_dir: str | os.PathLike,
             batch_size: int = 8, resume: bool = True, limit: int | None = None, progress: bool = True,
             run_info: dict[str, Any] | None = None, producer: dict[str, Any] | None = None,
             control: str | None = None, **reader_kwargs: Any) -> dict:
    """Answer every question of ``benchmark`` (a name, or a reader instance) with ``answer_fn`` in
    batches of ``batch_size``, then score. ``limit``: only the first N questions. ``run_info``
    (e.g. ``{"name": "stf-64", "method": "stf", "vision_tokens": 64}``) is stored with the metrics for
    reports and PRT. ``producer`` (e.g. checkpoint digest, compressor spec, reduction, budget, decoding) is
    recorded in ``run.json``; resuming with a different one is refused (None: not checked). ``control``:
    ``shuffled`` or ``blank`` answers every question with its image replaced (a blind control, see
    ``evaluate.controls``); scoring is unchanged. Extra keyword arguments go to the reader (e.g. ``split="val"``
    for SceneQA). Returns the metrics dict (also written to ``out_dir/metrics.json``)."""
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
    identity = run_identity(reader, producer, control)
    with hold_run(out, identity, resume):
        asked = apply_control(items, control, out)
        return _evaluate_locked(reader, items, asked, answer_fn, out, identity, batch_size, resume, limit, progress,
                                run_info)


def _evaluate_locked(reader, items, asked, answer_fn, out, identity, batch_size, resume, limit, progress, run_info):
    """``items``: the questions as scored; ``asked``: the same questions as put to the model (their images
    replaced under a blind control)."""
    pred_path, run_path = out / PREDICTIONS, out / RUN
    done: dict[str, str] = {}
    earlier = 0.0  # answering time of the lines already written (by earlier, interrupted processes)
    if resume and pred_path.exists():
        done, earlier = read_predictions(pred_path)
    else:
        pred_path.write_text("", encoding="utf-8")
        (out / METRICS).unlink(missing_ok=True)  # another run's metrics must not sit beside these answers
    write_json(run_path, identity)

    todo = [it for it in asked if it.key not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=reader.name, unit="q", disable=not progress)
    t0 = time.perf_counter()
    with open(pred_path, "a", encoding="utf-8") as f:
        for batch in iter_batches(todo, batch_size):
            tb = time.perf_counter()
            answers = list(answer_fn(list(batch)))
            each = round((time.perf_counter() - tb) / max(len(batch), 1), 4)
            if len(answers) != len(batch):
                raise CompactVLMError(f"answer_fn returned {len(answers)} answers for {len(batch)} questions",
                                      "return exactly one string per EvalItem, in order")
            for it, a in zip(batch, answers):
                f.write(json.dumps({"question_id": it.question_id, "prompt": it.prompt, "text": str(a),
                                    "category": it.category, "seconds": each}, ensure_ascii=False) + "\n")
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
                   answer_seconds=round(seconds, 3), answer_seconds_earlier=round(earlier, 3), answered_now=len(todo),
                   control=identity.get("control"))
    if hasattr(reader, "split"):
        metrics.setdefault("split", reader.split)
    write_json(out / METRICS, metrics)
    return metrics


def run_controls(reader: Benchmark, answer_fn: Callable[[list[EvalItem]], Sequence[str]], real_dir: str | os.PathLike,
                 control_dirs: dict[str, str | os.PathLike], run_info: dict[str, Any] | None = None,
                 boot: int = 1000, **kwargs: Any) -> dict:
    """The blind controls of a finished real run: each ``control`` (``shuffled``/``blank``) evaluated into its
    folder with the real run's settings (``kwargs``: batch_size, resume, limit, progress, producer), then the
    paired per-family difference to the real answers in ``real_dir`` (``controls.blind_gap``, ``boot`` bootstrap
    resamples). Returns ``{"controls": {control: metrics}, "gap": blind_gap}``. Every caller that reports real
    vs blind (eval --with-controls, the demo, learning curves, shipping weights) goes through here."""
    from .controls import blind_gap

    info = run_info or {}
    metrics, preds = {}, {}
    for c, d in control_dirs.items():
        named = {**info, "name": f"{info['name']}-control-{c}"} if "name" in info else info
        metrics[c] = evaluate(reader, None, answer_fn, d, run_info=named, control=c, **kwargs)
        preds[c] = load_predictions(Path(d) / PREDICTIONS)
    items = reader.items()
    if kwargs.get("limit"):
        items = items[: kwargs["limit"]]
    gap = blind_gap([it.meta for it in items], load_predictions(Path(real_dir) / PREDICTIONS), preds, n=boot)
    return {"controls": metrics, "gap": gap}


def evaluate_with_controls(benchmark: str | Benchmark, data_dir: str | os.PathLike | None,
                           answer_fn: Callable[[list[EvalItem]], Sequence[str]], real_dir: str | os.PathLike,
                           control_dirs: dict[str, str | os.PathLike], run_info: dict[str, Any] | None = None,
                           boot: int = 1000, split: str | None = None, **kwargs: Any) -> dict:
    """``evaluate`` with real images into ``real_dir``, then ``run_controls``: ``{"real": metrics, "controls":
    {control: metrics}, "gap": blind_gap}``. ``split`` goes to the reader (SceneQA), the rest to ``evaluate``."""
    reader_kw = {"split": split} if split is not None else {}
    reader = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark, data_dir, **reader_kw)
    real = evaluate(reader, None, answer_fn, real_dir, run_info=run_info, **kwargs)
    return {"real": real, **run_controls(reader, answer_fn, real_dir, control_dirs, run_info=run_info, boot=boot,
                                         **kwargs)}
