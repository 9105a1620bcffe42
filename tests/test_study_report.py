"""The study report's figures and claims table, on constructed result files (no training): one fixed colour +
marker per method family that never repeats in a figure, legend outside the axes, chance and blind-control lines
from what the results carry, and the four verdicts wired into the claims table."""

import json
from pathlib import Path

import pytest
import yaml

from compactvlm.errors import CompactVLMError
from compactvlm.study import load_plan, write_report
from compactvlm.study.plan import StudyPlan, StudyRow
from compactvlm.study.plots import STYLES, Reference, _series, figure, series_styles

ROOT = Path(__file__).resolve().parents[1]


def _styles_of(fig) -> dict[str, tuple[str, str]]:
    """label -> (colour, marker) of every data series (errorbar) in the figure's axes."""
    from matplotlib.colors import to_hex
    from matplotlib.container import ErrorbarContainer

    ax = fig.axes[0]
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            line = c.lines[0]
            out[c.get_label()] = (to_hex(line.get_color()), line.get_marker())
    return out


def test_fixed_styles_are_unique():
    pairs = list(STYLES.values())
    assert len(set(pairs)) == len(pairs)
    assert len({c for c, _ in pairs}) == len(pairs)  # not even a colour repeats among the known families
    got = series_styles(list(STYLES) + ["new-a", "new-b (training-free)", "new-c"])
    assert all(got[n] == STYLES[n] for n in STYLES)  # fixed: the same family looks the same in every figure
    assert len(set(got.values())) == len(got)


def _rows_for(plan: StudyPlan) -> dict:
    rows = {}
    for i, r in enumerate(plan.rows):
        rows[r.name] = {"tokens": [5, 9, 13, 16, 21, 32, 64, 128, 256][i % 9], "overall": (20.0 + i % 7, 1.5),
                        "ttft_ms": 300.0 + 10 * i}
    return rows


@pytest.mark.parametrize("which", ["shipped", "unknown methods"])
def test_no_two_series_in_a_figure_share_colour_and_marker(which):
    import matplotlib.pyplot as plt

    if which == "shipped":
        plan = load_plan(ROOT / "configs" / "study" / "sceneqa_cpu.yaml")
    else:  # methods the style table does not know, next to ones it does
        plan = StudyPlan(reference="a", rows=[
            StudyRow(name="a", compressor="mlp2x_gelu"), StudyRow(name="b", compressor="stf"),
            *[StudyRow(name=f"n{i}", compressor=f"newcomp{i}") for i in range(12)],
            StudyRow(name="r", from_="a", reduce="newreduce", budget=4)])
    rows = _rows_for(plan)
    series = {_series(plan, r) for r in plan.rows}
    for key in ("overall", "ttft_ms"):
        fig = figure(plan, rows, key, "y", [Reference(26.0, "chance")], footnote="measured on somewhere")
        try:
            styles = _styles_of(fig)
            assert set(styles) == series
            assert len(set(styles.values())) == len(styles), styles
            for name, pair in styles.items():
                if name in STYLES:
                    assert pair == (STYLES[name][0].lower(), STYLES[name][1])
            fig.canvas.draw()
            ax = fig.axes[0]
            legend = ax.get_legend()
            assert not legend.get_window_extent().overlaps(ax.get_window_extent())  # outside the axes
            labels = [t.get_text() for t in legend.get_texts()]
            assert "chance" in labels  # the horizontal line is in the legend
            assert any("measured on somewhere" in t.get_text() for t in ax.texts)
        finally:
            plt.close(fig)


