"""Progress and ETA of ``study run``: each (row, seed) to run is an item of a queue; the run prints the item's
position, the time elapsed since the run began and an estimate of the time left.

Items are of two kinds: ``trained`` (the item trains a model: a trained row, or an evaluation-only row whose source
checkpoint no earlier item of the queue trains and that does not exist yet) and ``eval`` (it evaluates an existing
checkpoint). The time left is the sum over the items not finished of the mean measured minutes of finished items
of the same kind; before any item of a kind has finished, the plan's ``cost_hint`` (minutes for the row's name,
else for its kind); without either, the mean of all finished items. Failed items are not measurements. The clock is
injectable so the estimate is testable.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .plan import StudyPlan, checkpoint_dir

TRAINED, EVAL = "trained", "eval"


@dataclass
class QueueItem:
    row: str
    seed: int
    kind: str  # trained | eval
    seconds: float | None = None  # measured, once finished
    failed: bool = False


def build_queue(plan: StudyPlan, pairs: Sequence[tuple[str, int]]) -> list[QueueItem]:
    """Queue items for ``pairs`` ((row, seed) in run order), each with its kind (see the module docstring)."""
    will_train: set[Path] = set()
    out = []
    for name, seed in pairs:
        ck = checkpoint_dir(plan, plan.row(name), seed)
        trains = not (ck / "final" / "compactvlm.json").exists() and ck not in will_train
        if trains:
            will_train.add(ck)
        out.append(QueueItem(name, seed, TRAINED if trains else EVAL))
    return out


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    m = int(round(seconds / 60))
    if m < 60:
        return f"{seconds / 60:.1f} min" if seconds < 600 else f"{m} min"
    return f"{m // 60} h {m % 60:02d} min"


@dataclass
class StudyProgress:
    plan: StudyPlan
    items: list[QueueItem]
    clock: Callable[[], float] = time.monotonic
    t0: float = field(init=False)
    _started: float | None = field(init=False, default=None)
    _running: QueueItem | None = field(init=False, default=None)

    def __post_init__(self):
        self.t0 = self.clock()

    def _minutes_per_kind(self) -> dict[str, float]:
        done: dict[str, list[float]] = {}
        for it in self.items:
            if it.seconds is not None and not it.failed:
                done.setdefault(it.kind, []).append(it.seconds)
        return {k: statistics.fmean(v) / 60 for k, v in done.items()}

    def estimate_minutes(self, it: QueueItem, measured: dict[str, float] | None = None) -> tuple[float | None, str]:
        """Minutes an unfinished item is expected to take and where the figure comes from."""
        measured = self._minutes_per_kind() if measured is None else measured
        if it.kind in measured:
            return measured[it.kind], "measured"
        hint = self.plan.cost_hint.get(it.row, self.plan.cost_hint.get(it.kind))
        if hint is not None:
            return float(hint), "cost_hint"
        if measured:
            return statistics.fmean(measured.values()), "measured (other kind)"
        return None, "none"

    def eta_seconds(self) -> tuple[float | None, str]:
        """Seconds left for the unfinished items (the running one counted from its start) and how it was
        estimated; None when some item has no estimate."""
        measured = self._minutes_per_kind()
        total, sources = 0.0, set()
        for it in self.items:
            if it.seconds is not None:
                continue
            m, src = self.estimate_minutes(it, measured)
            if m is None:
                return None, "no row has finished yet and the plan has no cost_hint"
            sources.add(src)
            left = m * 60
            if self._running is it and self._started is not None:
                left = max(0.0, left - (self.clock() - self._started))
            total += left
        basis = ", ".join(f"{k} {v:.1f} min" for k, v in sorted(measured.items()))
        how = (f"from finished rows ({basis})" if sources <= {"measured"} else
               "from the plan's cost_hint" + (f" and finished rows ({basis})" if basis else ""))
        return total, how

    def _status(self) -> str:
        left = sum(1 for it in self.items if it.seconds is None)
        if left == 0:
            return f"elapsed {fmt_duration(self.clock() - self.t0)}; queue done"
        eta, how = self.eta_seconds()
        if eta is None:
            return f"elapsed {fmt_duration(self.clock() - self.t0)}; ETA unknown ({how})"
        return (f"elapsed {fmt_duration(self.clock() - self.t0)}; ETA {fmt_duration(eta)} for {left} "
                f"row{'s' if left != 1 else ''} left ({how})")

    def start(self, i: int) -> str:
        it = self.items[i]
        self._running, self._started = it, self.clock()
        return f"[study] {i + 1}/{len(self.items)} {it.row} seed {it.seed} ({it.kind}): running; {self._status()}"

    def finish(self, i: int, failed: bool = False) -> str:
        it = self.items[i]
        it.seconds = self.clock() - (self._started if self._started is not None else self.t0)
        it.failed = failed
        self._running, self._started = None, None
        what = "FAILED after" if failed else "done in"
        return (f"[study] {i + 1}/{len(self.items)} {it.row} seed {it.seed}: {what} {fmt_duration(it.seconds)}; "
                f"{self._status()}")
