"""Reading the result files and the statistics of the report: mean and 95% CI over seeds, PRT against the
reference, test-image bootstraps (cached next to the results) and the head-to-head comparisons."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from ..errors import CompactVLMError
from .controls import blind_summary
from .convergence import last_third_slope, row_convergence
from .plan import StudyPlan, eval_dir
from .run import ensure_data


def points_before_end(result: dict) -> list[dict]:
    """The scored learning-curve points of one result before its end of training (the last stage's steps; a result
    without them: its curve's last step), whose answers are not the result's own. Shared by ``attach_predictions``
    and ``end_gains`` so that both read the same points."""
    curve = result.get("curve") or []
    end = (result.get("train") or {}).get("steps") or max((p["step"] for p in curve), default=0)
    return [p for p in curve if p.get("family_mean") is not None and p["step"] < end]


def attach_predictions(plan: StudyPlan) -> list[Path]:
    """Add the answers to result files written before results carried them (from the run's evaluation folders under
    ``runs_dir``): the row's own, and those of its learning-curve points before the end of training, each after
    checking that re-scoring those answers gives exactly the stored score."""
    from ..evaluate.benchmarks.base import read_jsonl
    from ..evaluate.benchmarks.sceneqa import score_rows
    from ..evaluate.harness import PREDICTIONS, load_predictions

    rows = None
    done = []
    for f in sorted(Path(plan.results_dir).glob("*/seed*.json")):
        res = json.loads(f.read_text())
        name, seed = res["row"]["name"], res["seed"]
        # (where the answers go, their folder, the family mean they must re-score to)
        wanted = [(res, eval_dir(plan, name, seed), res["metrics"]["family_mean"])] if "predictions" not in res else []
        wanted += [(p, eval_dir(plan, name, seed, step=p["step"]), p["family_mean"]) for p in points_before_end(res)
                   if "predictions" not in p]
        changed = False
        for into, folder, family_mean in wanted:
            pred_file = folder / PREDICTIONS
            if not pred_file.exists():
                continue
            if rows is None:
                rows = read_jsonl(Path(plan.data.dir) / "test_answers.jsonl")
                rows = rows[: plan.eval_limit] if plan.eval_limit else rows
            preds = load_predictions(pred_file)
            if any(str(r["question_id"]) not in preds for r in rows):
                continue
            again = score_rows(rows, [preds[str(r["question_id"])] for r in rows])
            if abs(again["family_mean"] - family_mean) > 1e-9:
                raise CompactVLMError(f"the answers in {pred_file} re-score to family mean {again['family_mean']:.3f}, "
                                      f"but {f} says {family_mean:.3f}: they are not from the same run",
                                      f"re-run it: compactvlm study run --plan <plan> --rows {name} "
                                      f"--seeds {seed} --force")
            into["predictions"] = preds
            changed = True
        if changed:
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            tmp.replace(f)
            done.append(f)
    return done


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student t; None for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    from scipy.stats import t

    return m, float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def collect(plan: StudyPlan) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in plan.rows:
        d = Path(plan.results_dir) / r.name
        files = sorted(d.glob("seed*.json")) if d.exists() else []
        if files:
            out[r.name] = [json.loads(f.read_text()) for f in files]
    return out



def prt_families(ref_runs: list[dict]) -> list[str] | None:
    """The SceneQA components PRT averages over (``evaluate.prt.seen_datasets``): the families on which the
    reference beats its shuffled-image control at every seed that has one. ``None``: every family (no result
    carries per-family blind verdicts); ``[]``: it sees on none, and PRT is not reported."""
    from ..evaluate.prt import seen_datasets

    return seen_datasets((r.get("blind_gap") or {}).get("sees") for r in ref_runs)


def summarize(plan: StudyPlan, results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: seeds, tokens, per-family and overall mean ± CI, PRT (each seed against the reference's same seed,
    mean ± CI over the seeds both have; ``prt_seeds`` lists them)."""
    from ..evaluate.prt import prt

    ref_runs = results.get(plan.reference, [])
    # PRT pairs each seed with the reference's same seed (the model an evaluation-only row reduces; a trained row's
    # data order and initialisation), as the Δ column pairs them: a row at seed 0 only is not judged against a
    # reference mean that includes seeds it never ran
    ref_by_seed = {r["seed"]: r["metrics"]["components"] for r in ref_runs}
    boots = _bootstraps(plan, results)
    gains = end_gains(plan, results)
    batches = _plan_batches(plan)
    prt_datasets = prt_families(ref_runs)
    rows = {}
    for name, runs in results.items():
        comps = [r["metrics"]["components"] for r in runs]
        final_loss = [r["train"]["val_loss_curve"][-1][1] for r in runs if r["train"].get("val_loss_curve")]
        fams = {k: mean_ci([c[k] for c in comps if c.get(k) is not None]) for k in comps[0]}
        paired = [r for r in runs if r["seed"] in ref_by_seed] if prt_datasets != [] else []
        prts = [prt(r["metrics"]["components"], ref_by_seed[r["seed"]], prt_datasets)["prt"] for r in paired]
        spec = runs[0]["row"]
        # an evaluation-only row (`from`) carries its source's training record, which is not the row's own
        trained = spec.get("from_") is None
        # in-LLM reductions (fastv, pyramiddrop, sparsevlm) keep every vision token in the prompt and prune inside
        # the LLM: plotted at their budget (tokens after layer K for fastv, equivalent tokens for the staged ones)
        from ..registry import REDUCTIONS

        in_llm = bool(spec.get("reduce")) and spec["reduce"] in REDUCTIONS and REDUCTIONS.get(spec["reduce"]).in_llm
        rows[name] = {
            "seeds": [r["seed"] for r in runs], "families": fams,
            "tokens": spec["budget"] if in_llm else runs[0]["vision_tokens"],
            "tokens_label": (f"{runs[0]['vision_tokens']}→{spec['budget']}" if in_llm else str(runs[0]["vision_tokens"])),
            "overall": mean_ci([r["metrics"]["family_mean"] for r in runs]),
            "prt": mean_ci(prts) if prts else (None, None),
            "prt_seeds": [r["seed"] for r in paired],
            "ttft_ms": statistics.fmean(r["cost"]["ttft_ms"] for r in runs),
            "llm_gflops": statistics.fmean(r["cost"]["flops_llm"] for r in runs) / 1e9,
            "vision_gflops": statistics.fmean(r["cost"]["flops_vision"] for r in runs) / 1e9,
            "sec_per_step": (statistics.fmean(x for x in (r["train"].get("sec_per_step") for r in runs) if x)
                             if trained and any(r["train"].get("sec_per_step") for r in runs) else None),
            "train_steps": runs[0]["train"].get("steps"),
            "val_loss_curve": runs[0]["train"].get("val_loss_curve", []),
            "final_val_loss": mean_ci(final_loss) if final_loss and trained else (None, None),
            "final_val_loss_by_seed": ({r["seed"]: r["train"]["val_loss_curve"][-1][1] for r in runs
                                        if r["train"].get("val_loss_curve")} if trained else {}),
            "bootstrap": boots.get(name),
            # evaluation (real images, controls, curve points), plus training (from the runs' own logs) for trained
            # rows: every stage this row trained itself
            "wall_s": sum(r["wall_seconds"]["eval"] + r["wall_seconds"].get("controls", 0.0)
                          + r["wall_seconds"].get("curve", 0.0)
                          + (_train_wall(r) if trained else 0.0) for r in runs),
            "note": runs[0]["row"].get("note", ""), "from": runs[0]["row"].get("from_"),
            "retrained_source_seeds": _retrained_source_seeds(results, runs),
            "blind": blind_summary(runs),  # the shuffled-image control, where the results carry one
            # last stage's last-third slope per seed (an evaluation-only row's: its source's, which it carries)
            "convergence": {**row_convergence(runs, plan.flat_slope, batches[-1]), "source": spec.get("from_"),
                            # its (or its source's) end-of-training test gain, where the results keep the answers
                            "test_gain": _kept(gains.get(spec.get("from_") or name))},
            "stage_curves": _stage_curves(runs, spec.get("from_stage1"), batches),
            "curve": _test_curve(runs),  # test family mean at the plan's eval_steps (trained rows)
            "end_gain": gains.get(name),  # final minus the last curve point before it, paired (trained rows)
            "ci_halfwidth": ((boots[name]["delta"][2] - boots[name]["delta"][1]) / 2
                             if boots.get(name) and boots[name].get("delta") else None),
        }
    return rows


def _kept(gain: dict | None) -> dict | None:
    """An ``end_gains`` entry with its paired test, None where there is none (or the answers were not kept)."""
    return None if gain is None or gain.get("missing") else gain


def _train_wall(r: dict) -> float:
    """Training wall time of a result: its stages' (a shared stage 1, ``from_stage1``, belongs to the row that
    trained it), else the one run's, else the time the study measured around training."""
    stages = r.get("stages") or []
    if stages:
        own = stages[1:] if r["row"].get("from_stage1") else stages
        return sum((st.get("train") or {}).get("wall_seconds", 0.0) for st in own)
    return r["train"].get("wall_seconds", r["wall_seconds"]["train_or_reuse"])


def _plan_batches(plan: StudyPlan) -> list[int | None]:
    """The global batch of each stage config of the plan (None where it does not load): the samples per step of
    results written before they recorded their own."""
    from ..train import load_train_config

    out = []
    for path, _ in plan.stages():
        try:
            out.append(load_train_config(path).optim.batch_size)
        except (CompactVLMError, OSError):
            out.append(None)
    return out


def _stage_curves(runs: list[dict], stage1_of: str | None = None,
                  batches: list[int | None] | None = None) -> list[dict]:
    """Per training stage: config, steps, batch, the first seed's validation-loss curve, final loss and
    last-third slope (nats per 1000 samples) per seed; ``shared_with``: the row whose stage 1 it reuses.
    ``batches``: each stage's batch from the plan's configs, for results that do not record theirs."""
    per_run = [(r["seed"], r.get("stages") or [{"stage": 1, "config": None, "train": r["train"]}]) for r in runs]
    out = []
    for k, first in enumerate(per_run[0][1]):
        tr0 = first.get("train") or {}
        plan_batch = batches[k] if batches and k < len(batches) else None
        # results written before run._train_stats read the end event counted logged train events (every 10th
        # step): the validation curve's last step bounds the steps from below
        steps = max(([tr0["steps"]] if tr0.get("steps") else []) + [c[0] for c in tr0.get("val_loss_curve") or []],
                    default=None)
        entry = {"stage": first.get("stage", k + 1), "config": first.get("config"), "steps": steps,
                 "batch_size": tr0.get("batch_size") or plan_batch, "curve": tr0.get("val_loss_curve") or [],
                 "gap_curve": tr0.get("val_gap_shuffled_curve") or [], "final_by_seed": {}, "slopes": {},
                 "precision_by_seed": {},
                 "shared_with": stage1_of if k == 0 else None}
        for seed, stages in per_run:
            tr = (stages[k].get("train") or {}) if k < len(stages) else {}
            entry["precision_by_seed"][seed] = tr.get("precision")  # None: a result from before it was logged
            c = tr.get("val_loss_curve") or []
            if c:
                entry["final_by_seed"][seed] = c[-1][1]
                entry["slopes"][seed] = last_third_slope(c, tr.get("batch_size") or plan_batch)
        out.append(entry)
    return out


def _test_curve(runs: list[dict]) -> list[dict]:
    """The learning-curve points (``eval_steps``) of a row: per step, training samples, the family mean (mean ±
    95% CI over the seeds that have the point) and the seeds; steps no seed has are left out."""
    by_step: dict[int, dict] = {}
    for r in runs:
        for p in r.get("curve") or []:
            if p.get("family_mean") is None:
                continue
            e = by_step.setdefault(p["step"], {"step": p["step"], "samples": p.get("samples"), "values": {}})
            e["values"][r["seed"]] = p["family_mean"]
    out = []
    for step in sorted(by_step):
        e = by_step[step]
        out.append({"step": step, "samples": e["samples"], "family_mean": mean_ci(list(e["values"].values())),
                    "seeds": sorted(e["values"])})
    return out


def _retrained_source_seeds(results: dict[str, list[dict]], runs: list[dict]) -> list[int]:
    """Seeds at which an evaluation-only row evaluated a checkpoint of its source row other than the one behind the
    source's own result (its training curve differs: the source was trained again, e.g. in a fresh checkout, and did
    not reproduce). Such seeds are not paired with the source's result."""
    src = runs[0]["row"].get("from_")
    if src is None:
        return []
    theirs = {r["seed"]: r["train"].get("val_loss_curve") for r in results.get(src, [])}
    return [r["seed"] for r in runs
            if r["seed"] in theirs and r["train"].get("val_loss_curve") != theirs[r["seed"]]]


class _Bootstrapper:
    """Test-image bootstraps (``evaluate.bootstrap``) of rows and of paired row-vs-row differences, cached in
    ``<results_dir>/<row>/`` and recomputed only when any answer (or the number of draws) changes."""

    def __init__(self, plan: StudyPlan, results: dict[str, list[dict]]):
        self.plan, self.results, self._answers = plan, results, None

    def runs(self, name: str) -> dict[int, dict]:
        return {r["seed"]: r for r in self.results.get(name, []) if "predictions" in r}

    def __call__(self, name: str, other: str | None, cache: Path,
                 prt_components: list[str] | None = None) -> dict | None:
        mine, theirs = self.runs(name), (self.runs(other) if other else None)
        seeds = sorted(s for s in mine if theirs is None or s in theirs)
        if not seeds:
            return None
        return self.paired([mine[s]["predictions"] for s in seeds],
                           [theirs[s]["predictions"] for s in seeds] if theirs is not None else None,
                           seeds, cache, prt_components)

    def paired(self, preds: list[dict], refs: list[dict] | None, seeds: list[int], cache: Path,
               prt_components: list[str] | None = None) -> dict:
        """The bootstrap of answer sets ``preds`` (one per seed), paired with ``refs`` (same seeds, same order)
        where given, cached in ``cache`` under a hash of every answer."""
        import hashlib

        from ..evaluate.benchmarks.base import read_jsonl
        from ..evaluate.bootstrap import bootstrap_sceneqa

        what = [preds, refs, self.plan.bootstrap] + ([prt_components] if prt_components is not None else [])
        key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
        if cache.exists():
            c = json.loads(cache.read_text())
            if c.get("key") == key:
                return c["result"]
        if self._answers is None:
            self._answers = read_jsonl(ensure_data(self.plan, progress=False) / "test_answers.jsonl")
        res = bootstrap_sceneqa(self._answers, preds, refs, n=self.plan.bootstrap, seed=0,
                                prt_components=prt_components)
        res["seeds"] = seeds
        cache.write_text(json.dumps({"key": key, "result": res}, indent=1))
        return res


def _bootstraps(plan: StudyPlan, results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row: the bootstrap of its family mean and of its paired difference to the reference and PRT against it
    over the seeds both have, PRT over the families the rows' tables average it over (``prt_families``)."""
    if plan.bootstrap <= 0:
        return {}
    boot = _Bootstrapper(plan, results)
    fams = prt_families(results.get(plan.reference, []))
    out = {}
    for name in results:
        other = None if name == plan.reference else plan.reference
        res = boot(name, other, Path(plan.results_dir) / name / "bootstrap.json", fams)
        if res is not None:
            out[name] = res
    return out


def end_gains(plan: StudyPlan, results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per trained row: did its test score still rise over the last stretch of training? Its final answers minus its
    answers at the last learning-curve point before the end whose answers the results keep (``curve.evaluate_curve``),
    paired by test image over the seeds that have both (the report's cluster bootstrap, cached in
    ``<results_dir>/<row>/curve-step-NNNNNN.bootstrap.json``). ``{"step", "samples", "seeds", "end": [point, lo, hi],
    "delta": [point, lo, hi]}``; ``{"step", "missing": True}`` for a row whose results carry that point's score but
    not its answers (written before they kept them). Rows with no curve are left out."""
    if plan.bootstrap <= 0:
        return {}
    boot = _Bootstrapper(plan, results)
    out = {}
    for name, runs in results.items():
        before = [(r["seed"], p) for r in runs for p in points_before_end(r)]
        with_preds = [(p["step"], p.get("samples")) for _, p in before if "predictions" in p]
        if not with_preds:
            if before:  # scored, but their answers were not kept
                out[name] = {"step": max(p["step"] for _, p in before), "missing": True}
            continue
        step, samples = max(with_preds, key=lambda x: x[0])
        at_step = {seed: p["predictions"] for seed, p in before if p["step"] == step and "predictions" in p}
        pairs = [(r["seed"], r["predictions"], at_step[r["seed"]]) for r in runs
                 if "predictions" in r and r["seed"] in at_step]
        if not pairs:
            continue
        res = boot.paired([a for _, a, _ in pairs], [b for _, _, b in pairs], [s for s, _, _ in pairs],
                          Path(plan.results_dir) / name / f"curve-step-{step:06d}.bootstrap.json")
        out[name] = {"step": step, "samples": samples, "seeds": res["seeds"], "end": res["family_mean"],
                     "delta": res["delta"]}
    return out


def moonshot(plan: StudyPlan, results: dict[str, list[dict]], rows: dict[str, dict]) -> dict | None:
    """Issue 21's moonshot (``plan.moonshot``): every row at its token count, each with its PRT against the reference
    (seeds: mean ± CI, as the rows' tables) and a 95% CI of that PRT over test images (the row's paired cluster
    bootstrap, ``_bootstraps``: over the families PRT averages), then ``pick_moonshot``. None when the plan has no
    moonshot or the reference has no result."""
    from .controls import sees
    from .convergence import pair_flag

    ms = plan.moonshot
    if ms is None or plan.reference not in rows:
        return None
    fams = prt_families(results.get(plan.reference, []))
    cands = []
    for name, s in rows.items():
        if name == plan.reference or s["tokens"] != ms.tokens:
            continue
        b = s.get("bootstrap") if fams != [] else None  # no PRT where the reference sees on no family
        conv = {n: rows[n]["convergence"] for n in (name, plan.reference)}
        common = sorted(set(s["seeds"]) & set(rows[plan.reference]["seeds"]))  # the seeds Δ and PRT pair
        cands.append({"row": name, "seeds": common, "family_mean": s["overall"][0],
                      "delta": (s.get("bootstrap") or {}).get("delta"), "prt": s["prt"], "prt_ci": (b or {}).get("prt"),
                      "sees": sees(s["blind"], ["family_mean"]),
                      "convergence": pair_flag([name, plan.reference], conv, seeds=common or None)})
    return {"tokens": ms.tokens, "target": ms.target, "families": fams, **pick_moonshot(cands, ms.target)}


def pick_moonshot(candidates: list[dict], target: float) -> dict:
    """The candidates ranked by PRT (point estimate, highest first; none last), the best of those that beat their
    blind control, and its verdict against ``target``: ``met`` (the PRT CI over test images lies at or above it),
    ``not met`` (below it), ``not resolved`` (the CI contains it), ``no CI`` (no bootstrap), or None (no candidate
    sees). Each candidate: ``row``, ``prt`` (mean, CI over seeds), ``prt_ci`` ([point, lo, hi] or None), ``sees``."""
    ranked = sorted(candidates, key=lambda c: (c["prt"][0] is None, -(c["prt"][0] or 0.0)))
    best = next((c for c in ranked if c["sees"] is True and c["prt"][0] is not None), None)
    verdict = None
    if best is not None:
        ci = best["prt_ci"]
        verdict = ("no CI" if not ci else "met" if ci[1] >= target else "not met" if ci[2] < target
                   else "not resolved")
    return {"candidates": ranked, "best": best["row"] if best else None, "verdict": verdict}


def compare(plan: StudyPlan, results: dict[str, list[dict]], rows: dict[str, dict],
            pairs: list[list[str]] | None = None) -> list[dict]:
    """Head-to-head comparisons [a, b] (default: the plan's): a - b in family mean over the seeds both have, with
    its test-image bootstrap CI, and the paired difference in final validation loss (both trained)."""
    boot = _Bootstrapper(plan, results)
    out = []
    for a, b in (plan.comparisons if pairs is None else pairs):
        entry = {"a": a, "b": b, "seeds": [], "delta": None, "val_loss_delta": (None, None)}
        if a in rows and b in rows:
            if plan.bootstrap > 0:
                res = boot(a, b, Path(plan.results_dir) / a / f"vs-{b}.bootstrap.json")
                if res is not None:
                    entry["seeds"], entry["delta"] = res["seeds"], res["delta"]
            pairs = _paired_loss_deltas(rows[a], rows[b])
            if pairs:
                entry["val_loss_delta"] = mean_ci(pairs)
                entry["val_loss_seeds"] = len(pairs)
        out.append(entry)
    return out


def _paired_loss_deltas(a: dict, b: dict) -> list[float]:
    """Final validation loss of summarized row ``a`` minus row ``b``'s, at each seed both have."""
    la, lb = a["final_val_loss_by_seed"], b["final_val_loss_by_seed"]
    return [la[k] - lb[k] for k in la if k in lb]