# ---- the claims table, on constructed result files --------------------------------------------------------------
def _result(name: str, seed: int, comps: dict, blind_sees: bool | None) -> dict:
    fm = sum(comps.values()) / len(comps)
    res = {
        "plan": "tiny", "seed": seed, "vision_tokens": 16 if name == "small" else 64,
        "row": {"name": name, "group": "1", "compressor": "stf" if name == "small" else "mlp2x_gelu", "params": {},
                "train_overrides": [], "from_": None, "budget": None, "reduce": None, "reduce_params": {},
                "note": ""},
        "metrics": {"components": {f"sceneqa/{k}": v for k, v in comps.items()}, "family_mean": fm,
                    "headline": fm, "n": 10, "missing": 0, "split": "test"},
        "cost": {"ttft_ms": 100.0, "flops_llm": 1e9, "flops_vision": 1e8, "flops_total": 1.1e9},
        # flat over its last third: the claims compare models that had finished learning
        "train": {"steps": 10, "sec_per_step": 0.1, "batch_size": 8, "wall_seconds": 1.0,
                  "val_loss_curve": [[0, 2.0], [7, 1.0 + seed / 100], [10, 1.0 + seed / 100]]},
        "wall_seconds": {"eval": 1.0, "train_or_reuse": 1.0},
        "hardware": {"machine": "x86_64", "processor": "testcpu", "cpus": 4, "torch_threads": 2, "device": "cpu"},
    }
    if blind_sees is not None:
        d = 10.0 if blind_sees else 0.5
        lo = 5.0 if blind_sees else -2.0
        res["blind_gap"] = {"controls": {"shuffled": {"families": {}, "family_mean": {
            "a": fm, "b": fm - d, "delta": [d, lo, d + 5.0]}}}, "sees": {"family_mean": blind_sees}}
    return res


def _study(tmp_path: Path, ref_comps: dict, blind: dict[str, bool | None], chance: dict | None) -> Path:
    plan = {"name": "tiny", "data": {"dir": str(tmp_path / "nodata"), "seed": 0, "test": 4},
            "results_dir": str(tmp_path / "results"), "runs_dir": str(tmp_path / "runs"),
            "report": str(tmp_path / "docs" / "results.md"), "reference": "ref", "seeds": [0, 1, 2],
            "bootstrap": 0, "groups": {"1": "all"},
            "rows": [{"name": "ref", "group": "1", "compressor": "mlp2x_gelu"},
                     {"name": "small", "group": "1", "compressor": "stf", "params": {"k": 2}}],
            "claims": [{"claim": "small keeps the accuracy", "kind": "retains", "a": "small"}]}
    for name in ("ref", "small"):
        for seed in (0, 1, 2):
            comps = {k: v + 0.1 * seed for k, v in ref_comps.items()}  # small: the same scores (PRT ~100)
            f = tmp_path / "results" / name / f"seed{seed}.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(_result(name, seed, comps, blind[name])))
    if chance is not None:
        (tmp_path / "results" / "test_baselines.json").write_text(json.dumps(
            {"seed": 0, "sizes": {"test": 4}, "test": {k: {"chance": v} for k, v in chance.items()}}))
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, allow_unicode=True))
    return path


def _claim_row(md: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| small keeps the accuracy |"))


@pytest.mark.parametrize("ref_comps, blind, chance, want", [
    # both see: the rule decides on the numbers (PRT 100 with a tight CI)
    ({"existence": 80.0, "counting": 60.0}, {"ref": True, "small": True}, {"existence": 50.0, "counting": 25.0},
     "| holds |"),
    # no blind control, the reference at chance: untested, and why
    ({"existence": 50.0, "counting": 25.0}, {"ref": None, "small": None}, {"existence": 50.0, "counting": 25.0},
     "| untested: reference at chance |"),
    # no blind control and no chance baseline to tell: untested, no blind control
    ({"existence": 80.0, "counting": 60.0}, {"ref": None, "small": None}, None,
     "| untested: no blind control for the reference in the results |"),
    # the reference sees, the row does not
    ({"existence": 80.0, "counting": 60.0}, {"ref": True, "small": False}, None,
     "| untested: `small` does not beat its blind control |"),
    # the reference is blind by its control
    ({"existence": 80.0, "counting": 60.0}, {"ref": False, "small": True}, None,
     "| untested: reference does not beat its blind control |"),
])
def test_claims_table_verdicts(tmp_path, ref_comps, blind, chance, want):
    plan_path = _study(tmp_path, ref_comps, blind, chance)
    out = write_report(load_plan(plan_path), plan_path)
    md = out.read_text()
    assert "## Claims" in md
    assert _claim_row(md).endswith(want)
    claims = json.loads((out.parent / "results_claims.json").read_text())
    assert claims[0]["verdict"] == want.strip("| ").split(":")[0]
    assert "4 CPU cores (testcpu), 2 torch threads, no GPU (all 6 result files)" in md  # the recorded machine


def test_figure_lines_follow_what_the_results_carry(tmp_path):
    from compactvlm.study.report import _figure_context
    from compactvlm.study.stats import collect, summarize

    def context(blind, chance):
        d = tmp_path / f"{blind['ref']}-{chance is not None}"
        plan = load_plan(_study(d, {"existence": 80.0, "counting": 60.0}, blind, chance))
        results = collect(plan)
        from compactvlm.study.controls import load_baselines

        base, src = load_baselines(plan)
        return _figure_context(plan, results, summarize(plan, results), base, src)

    lines, (acc, ttft) = context({"ref": True, "small": True}, {"existence": 50.0, "counting": 25.0})
    assert [round(r.y, 2) for r in lines] == [37.5, 60.1]  # chance; the reference's shuffled control (70.1 - 10)
    assert "blind control" in lines[1].label and "chance line" in acc and "chance" not in ttft
    lines, (acc, _) = context({"ref": None, "small": None}, None)
    assert lines == [] and "no chance line" in acc and "no blind-control line" in acc


def test_bad_claims_are_clear_errors(tmp_path):
    base = yaml.safe_load((_study(tmp_path, {"existence": 80.0}, {"ref": None, "small": None}, None)).read_text())
    for claim, match in [({"claim": "x", "kind": "beats", "a": "small"}, "has kind 'beats'"),
                         ({"claim": "x", "kind": "retains", "a": "small", "b": "ref"}, "takes no b"),
                         ({"claim": "x", "kind": "greater", "a": "small"}, "must name a second row"),
                         ({"claim": "x", "kind": "greater", "a": "nope", "b": "ref"}, "not in the plan"),
                         ({"claim": "x", "kind": "retains", "a": "small", "families": ["colour"]}, "unknown SceneQA")]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dict(base, claims=[claim])))
        with pytest.raises(CompactVLMError, match=match):
            load_plan(tmp_path / "bad.yaml")


