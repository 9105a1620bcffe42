"""The claims table's four verdicts, decided by one rule (Study v2):

- **holds**: the claimed direction with a 95 % CI excluding 0 (``greater`` / ``less``), or for "retains accuracy"
  (``retains``) a PRT CI within ±``tol`` points of 100, or for "no better / no worse" (``equal``) a difference CI
  within ±``tol`` points; and the compared models had finished learning (every row's validation-loss curve
  flattened and, where the results keep the answers, no test score still rising at the end,
  ``convergence.pair_flag``): a comparison is made at the end of training only when both curves have flattened, so
  a CI that settles it while a model was still learning gives **direction only**, with that reason;
- **direction only**: the sign (or the point estimate, for ``retains`` / ``equal``) agrees, the CI does not settle it
  (or settles it before the curves flattened);
- **not reproduced**: the point estimate disagrees with the claim;
- **untested**: the reference or the row does not beat its blind control on the families the claim is about (a
  model that does not look at the image cannot test what a compressor keeps of it).

Blindness comes first: a claim is "untested" whatever its numbers when either model fails its blind control.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import CompactVLMError

HOLDS, DIRECTION_ONLY, NOT_REPRODUCED, UNTESTED = "holds", "direction only", "not reproduced", "untested"
VERDICTS = (HOLDS, DIRECTION_ONLY, NOT_REPRODUCED, UNTESTED)
KINDS = ("greater", "less", "retains", "equal")


@dataclass
class Evidence:
    """What one claim is judged on. ``delta``: (point, lo, hi) of row minus comparison (accuracy points);
    ``prt``: (point, lo, hi) of the row's PRT vs the reference (%); ``reference_sees`` / ``row_sees``: whether each
    beats its shuffled-image control (real minus shuffled CI above 0) on the claim's families; ``converged``:
    whether every compared model's validation-loss curve had flattened (False caps the verdict at direction only)."""

    delta: Sequence[float] | None = None
    prt: Sequence[float] | None = None
    reference_sees: bool = False
    row_sees: bool = False
    converged: bool = True


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
    settled = _by_ci(kind, ev, tol)
    return DIRECTION_ONLY if settled == HOLDS and not ev.converged else settled


def _by_ci(kind: str, ev: Evidence, tol: float) -> str:
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


# ---- the study's claims table -----------------------------------------------------------------------------------
def _lower(m: float, ci: float | None) -> float:
    return m - (ci or 0.0)


def reference_at_chance(ref: dict, families: Sequence[str], baselines: dict | None) -> bool | None:
    """Whether the summarized reference row does not score above chance on some family of ``families`` (the lower
    end of its 95 % CI at or below chance: the test-image bootstrap for the family mean, the seed CI per family).
    None when the chance baseline is unknown."""
    from .controls import chance_family_mean

    if not baselines:
        return None
    for f in families:
        if f == "family_mean":
            boot = (ref.get("bootstrap") or {}).get("family_mean")
            low = boot[1] if boot else _lower(*ref["overall"])
            if low <= chance_family_mean(baselines):
                return True
        elif f in baselines and f"sceneqa/{f}" in ref["families"]:
            if _lower(*ref["families"][f"sceneqa/{f}"]) <= float(baselines[f]["chance"]):
                return True
    return False


def judge_claims(plan, rows: dict[str, dict], pairs: dict[tuple[str, str], dict],
                 baselines: dict | None) -> list[dict]:
    """The plan's claims (``StudyPlan.claims``), each with its evidence and verdict; an ``untested`` verdict comes
    with the reason. ``rows``: ``stats.summarize``'s rows; ``pairs``: (a, b) -> ``stats.compare``'s entry
    (``delta``: a - b with the test-image CI; b = the reference may be left out: the row's own bootstrap is used);
    ``baselines``: the test split's chance baselines (``controls.load_baselines``), or None."""
    from .controls import sees
    from .convergence import pair_flag

    ref = rows.get(plan.reference)
    out = []
    for c in plan.claims:
        fams = list(c.families) or ["family_mean"]
        e = {"claim": c.claim, "kind": c.kind, "a": c.a, "b": c.b, "families": fams, "tol": c.tol,
             "delta": None, "seeds": [], "prt": None, "reason": None}
        a = rows.get(c.a)
        missing = [n for n in (c.a, c.b, plan.reference) if n and n not in rows]
        if missing:
            e.update(verdict=UNTESTED, reason="not yet run: " + ", ".join(f"`{n}`" for n in dict.fromkeys(missing)),
                     convergence=None)
            out.append(e)
            continue
        names = [c.a, c.b or plan.reference]
        common = set(rows[names[0]]["seeds"]) & set(rows[names[1]]["seeds"])  # Δ and PRT pair rows seed by seed
        e["convergence"] = pair_flag(names, {n: rows[n].get("convergence") for n in names}, seeds=common)
        if not common:
            e.update(verdict=UNTESTED, reason="no seed in common: " + "; ".join(
                f"`{n}` has seed {', '.join(map(str, sorted(rows[n]['seeds'])))}" for n in names))
            out.append(e)
            continue
        if c.kind == "retains":
            m, ci = a["prt"]
            e["prt"] = (m, ci)
            boot = a.get("bootstrap") or {}
            e["delta"], e["seeds"] = boot.get("delta"), boot.get("seeds", [])
        else:
            p = pairs.get((c.a, c.b))
            if p is None and c.b == plan.reference:
                p = a.get("bootstrap")
            e["delta"], e["seeds"] = (p or {}).get("delta"), (p or {}).get("seeds", [])
        ref_sees, row_sees = sees(ref["blind"], fams), sees(a["blind"], fams)
        if ref_sees is not True:
            at_chance = reference_at_chance(ref, fams, baselines)
            e["reason"] = ("reference at chance" if at_chance else
                           "reference does not beat its blind control" if ref_sees is False else
                           "no blind control for the reference in the results")
        elif row_sees is not True:
            e["reason"] = (f"`{c.a}` does not beat its blind control" if row_sees is False else
                           f"no blind control for `{c.a}` in the results")
        elif c.kind != "retains" and not e["delta"]:
            e["reason"] = "no paired test-image CI (the plan's bootstrap is 0)"
        elif c.kind == "retains" and e["prt"][0] is None:
            e["reason"] = "no PRT: the reference beats its blind control on no single family"
        if e["reason"]:
            e["verdict"] = UNTESTED
            out.append(e)
            continue
        if c.kind == "retains":
            m, ci = e["prt"]
            # one seed gives no CI: the claim can at best be "direction only"
            ev = Evidence(prt=(m, m - ci, m + ci) if ci is not None else (m, float("-inf"), float("inf")),
                          reference_sees=True, row_sees=True)
        else:
            ev = Evidence(delta=e["delta"], reference_sees=True, row_sees=True)
        e["verdict"] = verdict(c.kind, replace(ev, converged=e["convergence"] is None), c.tol)
        if e["verdict"] != verdict(c.kind, ev, c.tol):  # it would hold, had the curves flattened
            e["reason"] = "its CI settles it, but before the curves flattened"
        out.append(e)
    return out
