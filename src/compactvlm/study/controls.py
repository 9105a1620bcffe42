"""What the report sets the scores against: the test split's chance baseline, each row's blind control, and the
machine the result files were measured on.

- **Chance** comes from the data build's manifest (``baselines.test``: per family, the expected headline of guessing
  uniformly among each question's answers). ``study run`` copies it next to the results
  (``<results_dir>/test_baselines.json``) so the report does not need the data folder; without that file the
  report reads ``<data.dir>/manifest.json`` when it is the plan's build, and otherwise draws no chance line and
  says so.
- **Blind controls**: a result JSON may carry ``blind_gap``, the output of ``evaluate.controls.blind_gap`` (as
  ``compactvlm eval --with-controls`` writes to ``blind_gap.json``): real-image minus shuffled-image scores per
  family with paired bootstrap CIs, and ``sees`` (that CI above 0). Rows without it have no blind control.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .plan import StudyPlan

BASELINES_FILE = "test_baselines.json"
#: MME's chance on the 0-100 scale of the family mean: acc 50 + acc+ 25 of 200 per category
#: (``evaluate.benchmarks.sceneqa.chance_headline`` and ``percent_headline``)
MME_CHANCE_PERCENT = 37.5


def record_baselines(plan: StudyPlan, data_dir: Path) -> Path | None:
    """Copy the data build's test-split baselines into ``<results_dir>/test_baselines.json`` (rewritten only when
    they change). Returns the file, or None when the manifest has no test baselines."""
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    test = (manifest.get("baselines") or {}).get("test")
    if not test:
        return None
    record = {"manifest": str(Path(data_dir) / "manifest.json"), "seed": manifest.get("seed"),
              "sizes": manifest.get("sizes"), "version": manifest.get("version"), "test": test}
    out = Path(plan.results_dir) / BASELINES_FILE
    if out.exists():
        old = json.loads(out.read_text())
        if {k: old.get(k) for k in ("seed", "sizes", "version", "test")} == \
                {k: record[k] for k in ("seed", "sizes", "version", "test")}:
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out)
    return out


def load_baselines(plan: StudyPlan) -> tuple[dict | None, str]:
    """The test split's per-family baselines (the manifest's ``baselines.test``) and where they came from, or
    (None, why there are none)."""
    def plans_build(m: dict) -> bool:  # the same SceneQA test split as the plan's
        return m.get("seed") == plan.data.seed and (m.get("sizes") or {}).get("test") == plan.data.test

    rec = Path(plan.results_dir) / BASELINES_FILE
    if rec.exists():
        r = json.loads(rec.read_text())
        if r.get("test") and plans_build(r):
            return r["test"], f"`{rec}`"
    man = Path(plan.data.dir) / "manifest.json"
    if man.exists():
        m = json.loads(man.read_text())
        test = (m.get("baselines") or {}).get("test")
        if test and plans_build(m):
            return test, f"`{man}` (the result files do not record it)"
    return None, (f"neither `{rec}` nor the plan's data build (`{man}`) gives the chance baseline of the plan's "
                  f"test split (seed {plan.data.seed}, {plan.data.test} images)")


def baselines_percent(baselines: dict) -> dict[str, tuple[float, float | None]]:
    """Each family's (chance, majority) on the 0-100 scale of its headline (MME's totals rescaled as its headline
    is: its chance total is 37.5% of the maximum; majority None where the record has none), plus ``family_mean``:
    the mean of each over the families (majority None unless every family has one)."""
    out = {}
    for fam, b in baselines.items():
        scale = MME_CHANCE_PERCENT / float(b["chance"]) if fam == "mme" else 1.0
        major = b.get("majority")
        out[fam] = (float(b["chance"]) * scale, float(major) * scale if major is not None else None)
    majors = [v[1] for v in out.values()]
    out["family_mean"] = (statistics.fmean(v[0] for v in out.values()),
                          statistics.fmean(majors) if None not in majors else None)
    return out


def chance_family_mean(baselines: dict) -> float:
    """Chance on the family-mean scale (the mean over families of each family's chance in %)."""
    return baselines_percent(baselines)["family_mean"][0]


def blind_summary(runs: Sequence[dict]) -> dict | None:
    """A row's shuffled-image control over its seeds: the seeds that carry one, the mean shuffled family mean
    (0-100), real minus shuffled (mean over those seeds, and per seed with its test-image CI), and per family (and
    ``family_mean``) whether real beats shuffled at every such seed. None when no seed carries a shuffled
    control."""
    gaps = [(r["seed"], r["blind_gap"]) for r in runs
            if isinstance(r.get("blind_gap"), dict) and "shuffled" in (r["blind_gap"].get("controls") or {})]
    if not gaps:
        return None
    sees: dict[str, bool] = {}
    for _, g in gaps:
        for fam, ok in (g.get("sees") or {}).items():
            sees[fam] = sees.get(fam, True) and bool(ok)
    shuffled = [g["controls"]["shuffled"]["family_mean"] for _, g in gaps]
    return {"seeds": [s for s, _ in gaps], "all_seeds": len(gaps) == len(runs),
            "family_mean": statistics.fmean(x["b"] for x in shuffled),
            "delta": statistics.fmean(x["delta"][0] for x in shuffled),  # real - shuffled, mean over seeds
            "delta_by_seed": {s: g["controls"]["shuffled"]["family_mean"]["delta"] for s, g in gaps},
            "sees": sees}


def sees(blind: dict | None, families: Sequence[str]) -> bool | None:
    """Whether a row beats its shuffled control on every family in ``families`` (``family_mean`` for the mean),
    at every seed; None when it has no blind control (for some seed)."""
    if blind is None or not blind["all_seeds"]:
        return None
    return all(blind["sees"].get(f, False) for f in families)


def environment(results: dict[str, list[dict]]) -> str:
    """The machine and thread count the result files recorded (distinct ones with their counts), or this machine
    at report time, labelled as such, when none recorded it."""
    seen: Counter = Counter()
    missing = 0
    for runs in results.values():
        for r in runs:
            hw = r.get("hardware")
            if not hw:
                missing += 1
                continue
            gpu = f"GPU {hw.get('gpu')}" if hw.get("device") == "cuda" else "no GPU"
            threads = hw.get("torch_threads")
            cpu = hw.get("processor") or hw.get("machine")
            if hw.get("cpu_capability"):  # recorded since 2026-12-04
                cpu += f" {hw['cpu_capability']}, {'native' if hw.get('bf16_fast') else 'no native'} bf16"
            dtype = hw.get("eval_dtype") or "float32"  # recorded since 2026-12-05; float32 before
            seen[f"{hw.get('cpus')} CPU cores ({cpu}), {threads} torch "
                 f"thread{'s' if threads != 1 else ''}, {gpu}"
                 + (f", evaluated in {dtype}" if dtype != "float32" else "")] += 1
    if not seen:
        import torch

        n = torch.get_num_threads()
        return (f"not recorded in the result files; report machine at report time: {os.cpu_count()} CPU cores "
                f"({platform.processor() or platform.machine()}), {n} torch thread{'s' if n != 1 else ''}")
    total = sum(seen.values()) + missing
    parts = [f"{k} ({v} of {total} result files)" if len(seen) > 1 or missing else f"{k} (all {v} result files)"
             for k, v in seen.most_common()]
    if missing:
        parts.append(f"{missing} result files without a record")
    return "; ".join(parts)