def test_shipped_plan_reads_untested_reference_at_chance():
    """The committed study: no blind controls recorded, reference below chance -> every claim untested, by the rule."""
    from compactvlm.study.controls import load_baselines
    from compactvlm.study.stats import collect, summarize
    from compactvlm.study.verdicts import judge_claims

    plan = load_plan(ROOT / "configs" / "study" / "sceneqa_cpu.yaml")
    plan.results_dir = str(ROOT / plan.results_dir)
    plan.bootstrap = 0  # no data folder needed; the verdict does not get that far
    results = collect(plan)
    if plan.reference not in results:
        pytest.skip("the study results are not in this checkout")
    rows = summarize(plan, results)
    base, _ = load_baselines(plan)
    claims = judge_claims(plan, rows, {}, base)
    assert len(claims) == len(plan.claims) >= 10
    assert {(c["verdict"], c["reason"]) for c in claims} == {("untested", "reference at chance")}


def test_report_flags_comparisons_of_rows_that_have_not_converged(tmp_path):
    """Two-stage results whose last-stage validation loss is flat for the reference and still falling for the
    row: the claim and the precision/convergence sections say so; a flat pair is not flagged."""
    plan_path = _study(tmp_path, {"existence": 80.0, "counting": 60.0}, {"ref": True, "small": True},
                       {"existence": 50.0, "counting": 25.0})
    flat = [[s, 1.0] for s in range(0, 701, 100)]
    falling = [[s, 2.0 - 0.0008 * s] for s in range(0, 701, 100)]  # -0.1 nats per 1000 samples at batch 8
    for name in ("ref", "small"):
        for seed in (0, 1, 2):
            f = tmp_path / "results" / name / f"seed{seed}.json"
            r = json.loads(f.read_text())
            last = {"steps": 700, "batch_size": 8, "val_loss_curve": falling if name == "small" else flat,
                    "wall_seconds": 1.0}
            r["stages"] = [{"stage": 1, "config": "s1.yaml", "train": {"steps": 550, "batch_size": 8,
                                                                       "val_loss_curve": flat, "wall_seconds": 1.0}},
                           {"stage": 2, "config": "s2.yaml", "train": last}]
            r["train"] = last
            r["curve"] = [{"step": 0, "samples": 0, "family_mean": 10.0}, {"step": 700, "samples": 5600,
                                                                          "family_mean": 60.0 + seed}]
            f.write_text(json.dumps(r))
    out = write_report(load_plan(plan_path), plan_path)
    md = out.read_text()
    claims = json.loads((out.parent / "results_claims.json").read_text())
    assert claims[0]["convergence"].startswith("not converged: `small` (last-third slope -0.100")
    assert "`ref`" not in claims[0]["convergence"]
    assert "**not converged: `small`" in _claim_row(md)
    # PRT ~100 with a tight CI would hold; compared while `small` was still learning it is direction only, and why
    assert claims[0]["verdict"] == "direction only"
    assert _claim_row(md).endswith("| direction only: its CI settles it, but before the curves flattened |")
    rows = json.loads((out.parent / "results.json").read_text())
    assert rows["ref"]["convergence"]["flat"] is True and rows["small"]["convergence"]["flat"] is False
    assert "| `small` | 2 (`s2.yaml`) | 700 × 8 |" in md and "s0: -0.100" in md
    assert "| `small` | 0 (0): 10.0 ± 0.0; 700 (5600): 61.0 ± 2.5 |" in md  # test-set learning curve over 3 seeds
    # a flat row alone is not flagged
    from compactvlm.study.convergence import pair_flag

    assert pair_flag(["ref"], {"ref": rows["ref"]["convergence"]}) is None


