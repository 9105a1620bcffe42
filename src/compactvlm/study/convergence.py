"""Convergence, shown rather than assumed (Study v2): the slope of each row's validation loss over the last third of
its last training stage, and the flag on comparisons between rows whose curves have not flattened.

The slope is a least-squares line through the validation-loss points at or after two thirds of the stage's
training samples (at least two points), in nats per 1000 training samples (samples = step × global batch). A row
whose slope magnitude exceeds the plan's ``flat_slope`` at any seed has not flattened; a comparison of two rows is
"not converged" when either has not (evaluation-only rows take their source row's curve, which their result files
carry). Under a cosine schedule the learning rate is small near the end, which flattens the last third by itself:
read a flat slope with the test-set learning curve (``eval_steps``) beside it. So a row whose convergence entry
carries a ``test_gain`` (``stats.end_gains``: final test answers minus those at the last curve point before the end,
paired by test image) with a 95% CI above 0 has not converged either: its test score was still rising.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

SAMPLES_UNIT = 1000  # the slope's denominator: nats per this many training samples


def last_third_slope(curve: Sequence[Sequence[float]], batch_size: int | None) -> float | None:
    """Slope of ``curve`` ([step, val loss] pairs) over its last third, in nats per 1000 samples; None without a
    batch size or with fewer than two points in the last third."""
    if not batch_size or len(curve) < 2:
        return None
    pts = sorted((float(st) * batch_size, float(v)) for st, v in curve)
    end = pts[-1][0]
    tail = [p for p in pts if p[0] >= end * 2 / 3]
    if len(tail) < 2 or tail[0][0] == tail[-1][0]:
        return None
    fit = statistics.linear_regression([x for x, _ in tail], [y for _, y in tail])
    return fit.slope * SAMPLES_UNIT


def _last_stage(result: dict) -> tuple[int, dict]:
    stages = result.get("stages") or []
    if stages:
        return int(stages[-1].get("stage", len(stages))), stages[-1].get("train") or {}
    return 1, result.get("train") or {}


def row_convergence(runs: Sequence[dict], flat_slope: float, default_batch: int | None = None) -> dict:
    """A row's convergence over its seeds: the last stage's number, the last-third slope per seed, the largest
    magnitude and ``flat`` (every seed's slope within ±``flat_slope``; None when no seed has a slope).
    ``default_batch``: the global batch of the plan's last stage config, for results that do not record theirs
    (written before they did)."""
    slopes: dict[int, float | None] = {}
    stage = 1
    for r in runs:
        stage, tr = _last_stage(r)
        slopes[r["seed"]] = last_third_slope(tr.get("val_loss_curve") or [], tr.get("batch_size") or default_batch)
    known = [abs(v) for v in slopes.values() if v is not None]
    return {"stage": stage, "slopes": slopes, "max_abs_slope": max(known) if known else None,
            "flat": (all(v <= flat_slope for v in known) and len(known) == len(slopes)) if known else None,
            "threshold": flat_slope}


def pair_flag(names: Sequence[str], convergence: dict[str, dict], seeds: Iterable[int] | None = None) -> str | None:
    """The flag of a comparison between rows ``names``: None when every row's curve has flattened, else
    ``not converged: `row` (last-third slope S nats/1000 samples)`` (or ``(test score still rising: ...)``, a
    ``test_gain`` whose CI is above 0, over seeds the comparison pairs) or ``convergence unknown: ...``. An entry may
    name its ``source`` (an evaluation-only row's trained row), shown with it. ``seeds``: the seeds the comparison
    pairs (None: all of each row's); a row is judged on those seeds' curves only."""
    keep = None if seeds is None else {int(s) for s in seeds}
    loose, unknown = [], []
    for n in dict.fromkeys(names):
        c = convergence.get(n)
        label = f"`{n}`" + (f" (`{c['source']}`'s model)" if c and c.get("source") else "")
        slopes = {} if c is None else {int(s): v for s, v in c["slopes"].items() if keep is None or int(s) in keep}
        known = [v for v in slopes.values() if v is not None]
        gain = (c or {}).get("test_gain")
        rising = (gain is not None and gain["delta"][1] > 0
                  and (keep is None or any(int(s) in keep for s in gain["seeds"])))
        why = []
        if known and (len(known) < len(slopes) or any(abs(v) > c["threshold"] for v in known)):
            worst = max(known, key=abs)
            why.append(f"last-third slope {worst:+.3f} nats/1000 samples, limit ±{c['threshold']:g}")
        if rising:
            d, lo, hi = gain["delta"]
            why.append(f"test score still rising: {d:+.1f} [{lo:+.1f}, {hi:+.1f}] since step {gain['step']}")
        if why:
            loose.append(f"{label} ({'; '.join(why)})")
        elif not known:
            unknown.append(label)
    if loose:
        return "not converged: " + ", ".join(loose)
    if unknown:
        return "convergence unknown (no last-third slope) for " + ", ".join(unknown)
    return None
