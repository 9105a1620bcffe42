"""The claims table's four verdicts, decided by one rule (Study v2):

- **holds**: the claimed direction with a 95 % CI excluding 0 (``greater`` / ``less``), or for "retains accuracy"
  (``retains``) a PRT CI within ±``tol`` points of 100, or for "no better / no worse" (``equal``) a difference CI
  within ±``tol`` points;
- **direction only**: the sign (or the point estimate, for ``retains`` / ``equal``) agrees, the CI does not settle it;
- **not reproduced**: the point estimate disagrees with the claim;
- **untested**: the reference or the row does not beat its blind control on the families the claim is about (a
  model that does not look at the image cannot test what a compressor keeps of it).

Blindness comes first: a claim is "untested" whatever its numbers when either model fails its blind control.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CompactVLMError

HOLDS, DIRECTION_ONLY, NOT_REPRODUCED, UNTESTED = "holds", "direction only", "not reproduced", "untested"
VERDICTS = (HOLDS, DIRECTION_ONLY, NOT_REPRODUCED, UNTESTED)
KINDS = ("greater", "less", "retains", "equal")


@dataclass
class Evidence:
    """What one claim is judged on. ``delta``: (point, lo, hi) of row minus comparison (accuracy points);
    ``prt``: (point, lo, hi) of the row's PRT vs the reference (%); ``reference_sees`` / ``row_sees``: whether each
    beats its shuffled-image control (real minus shuffled CI above 0) on the claim's families."""

    delta: Sequence[float] | None = None
    prt: Sequence[float] | None = None
    reference_sees: bool = False
    row_sees: bool = False


def _ci(v: Sequence[float] | None, what: str) -> tuple[float, float, float]:
    if v is None or len(v) != 3:
        raise CompactVLMError(f"{what} must be (point, lo, hi), got {v!r}", f"pass the {what} with its 95% CI")
    p, lo, hi = (float(x) for x in v)
    if not lo <= hi:
        raise CompactVLMError(f"{what} CI [{lo}, {hi}] is reversed", "pass (point, lower, upper)")
    return p, lo, hi


def verdict(kind: str, ev: Evidence, tol: float = 3.0) -> str:
    """The verdict of a claim of ``kind`` (``greater``: row beats the comparison; ``less``: row is worse;
    ``retains``: row keeps the reference's accuracy, PRT ≈ 100; ``equal``: no difference) on evidence ``ev``."""
    if kind not in KINDS:
        raise CompactVLMError(f"unknown claim kind {kind!r}", f"use one of {', '.join(KINDS)}")
    if not (ev.reference_sees and ev.row_sees):
        return UNTESTED
    if kind == "retains":
        p, lo, hi = _ci(ev.prt, "PRT")
        if 100 - tol <= lo and hi <= 100 + tol:
            return HOLDS
        return DIRECTION_ONLY if abs(p - 100) <= tol else NOT_REPRODUCED
    p, lo, hi = _ci(ev.delta, "difference")
    if kind == "equal":
        if -tol <= lo and hi <= tol:
            return HOLDS
        return DIRECTION_ONLY if abs(p) <= tol else NOT_REPRODUCED
    sign = 1.0 if kind == "greater" else -1.0
    if sign * p <= 0:
        return NOT_REPRODUCED
    return HOLDS if (lo > 0 if sign > 0 else hi < 0) else DIRECTION_ONLY