def test_stage_precision_is_reported_per_seed_when_seeds_differ():
    """Rows trained on a bf16-native machine and on an AVX2 one (precision: auto) say so in the training table."""
    from compactvlm.study.report import _fmt_precision
    from compactvlm.study.stats import _stage_curves

    def run(seed, precision):
        train = {"val_loss_curve": [[0, 1.0], [10, 0.5]], "batch_size": 8, "steps": 10}
        if precision:
            train["precision"] = precision
        return {"seed": seed, "train": train, "stages": [{"stage": 1, "config": "c.yaml", "train": train}]}

    same = _stage_curves([run(0, "fp32"), run(1, "fp32")])[0]
    assert _fmt_precision(same["precision_by_seed"]) == ", fp32"
    mixed = _stage_curves([run(0, None), run(1, "fp32"), run(2, "bf16")])[0]
    assert _fmt_precision(mixed["precision_by_seed"]) == ", s0: ? / s1: fp32 / s2: bf16"
    assert _fmt_precision({}) == _fmt_precision({0: None}) == ""


def test_environment_names_each_machine_and_its_bf16():
    from compactvlm.study.controls import environment

    old = {"machine": "x86_64", "processor": "x86_64", "cpus": 2, "torch_threads": 1, "device": "cpu"}
    avx2 = {**old, "torch_threads": 2, "cpu_capability": "AVX2", "bf16_fast": False}
    amx = {**old, "cpu_capability": "AVX512", "bf16_fast": True}
    text = environment({"ref": [{"hardware": avx2}], "stf": [{"hardware": amx}, {"hardware": old}, {}]})
    assert "2 CPU cores (x86_64 AVX2, no native bf16), 2 torch threads, no GPU (1 of 4 result files)" in text
    assert "2 CPU cores (x86_64 AVX512, native bf16), 1 torch thread, no GPU (1 of 4 result files)" in text
    assert "2 CPU cores (x86_64), 1 torch thread, no GPU (1 of 4 result files)" in text  # recorded before the field
    assert "1 result files without a record" in text
    # the evaluation dtype, named where it is not float32 (recorded since eval_dtype; absent = float32)
    text = environment({"a": [{"hardware": {**amx, "eval_dtype": "bfloat16"}}, {"hardware": {**amx, "eval_dtype": "float32"}}]})
    assert "native bf16), 1 torch thread, no GPU, evaluated in bfloat16 (1 of 2 result files)" in text
    assert "native bf16), 1 torch thread, no GPU (1 of 2 result files)" in text


def test_stage_steps_are_never_below_the_validation_curve():
    """A result written before the end-step fix recorded 150 (logged train events) for 1496 steps: the training
    table shows the validation curve's last step instead."""
    from compactvlm.study.stats import _stage_curves

    stale = {"steps": 150, "batch_size": 32, "val_loss_curve": [[0, 0.02], [750, 0.006], [1496, 0.005]]}
    good = {"steps": 300, "batch_size": 8, "val_loss_curve": [[100, 0.7], [300, 0.6]]}
    runs = [{"seed": 0, "train": good, "stages": [{"stage": 1, "train": stale}, {"stage": 2, "train": good}]}]
    assert [s["steps"] for s in _stage_curves(runs)] == [1496, 300]
    assert _stage_curves([{"seed": 0, "train": {}, "stages": [{"stage": 1, "train": {}}]}])[0]["steps"] is None


