"""`compactvlm study run|report` on tiny random models and a tiny SceneQA: one result JSON per (row, seed), rows
that exist are skipped, evaluation-only rows reuse the trained checkpoint, the report is built from the files."""

import json
from pathlib import Path

import pytest
import yaml

from compactvlm.cli import main
from compactvlm.errors import CompactVLMError
from compactvlm.study import load_plan, mean_ci
from compactvlm.train.fixtures import write_tiny_models


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    enc, llm = write_tiny_models(root / "models")
    train_cfg = {
        "model": {"encoder": str(enc), "llm": str(llm), "image_size": 32, "system_prompt": ""},
        "data": {"train": "unused.json", "max_samples": 8, "max_val_samples": 4},
        "stage": {"modules": {"encoder": "frozen", "compressor": "full", "llm": "frozen"}},
        "optim": {"lr": 1e-3, "batch_size": 4, "per_device_batch_size": 4, "epochs": 1},
        "eval": {"every_steps": 1}, "logging": {"progress": False}, "device": "cpu", "cache_features": True,
    }
    (root / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    plan = {
        "name": "tiny", "data": {"dir": str(root / "data"), "seed": 0, "caption": 0, "train": 8, "val": 4, "test": 4},
        "train_config": str(root / "train.yaml"), "runs_dir": str(root / "runs"),
        "results_dir": str(root / "results"), "report": str(root / "docs" / "results.md"), "reference": "full",
        "seeds": [0], "eval_batch_size": 4, "ttft_repeats": 2, "threads": 1, "notes": str(root / "notes.md"),
        "groups": {"1": "reference", "2": "compressed"},
        "rows": [
            {"name": "full", "group": "1", "compressor": "mlp2x_gelu"},
            {"name": "stf", "group": "2", "compressor": "stf", "params": {"k": 2, "E": 1}},
            {"name": "rand-4", "group": "2", "from": "full", "reduce": "random", "budget": 4},
            {"name": "fastv-4", "group": "2", "from": "full", "reduce": "fastv", "budget": 4, "reduce_params": {"k": 1}},
            {"name": "objects", "group": "2", "compressor": "objects", "params": {"pool_grid": 2, "max_objects": 4}},
            # evaluation-only: the same weights with SceneQA's own object masks (the `given` source), 1 + 4 + 2 tokens
            {"name": "objects-given", "group": "2", "from": "objects", "params": {"mask_source": "given"}, "budget": 7},
        ],
        "comparisons": [["stf", "full"], ["stf", "rand-4"], ["objects", "stf"]],
    }
    (root / "notes.md").write_text("Hand-written reading: tiny random models learn nothing.")
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_study_run_and_report(plan_file, capsys):
    root = plan_file.parent
    assert main(["study", "run", "--plan", str(plan_file), "--quiet"]) == 0
    res = {n: json.loads((root / "results" / n / "seed0.json").read_text()) for n in ("full", "stf", "rand-4")}
    # 8x8 patch grid of the tiny encoder: all 64 tokens, STF k=2 -> 16, random drop -> exactly the budget
    assert [res[n]["vision_tokens"] for n in ("full", "stf", "rand-4")] == [64, 16, 4]
    assert res["rand-4"]["metrics"]["n"] > 0 and res["rand-4"]["metrics"]["missing"] == 0
    # the evaluation-only row used the reference's checkpoint; no second training run exists
    assert res["rand-4"]["row"]["from_"] == "full" and not (root / "runs" / "rand-4").exists()
    given = json.loads((root / "results" / "objects-given" / "seed0.json").read_text())
    assert given["vision_tokens"] == 7 and given["metrics"]["missing"] == 0 and given["cost"]["flops_vision"] > 0
    for r in res.values():
        c = r["cost"]
        assert c["ttft_ms"] > 0 and 0 < c["flops_vision"] < c["flops_total"]
    # fewer tokens reaching the LLM -> fewer LLM prefill FLOPs
    assert res["full"]["cost"]["flops_llm"] > res["stf"]["cost"]["flops_llm"] > res["rand-4"]["cost"]["flops_llm"]
    assert res["stf"]["train"]["steps"] == 2 and len(res["stf"]["train"]["val_loss_curve"]) >= 2

    stamp = (root / "results" / "stf" / "seed0.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["study", "run", "--plan", str(plan_file), "--rows", "stf", "--quiet"]) == 0
    assert "already done" in capsys.readouterr().out
    assert (root / "results" / "stf" / "seed0.json").stat().st_mtime_ns == stamp
    # --force re-measures the cost; with the checkpoint and every prediction reused, the run's wall time is kept
    before = json.loads((root / "results" / "stf" / "seed0.json").read_text())
    assert before["hardware"]["torch_threads"] == 1  # the plan's threads
    assert before["hardware"]["cpu_capability"] and isinstance(before["hardware"]["bf16_fast"], bool)
    assert main(["study", "run", "--plan", str(plan_file), "--rows", "stf", "--force", "--threads", "2", "--quiet"]) == 0
    after = json.loads((root / "results" / "stf" / "seed0.json").read_text())
    assert after["wall_seconds"] == before["wall_seconds"] and after["finished"] >= before["finished"]
    assert after["metrics"] == before["metrics"]
    assert after["hardware"]["torch_threads"] == 2  # --threads overrides the plan's
    # --force on a finished row whose model is gone trains it again, and says so before it does
    from compactvlm.study.plan import stage_dirs

    plan = load_plan(plan_file)
    final = stage_dirs(plan, plan.row("stf"), 0)[-1] / "final"
    assert (final / "compactvlm.json").exists()
    final.rename(final.with_name("final.kept"))
    capsys.readouterr()
    try:
        assert main(["study", "run", "--plan", str(plan_file), "--rows", "stf", "--force", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert f"stf seed 0: --force with its model not on disk ({final} is missing): it is trained again" in out
        assert (final / "compactvlm.json").exists()  # trained again
    finally:
        import shutil

        shutil.rmtree(final.with_name("final.kept"), ignore_errors=True)
    capsys.readouterr()
    assert main(["study", "run", "--plan", str(plan_file), "--rows", "stf", "--force", "--quiet"]) == 0
    assert "not on disk" not in capsys.readouterr().out  # its model is there: a re-score, no warning

    # a row whose answers were written by earlier processes (a session ended before its result file): the wall
    # time counts their answering time (each answer line's `seconds`), not only this process's
    ev = root / "runs" / "eval" / "rand-4"
    for folder in (ev / "s0", ev / "s0.shuffled"):
        lines = [json.loads(l) for l in (folder / "predictions.jsonl").read_text().splitlines()]
        (folder / "predictions.jsonl").write_text("".join(json.dumps({**l, "seconds": 100.0}) + "\n" for l in lines))
        (folder / "metrics.json").unlink()
    n = len(lines)
    (root / "results" / "rand-4" / "seed0.json").unlink()
    assert main(["study", "run", "--plan", str(plan_file), "--rows", "rand-4", "--quiet"]) == 0
    wall = json.loads((root / "results" / "rand-4" / "seed0.json").read_text())["wall_seconds"]
    assert 100.0 * n <= wall["eval"] < 100.0 * n + 60 and 100.0 * n <= wall["controls"] < 100.0 * n + 60

    assert main(["study", "report", "--plan", str(plan_file)]) == 0
    md = (root / "docs" / "results.md").read_text()
    assert "`full`" in md and "`stf`" in md and "`rand-4`" in md and "study run --plan" in md
    assert "## Reading these results\n\nHand-written reading: tiny random models learn nothing." in md
    assert "| `fastv-4` | 1 | 64→4 |" in md  # all 64 tokens in the prompt, 4 after LLM layer 1
    fastv = json.loads((root / "results" / "fastv-4" / "seed0.json").read_text())
    # its LLM FLOPs lie between the full-token model's and a plain 4-token model's
    assert res["rand-4"]["cost"]["flops_llm"] < fastv["cost"]["flops_llm"] < res["full"]["cost"]["flops_llm"]
    assert fastv["equivalent_tokens_note"].startswith("fastv keeps all 64 vision tokens in the prompt; its first 1 LLM")
    assert json.loads((root / "results" / "rand-4" / "seed0.json").read_text())["equivalent_tokens_note"] is None
    summary = json.loads((root / "docs" / "results.json").read_text())
    # PRT averages over the families on which the reference beats its blind control (none, for tiny random models:
    # then no PRT at all); where there are some, the reference retains all of itself
    from compactvlm.study.stats import prt_families

    seeing = prt_families([json.loads((root / "results" / "full" / "seed0.json").read_text())])
    assert seeing is not None  # the results carry per-family blind verdicts
    if seeing:
        assert summary["full"]["prt"][0] == pytest.approx(100.0)
    else:
        assert summary["full"]["prt"][0] is None and "PRT" in md and "not reported" in md
    # results carry every answer, and the report re-scores them: a paired test-image bootstrap against the reference
    n_q = res["full"]["metrics"]["n"]
    assert all(len(r["predictions"]) == n_q for r in res.values())
    assert "Δ vs ref [95% CI, test images]" in md and "final val loss" in md
    boot = summary["stf"]["bootstrap"]
    assert boot["delta"][1] <= boot["delta"][0] <= boot["delta"][2] and boot["clusters"] == 4
    assert summary["full"]["bootstrap"].get("delta") is None  # the reference is not compared with itself
    assert (root / "results" / "stf" / "bootstrap.json").exists()  # cached; recomputed only when answers change
    # the report rewrites its own file, but not another plan's report nor a hand-written file, unless forced
    assert main(["study", "report", "--plan", str(plan_file)]) == 0
    other = root / "docs" / "other.md"
    for text, why in (("# Results: another-plan\n\nits tables", "another plan ('another-plan')"),
                      ("my own notes\n", "did not write")):
        other.write_text(text)
        capsys.readouterr()
        assert main(["study", "report", "--plan", str(plan_file), "--out", str(other)]) == 2
        assert why in capsys.readouterr().err and other.read_text() == text
    assert not (root / "docs" / "other.json").exists()  # nothing beside it was written either
    assert main(["study", "report", "--plan", str(plan_file), "--out", str(other), "--force"]) == 0
    assert other.read_text().startswith("# Results: ")
    # head-to-head contrasts: a - b paired by seed, the same numbers as the per-row bootstraps where b is the reference
    comps = json.loads((root / "docs" / "results_comparisons.json").read_text())
    assert [(c["a"], c["b"]) for c in comps] == [("stf", "full"), ("stf", "rand-4"), ("objects", "stf")]
    assert comps[0]["delta"] == pytest.approx(boot["delta"]) and comps[0]["seeds"] == [0]
    fam = {n: json.loads((root / "results" / n / "seed0.json").read_text())["metrics"]["family_mean"]
           for n in ("stf", "rand-4", "objects")}
    assert comps[1]["delta"][0] == pytest.approx(fam["stf"] - fam["rand-4"])
    assert comps[1]["val_loss_delta"] == [None, None]  # rand-4 is evaluation-only: no loss of its own
    loss = {n: summary[n]["final_val_loss_by_seed"]["0"] for n in ("objects", "stf")}
    assert comps[2]["val_loss_delta"][0] == pytest.approx(loss["objects"] - loss["stf"])
    assert "## Head-to-head comparisons" in md and "| `stf` | `rand-4` | 16 / 4 |" in md
    assert (root / "results" / "stf" / "vs-rand-4.bootstrap.json").exists()
    assert summary["rand-4"]["retrained_source_seeds"] == []  # evaluated the very checkpoint behind full's result
    # the run copied the data build's chance baseline next to the results; the report draws it from there
    baselines = json.loads((root / "results" / "test_baselines.json").read_text())
    assert baselines["test"]["existence"]["chance"] == 50.0 and baselines["sizes"]["test"] == 4
    assert "chance line: the test split's chance baseline" in md and "test_baselines.json" in md
    assert "## Claims" not in md  # no claims in this plan
    # every (row, seed) carries its shuffled-image blind control, in the shape the report's claims read
    for n, r in res.items():
        gap = r["blind_gap"]["controls"]["shuffled"]
        assert gap["family_mean"]["a"] == pytest.approx(r["metrics"]["family_mean"])
        assert gap["family_mean"]["b"] == pytest.approx(r["controls"]["shuffled"]["family_mean"])
        d, lo, hi = gap["family_mean"]["delta"]
        assert lo <= d <= hi and "family_mean" in r["blind_gap"]["sees"]
        assert len(r["control_predictions"]["shuffled"]) == n_q
        assert json.loads((root / "runs" / "eval" / n / "s0.shuffled" / "run.json").read_text())["control"] == "shuffled"
    assert summary["stf"]["blind"]["seeds"] == [0] and summary["stf"]["blind"]["all_seeds"]
    assert "blind-control line: full answering with every image shuffled" in md
    assert "real − shuffled (seeds CI > 0)" in md
    # the CI half-width of each row's difference to the reference, against the plan's target
    assert "## Precision of the comparisons with the reference" in md and "≤ 2" in md
    assert summary["stf"]["ci_halfwidth"] == pytest.approx((boot["delta"][2] - boot["delta"][1]) / 2)
    assert (root / "docs" / "results_accuracy_vs_tokens.png").stat().st_size > 1000
    assert (root / "docs" / "results_ttft_vs_tokens.png").stat().st_size > 1000
    # the trained rows' curves are drawn, not only tabulated
    assert (root / "docs" / "results_learning_curves.png").stat().st_size > 1000
    assert "![learning curves](results_learning_curves.png)" in (root / "docs" / "results.md").read_text()


def test_report_attaches_answers_of_older_results_only_when_they_rescore_the_same(plan_file, capsys):
    root = plan_file.parent
    if not (root / "results" / "rand-4" / "seed0.json").exists():
        assert main(["study", "run", "--plan", str(plan_file), "--rows", "full,rand-4", "--quiet"]) == 0
    f = root / "results" / "rand-4" / "seed0.json"
    res = json.loads(f.read_text())
    answers = res.pop("predictions")
    f.write_text(json.dumps(res))  # a result written before results carried their answers
    capsys.readouterr()
    assert main(["study", "report", "--plan", str(plan_file)]) == 0
    assert "attached the answers of 1 earlier result file" in capsys.readouterr().out
    assert json.loads(f.read_text())["predictions"] == answers
    # answers in the evaluation folder that do not give the stored score are refused, and nothing is written
    res["metrics"]["family_mean"] += 1.0
    f.write_text(json.dumps(res))
    assert main(["study", "report", "--plan", str(plan_file)]) == 2
    assert "are not from the same run" in capsys.readouterr().err
    assert "predictions" not in json.loads(f.read_text())


def test_bad_plans_are_clear_errors(tmp_path, plan_file):
    plan = yaml.safe_load(plan_file.read_text())
    bad = dict(plan, rows=plan["rows"] + [{"name": "both", "compressor": "stf", "from": "full"}])
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(CompactVLMError, match="exactly one of"):
        load_plan(tmp_path / "p.yaml")
    for comparison in (["stf", "nosuchrow"], ["stf", "stf"], ["stf"]):
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(dict(plan, comparisons=[comparison])))
        with pytest.raises(CompactVLMError, match="must name two different rows"):
            load_plan(tmp_path / "p.yaml")
    bad = dict(plan, reference="nope")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(CompactVLMError, match="reference 'nope'"):
        load_plan(tmp_path / "p.yaml")
    assert main(["study", "run", "--plan", str(plan_file), "--rows", "nosuchrow"]) == 2
    assert main(["study", "run", "--plan", str(plan_file), "--threads", "0"]) == 2
    import torch

    if not torch.cuda.is_available():
        assert main(["study", "run", "--plan", str(plan_file), "--device", "cuda"]) == 2


def test_mean_ci():
    m, ci = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and ci == pytest.approx(4.303 * 1.0 / 3 ** 0.5, rel=1e-3)
    assert mean_ci([5.0]) == (5.0, None)


def test_shipped_study_plan_loads():
    plan = load_plan(Path(__file__).resolve().parents[1] / "configs" / "study" / "sceneqa_cpu.yaml")
    assert plan.reference == "full-mlp2x" and len(plan.rows) >= 20 and set(plan.groups) >= {"1", "2", "3", "4"}


def test_export_and_demo_on_exported_weights(plan_file, tmp_path, capsys, monkeypatch):
    """`study export` writes loadable half-precision copies with provenance; `demo --checkpoint-dir` evaluates
    them side by side (the tiny plan's rows stand in for the shipped full-mlp2x / stf-k2e1)."""
    root = plan_file.parent
    assert main(["study", "run", "--plan", str(plan_file), "--rows", "full,stf", "--quiet"]) == 0
    out = tmp_path / "assets"
    assert main(["study", "export", "--plan", str(plan_file), "--rows", "full,stf", "--out", str(out)]) == 0
    prov = json.loads((out / "stf" / "provenance.json").read_text())
    assert prov["row"] == "stf" and prov["study_result"]["vision_tokens"] == 16
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(out / "stf" / "compressor.safetensors")).values()} == {__import__("torch").float16}
    assert main(["study", "export", "--plan", str(plan_file), "--rows", "rand-4", "--out", str(out)]) == 2

    import compactvlm.commands.demo as demo

    (out / "full-mlp2x").symlink_to(out / "full")
    (out / "stf-k2e1").symlink_to(out / "stf")
    capsys.readouterr()
    assert main(["demo", "--checkpoint-dir", str(out), "--images", "3", "--out", str(tmp_path / "work"),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "PRT vs full tokens" in text and "TTFT ms" in text
    assert "interleaved rounds, median of per-round ratios" in text and "FLOPs-ideal" in text
    assert "chance / majority per family (MME: its total" in text and "existence 50.0 / " in text  # the build's
    row = next(l for l in text.splitlines() if l.startswith("vision tokens"))
    assert row.split()[-2:] == ["64", "16"]
    saved = json.loads((tmp_path / "work" / "demo_results.json").read_text())
    assert saved["full-mlp2x"]["cost"]["flops_llm"] > saved["stf-k2e1"]["cost"]["flops_llm"]
    # a second demo into the same folder answers afresh: answers left there by an earlier run are not reused
    preds = tmp_path / "work" / "eval" / "stf-k2e1-float32" / "predictions.jsonl"
    stale = [dict(json.loads(l), text="stale") for l in preds.read_text().splitlines()]
    preds.write_text("".join(json.dumps(r) + "\n" for r in stale))
    assert main(["demo", "--checkpoint-dir", str(out), "--images", "3", "--out", str(tmp_path / "work"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert "stale" not in preds.read_text()
    again = json.loads((tmp_path / "work" / "demo_results.json").read_text())
    assert again["stf-k2e1"]["components"] == saved["stf-k2e1"]["components"]
    assert main(["demo", "--checkpoint-dir", str(tmp_path / "nowhere"), "--quiet"]) == 2


def test_train_stats_count_each_step_once(tmp_path):
    from compactvlm.study import _train_stats

    def ev(kind, step, t, **kw):
        return json.dumps({"event": kind, "step": step, "time": t, **kw})

    lines = [ev("start", 0, 0.0, resumed_from=None)]  # an attempt abandoned at step 2 (no checkpoint)
    lines += [ev("train", s, 10.0 * s, sec_per_step=10.0, tokens_per_sec=1.0) for s in (1, 2)]
    lines += [ev("eval", 0, 1.0, val_loss=9.0)]
    lines += [ev("start", 0, 0.0, resumed_from=None), ev("eval", 0, 1.0, val_loss=5.0)]  # the run that counts
    lines += [ev("train", s, 2.0 * s, sec_per_step=2.0, tokens_per_sec=3.0) for s in (1, 2, 3, 4)]
    lines += [ev("eval", 4, 9.0, val_loss=2.0)]  # ... killed after step 4, resumed from its step-3 checkpoint
    lines += [ev("start", 3, 0.0, resumed_from="ckpt/step3")]
    lines += [ev("train", s, 4.0 * (s - 3), sec_per_step=4.0, tokens_per_sec=3.0) for s in (4, 5)]
    lines += [ev("eval", 5, 9.0, val_loss=1.5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    t = _train_stats(tmp_path)
    assert t["steps"] == 5  # steps 1-3 of the counted run, then 4-5 after the resume
    assert t["val_loss_curve"] == [[0, 5.0], [5, 1.5]]
    assert t["sec_per_step"] == 4.0 and t["wall_seconds"] == 9.0 + 9.0


def test_train_stats_steps_with_sparse_logging(tmp_path):
    """With logging.every_steps=10 a 25-step run logs two train events; it still took 25 steps."""
    from compactvlm.study import _train_stats

    lines = [{"event": "start", "step": 0, "time": 0.0, "resumed_from": None}]
    lines += [{"event": "train", "step": s, "time": float(s), "sec_per_step": 1.0, "tokens_per_sec": 1.0}
              for s in (10, 20)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    assert _train_stats(tmp_path)["steps"] == 20  # killed after step 20's log: the last logged step
    lines.append({"event": "end", "step": 25, "time": 25.0, "final": "final"})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    assert _train_stats(tmp_path)["steps"] == 25


def test_report_flags_evaluation_rows_of_a_retrained_source(plan_file, tmp_path):
    """An evaluation-only row whose source checkpoint was trained again (and came out different) is flagged."""
    root = plan_file.parent
    if not (root / "results" / "fastv-4" / "seed0.json").exists():
        assert main(["study", "run", "--plan", str(plan_file), "--rows", "full,fastv-4", "--quiet"]) == 0
    plan = yaml.safe_load(plan_file.read_text())
    res = tmp_path / "results"
    for name in ("full", "fastv-4"):
        (res / name).mkdir(parents=True)
        (res / name / "seed0.json").write_text((root / "results" / name / "seed0.json").read_text())
    f = res / "fastv-4" / "seed0.json"
    r = json.loads(f.read_text())
    r["train"]["val_loss_curve"][-1][1] += 0.05  # as if it had evaluated another training of `full`
    f.write_text(json.dumps(r))
    plan.update(rows=[row for row in plan["rows"] if row["name"] in ("full", "fastv-4")], results_dir=str(res),
                report=str(tmp_path / "docs" / "results.md"), comparisons=[], bootstrap=0)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["study", "report", "--plan", str(tmp_path / "plan.yaml")]) == 0
    summary = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert summary["fastv-4"]["retrained_source_seeds"] == [0]
    assert "seed(s) 0 evaluate a retrained `full` checkpoint" in (tmp_path / "docs" / "results.md").read_text()


def test_concurrent_study_processes_build_the_data_once(tmp_path, plan_file):
    """Two study processes on a fresh checkout: the second waits for the first's SceneQA build and reuses it (it
    used to find the half-written folder and fail with "is not empty and holds no SceneQA build")."""
    import subprocess
    import sys
    import time

    from compactvlm.data.sceneqa import build_sceneqa
    from compactvlm.study import data_build_lock

    spec = yaml.safe_load(Path(plan_file).read_text())
    spec["data"]["dir"] = str(tmp_path / "data")
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(spec))
    d = tmp_path / "data"
    code = ("from compactvlm.study import load_plan, ensure_data; "
            f"print(ensure_data(load_plan({str(tmp_path / 'plan.yaml')!r}), progress=False))")
    with data_build_lock(d):  # this test plays the first process, mid-build
        other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        time.sleep(8)  # long enough for the other process to import and reach the lock
        assert other.poll() is None, other.communicate()  # it waits instead of building or failing
        assert not d.exists()
        sizes = {k: spec["data"][k] for k in ("caption", "train", "val", "test")}
        built = build_sceneqa(d, seed=0, progress=False, sizes=sizes)["built_at"]
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    assert json.loads((d / "manifest.json").read_text())["built_at"] == built  # reused, not rebuilt


def test_demo_blind_verdict_separates_unresolved_from_blind():
    """A CI that reaches 0 on a small split is "not resolved", not evidence of blindness; only a gap at or below 0
    reads as not beating the control."""
    from compactvlm.commands.demo import blind_verdict

    assert blind_verdict(True, 17.7, 85) == "sees"
    unresolved = blind_verdict(False, 8.8, 85)
    assert unresolved.startswith("not resolved on 85 questions") and "--images" in unresolved
    assert blind_verdict(False, -1.0, 85) == "does NOT beat its blind control"
    assert blind_verdict(False, 0.0, 85) == "does NOT beat its blind control"


def test_a_bfloat16_plan_is_refused_where_bf16_is_emulated(tmp_path, plan_file, monkeypatch, capsys):
    """A plan that answers in bfloat16 does not start on a device whose bf16 matmuls are emulated (its evaluations
    would run tens of times slower): a clear error before any work, naming the way out; --allow-emulated-bf16 runs
    it anyway with a warning. A float32 plan, or a native-bf16 machine, is not affected."""
    import compactvlm.study.run as study_run
    from compactvlm.study.run import emulated_bf16

    plan = yaml.safe_load(plan_file.read_text())
    root = tmp_path / "bf16"
    bf16 = dict(plan, name="tiny-bf16", eval_dtype="bfloat16", runs_dir=str(root / "runs"),
                results_dir=str(root / "results"), rows=plan["rows"][:1], comparisons=[])
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(bf16))
    monkeypatch.setattr(study_run, "bf16_is_fast", lambda device="cpu": False)
    why = emulated_bf16(load_plan(tmp_path / "bf16.yaml"))
    assert "answers in bfloat16 (eval_dtype)" in why and "no native bf16" in why
    assert emulated_bf16(load_plan(plan_file)) is None  # float32 answers: nothing to say
    capsys.readouterr()
    assert main(["study", "run", "--plan", str(tmp_path / "bf16.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no native bf16" in err and "--allow-emulated-bf16" in err
    assert not (root / "runs").exists() and not (root / "results").exists()  # refused before any work
    assert main(["study", "status", "--plan", str(tmp_path / "bf16.yaml")]) == 0  # says why, for the pairs left
    assert "this machine: plan 'tiny-bf16' answers in bfloat16" in capsys.readouterr().out
    monkeypatch.setattr(study_run, "bf16_is_fast", lambda device="cpu": True)
    assert emulated_bf16(load_plan(tmp_path / "bf16.yaml")) is None
    # anyway, on purpose: the warning is printed and the row runs
    monkeypatch.setattr(study_run, "bf16_is_fast", lambda device="cpu": False)
    assert main(["study", "run", "--plan", str(tmp_path / "bf16.yaml"), "--allow-emulated-bf16", "--quiet"]) == 0
    assert "[study] warning: plan 'tiny-bf16' answers in bfloat16" in capsys.readouterr().out
    assert (root / "results" / "full" / "seed0.json").exists()
