"""Performance Retain Rate (VisToG, Eq. 6-7): for datasets D_i with reference scores b_i (the run
with all vision tokens) and a run's scores p_i,

    R_i = p_i / b_i,        PRT = (1 / |D|) * sum_i R_i      (reported in %)

over the datasets both runs have. A "dataset" is a benchmark's headline metric, or for SceneQA each
question family (``sceneqa/<family>``). Datasets where the reference scores 0 are left out (R undefined).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import CompactVLMError


def dataset_scores(result: Mapping) -> dict[str, float]:
    """The per-dataset numbers of one metrics dict (as written by ``evaluate``)."""
    if result.get("components"):
        return {k: float(v) for k, v in result["components"].items() if v is not None}
    if result.get("headline") is None:
        return {}
    return {str(result.get("benchmark", "benchmark")): float(result["headline"])}


def prt(scores: Mapping[str, float], reference: Mapping[str, float], datasets: Iterable[str] | None = None) -> dict:
    """PRT of ``scores`` against ``reference`` (both dataset -> value)."""
    names = list(datasets) if datasets is not None else list(reference)
    used = [d for d in names if d in scores and d in reference and reference[d]]
    if not used:
        raise CompactVLMError("no dataset is scored by both the run and the reference (with a non-zero reference)",
                              "evaluate both runs on the same benchmarks first")
    ratios = {d: 100.0 * float(scores[d]) / float(reference[d]) for d in used}
    return {"prt": sum(ratios.values()) / len(ratios), "ratios": ratios, "datasets": used,
            "left_out": [d for d in names if d not in used]}


def seen_datasets(sees: Iterable[Mapping[str, bool]], prefix: str = "sceneqa/") -> list[str] | None:
    """The datasets PRT should average over: the SceneQA families on which the reference beats its blind control
    in every one of ``sees`` (``blind_gap``'s per-family verdicts, one per reference run). On the others a ratio
    compares answers that do not depend on the image, and a reference near 0 makes it explode. ``None`` (use every
    dataset) when no run has per-family verdicts; ``[]`` when the reference sees on none (no PRT)."""
    sees = [s for s in sees if s and any(f != "family_mean" for f in s)]
    if not sees:
        return None
    return [f"{prefix}{f}" for f in sees[0] if f != "family_mean" and all(s.get(f) for s in sees)]


def run_name(result: Mapping, path: str | os.PathLike | None = None) -> str:
    run = result.get("run") or {}
    if run.get("name"):
        return str(run["name"])
    if path is not None:
        return Path(path).parent.name
    return str(result.get("benchmark", "run"))


def load_results(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, dict]]:
    """Metrics JSONs from files or folders (folders are searched for ``metrics.json``)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.rglob("metrics.json")) if p.is_dir() else [p]
        if not files:
            raise CompactVLMError(f"no metrics.json under {p}", "pass metrics files or the folders evaluate() wrote")
        for f in files:
            try:
                out.append((f, json.loads(f.read_text(encoding="utf-8"))))
            except (OSError, json.JSONDecodeError) as e:
                raise CompactVLMError(f"cannot read {f}: {e}", "pass metrics.json files written by evaluate()")
    return out


def collect_runs(results: Iterable[tuple[Path | None, Mapping] | Mapping]) -> dict[str, dict]:
    """Group metrics by run: name -> {"method", "vision_tokens", "scores": {dataset: value}}."""
    runs: dict[str, dict] = {}
    for r in results:
        path, result = r if isinstance(r, tuple) else (None, r)
        name = run_name(result, path)
        info = result.get("run") or {}
        run = runs.setdefault(name, {"method": info.get("method", name), "vision_tokens": info.get("vision_tokens"),
                                     "scores": {}})
        if run["vision_tokens"] is None and info.get("vision_tokens") is not None:
            run["vision_tokens"] = info["vision_tokens"]
        run["scores"].update(dataset_scores(result))
    return runs


def prt_table(runs: Mapping[str, Mapping], reference: str, datasets: Iterable[str] | None = None) -> dict[str, dict]:
    """PRT of every run against the run named ``reference``."""
    if reference not in runs:
        raise CompactVLMError(f"reference run {reference!r} not found", f"runs: {', '.join(runs) or 'none'}")
    ref = runs[reference]["scores"]
    ds = list(datasets) if datasets is not None else None
    return {name: prt(r["scores"], ref, ds) for name, r in runs.items()}