def test_prt_averages_over_the_families_the_reference_sees(tmp_path):
    """PRT leaves out the families on which the reference does not beat its blind control: there a ratio compares
    blind answers, and a reference near 0 (OCR 0.8 in study v2) turned DivPrune's 3.2 into 400 %."""
    from compactvlm.study import load_plan
    from compactvlm.study.report import _prt_scope
    from compactvlm.study.stats import collect, prt_families, summarize

    path = _study(tmp_path, {"attribute": 80.0, "ocr": 0.8}, {"ref": True, "small": True}, None)
    for name, comps in (("ref", {"attribute": 80.0, "ocr": 0.8}), ("small", {"attribute": 72.0, "ocr": 3.2})):
        for seed in (0, 1, 2):
            f = tmp_path / "results" / name / f"seed{seed}.json"
            r = _result(name, seed, comps, True)
            r["blind_gap"]["sees"].update(attribute=True, ocr=False)
            f.write_text(json.dumps(r))
    plan = load_plan(path)
    results = collect(plan)
    assert prt_families(results["ref"]) == ["sceneqa/attribute"]
    assert summarize(plan, results)["small"]["prt"][0] == pytest.approx(90.0)  # 72 / 80, not (90 + 400) / 2
    assert "(attribute)" in _prt_scope(plan, results)
    # one seed that does not see on a family takes it out; a reference that sees on none gets no PRT
    r = json.loads((tmp_path / "results" / "ref" / "seed1.json").read_text())
    r["blind_gap"]["sees"]["attribute"] = False
    (tmp_path / "results" / "ref" / "seed1.json").write_text(json.dumps(r))
    results = collect(plan)
    assert prt_families(results["ref"]) == []
    assert summarize(plan, results)["small"]["prt"] == (None, None)
    assert "not reported" in _prt_scope(plan, results)
    from compactvlm.study.verdicts import UNTESTED, judge_claims

    rows = summarize(plan, results)
    [claim] = judge_claims(plan, rows, {}, None)
    assert claim["verdict"] == UNTESTED and "no PRT" in claim["reason"]
    # results whose control has no per-family verdicts (older files): every family, as before
    assert prt_families([_result("ref", 0, {"attribute": 80.0}, True)]) is None


def test_prt_pairs_each_seed_with_the_references_same_seed(tmp_path):
    """A row evaluated on the reference's seed-1 model is judged against seed 1's scores, not the mean of seeds it
    never ran (study v2: FastV-64 at seed 1 read 77.7 % against the two seeds' mean, 82.5 % against its own model);
    a row with no seed in common with the reference gets no PRT and an untested claim that says why."""
    from compactvlm.study import load_plan
    from compactvlm.study.stats import collect, summarize
    from compactvlm.study.verdicts import UNTESTED, judge_claims

    path = _study(tmp_path, {"attribute": 80.0}, {"ref": True, "small": True}, None)
    res = tmp_path / "results"
    for seed, score in ((0, 80.0), (1, 40.0), (2, 60.0)):
        (res / "ref" / f"seed{seed}.json").write_text(json.dumps(_result("ref", seed, {"attribute": score}, True)))
    for seed in (0, 2):
        (res / "small" / f"seed{seed}.json").unlink()
    (res / "small" / "seed1.json").write_text(json.dumps(_result("small", 1, {"attribute": 36.0}, True)))
    plan = load_plan(path)
    rows = summarize(plan, collect(plan))
    assert rows["small"]["prt"][0] == pytest.approx(90.0)  # 36 / 40; against the mean 60 it would read 60
    assert rows["small"]["prt_seeds"] == [1]
    # the reference without the row's seed: nothing to pair
    (res / "ref" / "seed1.json").unlink()
    rows = summarize(plan, collect(plan))
    assert rows["small"]["prt"] == (None, None) and rows["small"]["prt_seeds"] == []
    [claim] = judge_claims(plan, rows, {}, None)
    assert claim["verdict"] == UNTESTED
    assert claim["reason"] == "no seed in common: `small` has seed 1; `ref` has seed 0, 2"
    # the head-to-head table says why a pair has no Δ instead of a bare "–"
    spec = yaml.safe_load(path.read_text())
    spec["comparisons"] = [["small", "ref"]]
    path.write_text(yaml.safe_dump(spec))
    md = write_report(load_plan(path), path).read_text()
    assert "| `small` | `ref` | 16 / 64 | 36.0 / 70.0 | no seed in common (a: 1; b: 0, 2) |" in md


def test_moonshot_picks_the_best_row_that_sees_and_judges_its_ci_against_the_target():
    """Issue 21's moonshot: rows ranked by PRT; a row that does not beat its blind control is never "best" however
    high its PRT; the verdict reads the test-image CI against the target (met / not met / not resolved)."""
    from compactvlm.study.stats import pick_moonshot

    def cand(row, prt, lo, hi, sees=True):
        return {"row": row, "prt": (prt, None), "prt_ci": [prt, lo, hi], "sees": sees}

    blind = cand("blind-16", 101.0, 99.5, 102.0, sees=False)
    got = pick_moonshot([cand("a", 90.0, 85.0, 95.0), blind, cand("b", 98.0, 96.0, 100.5)], 99.0)
    assert [c["row"] for c in got["candidates"]] == ["blind-16", "b", "a"]
    assert got["best"] == "b" and got["verdict"] == "not resolved"
    assert pick_moonshot([cand("b", 99.6, 99.0, 100.2)], 99.0)["verdict"] == "met"
    assert pick_moonshot([cand("a", 90.0, 85.0, 95.0)], 99.0)["verdict"] == "not met"
    nothing = pick_moonshot([blind, {"row": "c", "prt": (None, None), "prt_ci": None, "sees": True}], 99.0)
    assert nothing["best"] is None and nothing["verdict"] is None
    assert pick_moonshot([{**cand("a", 95.0, 0, 0), "prt_ci": None}], 99.0)["verdict"] == "no CI"


def test_moonshot_needs_a_token_count_and_a_target_in_range(tmp_path):
    path = _study(tmp_path, {"attribute": 80.0}, {"ref": True, "small": True}, None)
    spec = yaml.safe_load(path.read_text())
    for bad in ({"tokens": 0}, {"target": 120}):
        spec["moonshot"] = bad
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(CompactVLMError, match="moonshot"):
            load_plan(path)


def test_moonshot_section_bootstraps_prt_over_the_families_the_reference_sees(tmp_path):
    """End to end from result files with answers: the moonshot's PRT CI comes from the test-image bootstrap over
    the families the reference sees (attribute here, not existence), and the report names the best row."""
    path = _study(tmp_path, {"attribute": 80.0}, {"ref": True, "small": True}, None)
    spec = yaml.safe_load(path.read_text())
    spec.update(bootstrap=100, seeds=[0], moonshot={"tokens": 16, "target": 99})
    path.write_text(yaml.safe_dump(spec))
    data = Path(spec["data"]["dir"])
    data.mkdir(parents=True)
    (data / "manifest.json").write_text("{}")  # a built SceneQA folder, as far as the report is concerned
    answers, ref_preds, small_preds = [], {}, {}
    for i in range(40):
        img = f"images/test/{i:06d}.jpg"
        for fam, truth in (("attribute", "red"), ("existence", "yes")):
            qid = f"q{i}-{fam}"
            answers.append({"question_id": qid, "image": img, "family": fam, "subset": "random", "answer": truth,
                            "answers": [truth]})
            ref_preds[qid] = truth
            # the row: attribute right on half the images, existence always wrong
            small_preds[qid] = truth if fam == "attribute" and i % 2 else "no" if fam == "existence" else "blue"
    (data / "test_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    for name, preds in (("ref", ref_preds), ("small", small_preds)):
        for f in (tmp_path / "results" / name).glob("seed*.json"):
            f.unlink()
        r = _result(name, 0, {"attribute": 100.0 if name == "ref" else 50.0,
                              "existence": 100.0 if name == "ref" else 0.0}, True)
        r["blind_gap"]["sees"].update(attribute=True, existence=False)
        r["predictions"] = preds
        (tmp_path / "results" / name / "seed0.json").write_text(json.dumps(r))
    out = write_report(load_plan(path), path)
    shot = json.loads((out.parent / "results_moonshot.json").read_text())
    assert shot["families"] == ["sceneqa/attribute"] and shot["best"] == "small"
    [c] = shot["candidates"]
    assert c["prt"][0] == pytest.approx(50.0) and c["prt_ci"][0] == pytest.approx(50.0)  # existence left out
    assert c["prt_ci"][1] < 50.0 < c["prt_ci"][2] < 99.0 and shot["verdict"] == "not met"
    md = out.read_text()
    assert "## Moonshot: the best row at 16 tokens (1/4)" in md
    assert "**Best: `small`, PRT 50.0 %" in md and "target ≥ 99 % not met" in md
    # one bootstrap per row: its Δ and this PRT CI (over the families the reference sees) come from the same draws
    assert not (tmp_path / "results" / "small" / "bootstrap_prt.json").exists()
    boot = json.loads((tmp_path / "results" / "small" / "bootstrap.json").read_text())["result"]
    assert boot["prt"] == c["prt_ci"] and boot["delta"] == c["delta"]


def test_evaluation_only_rows_report_no_training_of_their_own(tmp_path):
    """A row that evaluates another row's checkpoint (``from``) carries its source's training record; the report's
    train s/step and final val loss columns must not show the source's numbers as the row's (study v2-900's 18
    training-free rows all read the reference's 8.19 s/step)."""
    from compactvlm.study import load_plan
    from compactvlm.study.stats import collect, summarize

    path = _study(tmp_path, {"attribute": 80.0}, {"ref": True, "small": True}, None)
    for seed in (0, 1, 2):
        f = tmp_path / "results" / "small" / f"seed{seed}.json"
        r = json.loads(f.read_text())
        r["row"].update(compressor=None, from_="ref", reduce="random", budget=16)
        f.write_text(json.dumps(r))
    plan = load_plan(path)
    rows = summarize(plan, collect(plan))
    assert rows["ref"]["sec_per_step"] == pytest.approx(0.1) and rows["ref"]["final_val_loss"][0] is not None
    assert rows["small"]["sec_per_step"] is None and rows["small"]["final_val_loss"] == (None, None)


def test_end_gain_says_when_a_result_did_not_keep_its_curve_answers():
    """Results written before curve points kept their answers: the gain is not made up from the scores alone, the
    cell says why it is missing; a row with one point (the end) has no gain at all."""
    from types import SimpleNamespace

    from compactvlm.study.report import _fmt_end_gain
    from compactvlm.study.stats import end_gains

    plan = SimpleNamespace(bootstrap=100, results_dir="nowhere")
    old = {"seed": 1, "predictions": {"q": "yes"}, "curve": [
        {"step": 300, "family_mean": 30.0}, {"step": 600, "family_mean": 33.0}, {"step": 900, "family_mean": 35.0}]}
    one = {"seed": 1, "predictions": {"q": "yes"}, "curve": [{"step": 900, "family_mean": 35.0}]}
    # a curve that does not list the end (eval_steps [300, 600] of a 900-step stage)
    short = {"seed": 1, "predictions": {"q": "yes"}, "train": {"steps": 900}, "curve": old["curve"][:2]}
    gains = end_gains(plan, {"old": [old], "one": [one], "short": [short], "evalonly": [{"seed": 1, "predictions": {}}]})
    assert gains == {"old": {"step": 600, "missing": True}, "short": {"step": 600, "missing": True}}
    assert _fmt_end_gain(gains["old"]) == "– (step 600's answers not kept: a result from before they were)"
    assert _fmt_end_gain(None) == "–"
    cell = _fmt_end_gain({"step": 600, "seeds": [0, 1], "delta": [2.5, 0.3, 4.6]})
    assert cell == "+2.5 [+0.3, +4.6] vs step 600, seeds 0, 1 **still rising**"
    assert _fmt_end_gain({"step": 600, "seeds": [1], "delta": [-2.0, -3.0, -1.0]}).endswith("seed 1 (fell)")
    assert _fmt_end_gain({"step": 600, "seeds": [1], "delta": [1.0, -1.0, 3.0]}).endswith("vs step 600, seed 1")


def test_points_before_end_is_the_curve_without_its_end_or_unscored_points():
    """The points whose answers ``attach_predictions`` adds and ``end_gains`` compares with: scored, before the end
    of training (the stage's steps, else the curve's last step)."""
    from compactvlm.study.stats import points_before_end

    curve = [{"step": 0, "family_mean": 10.0}, {"step": 300, "family_mean": None, "missing": "no snapshot"},
             {"step": 600, "family_mean": 33.0}, {"step": 900, "family_mean": 35.0}]
    assert [p["step"] for p in points_before_end({"curve": curve})] == [0, 600]
    assert [p["step"] for p in points_before_end({"curve": curve, "train": {"steps": 700}})] == [0, 600]
    assert [p["step"] for p in points_before_end({"curve": curve, "train": {"steps": 600}})] == [0]
    assert points_before_end({"predictions": {}}) == []
