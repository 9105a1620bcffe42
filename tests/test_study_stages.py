"""Study v2 machinery on tiny random models: a two-stage recipe per row (captions, then a caption + QA mix with the
LLM trained), a shared stage 1 (`from_stage1`), per-row seeds, learning-curve points (`eval_steps`), blind controls,
convergence in the report, the ETA of `study run` on a fake clock, and the shipped v2 plan (loaded, not run)."""

import json
import random
from pathlib import Path

import pytest
import yaml

from compactvlm.cli import main
from compactvlm.errors import CompactVLMError
from compactvlm.study import check_stages, load_plan, mix_path
from compactvlm.study.convergence import last_third_slope, pair_flag, row_convergence
from compactvlm.study.plan import StudyPlan, StudyRow
from compactvlm.study.progress import QueueItem, StudyProgress, build_queue
from compactvlm.train.fixtures import write_tiny_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    enc, llm = write_tiny_models(root / "models")
    stage1 = {  # compressor only, on captions; 24 captions / batch 4 = 6 steps, validation every step
        "model": {"encoder": str(enc), "llm": str(llm), "image_size": 32, "system_prompt": ""},
        "data": {"train": "unused.json", "max_samples": 24, "max_val_samples": 4},
        "stage": {"modules": {"encoder": "frozen", "compressor": "full", "llm": "frozen"}},
        "optim": {"lr": 1e-3, "batch_size": 4, "per_device_batch_size": 4, "epochs": 1},
        "eval": {"every_steps": 1}, "logging": {"progress": False}, "device": "cpu", "cache_features": True,
        "checkpoint": {"every_steps": 2, "keep_last": 5},
    }
    (root / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    stage2 = {"_base_": "stage1.yaml", "data": {"max_samples": 24},  # the whole LLM trained, on the mix
              "stage": {"modules": {"encoder": "frozen", "compressor": {"mode": "full", "lr": 2e-4},
                                    "llm": {"mode": "full", "lr": 2e-5}}},
              "init": {"from": "somewhere/else"}, "checkpoint": {"every_steps": 0}}
    (root / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    plan = {
        "name": "tiny2", "data": {"dir": str(root / "data"), "seed": 0, "caption": 40, "train": 10, "val": 4,
                                  "test": 4, "turns": 2, "mix": {"qa": 8, "captions": [24, 40], "seed": 3}},
        "train_configs": [str(root / "stage1.yaml"), str(root / "stage2.yaml")], "runs_dir": str(root / "runs"),
        "results_dir": str(root / "results"), "report": str(root / "docs" / "results.md"), "reference": "full",
        "seeds": [0], "eval_batch_size": 4, "ttft_repeats": 1, "threads": 1, "eval_steps": [0, 3, 6, 9],
        "bootstrap": 200, "groups": {"1": "all"},
        # every stage of every row keeps at most 2 resumable checkpoints while it runs, none once it is finished
        "train_overrides": ["checkpoint.keep_last=2"], "keep_checkpoints": False,
        "rows": [
            {"name": "full", "group": "1", "compressor": "mlp2x_gelu"},
            {"name": "stf", "group": "1", "compressor": "stf", "params": {"k": 2, "E": 1}},
            # stage 2 only, LoRA on the LLM instead of all of it, from stf's own stage 1
            {"name": "stf-b", "group": "1", "compressor": "stf", "params": {"k": 2, "E": 1}, "from_stage1": "stf",
             "train_overrides": ["stage.modules.llm.mode=lora", "stage.modules.llm.lr=1e-5"]},
            {"name": "rand-4", "group": "1", "from": "full", "reduce": "random", "budget": 4},
            {"name": "ablation", "group": "1", "from": "full", "reduce": "random", "budget": 8, "seeds": [1]},
        ],
        "comparisons": [["stf", "rand-4"]],
        "claims": [{"claim": "stf keeps the accuracy", "kind": "retains", "a": "stf"}],
        "moonshot": {"tokens": 4, "target": 99},
    }
    path = root / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def _cfg(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "train_config.yaml").read_text())


def test_two_stage_rows(staged, capsys):
    root = staged.parent
    assert main(["study", "run", "--plan", str(staged), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ablation seed 0: not one of the row's seeds [1]" in out
    assert not (root / "results" / "ablation").exists()
    assert "[study] 1/4 full seed 0 (trained): running" in out and "[study] 4/4 rand-4 seed 0 (eval)" in out
    data = root / "data"
    runs = root / "runs"
    # the mix: the first 8 QA conversations + captions 24:40 (never stage 1's first 24), shuffled with the mix seed
    mix = json.loads(mix_path(load_plan(staged)).read_text())
    qa, caps = json.loads((data / "train.json").read_text()), json.loads((data / "caption.json").read_text())
    want = qa[:8] + caps[24:40]
    random.Random(3).shuffle(want)
    assert mix == want
    for row in ("full", "stf"):
        s1, s2 = _cfg(runs / row / "s0" / "stage1"), _cfg(runs / row / "s0" / "stage2")
        assert s1["data"]["train"] == str(data / "caption.json") and s1["data"]["val"] == str(data / "caption_val.json")
        assert s2["data"]["train"] == str(mix_path(load_plan(staged))) and s2["data"]["image_root"] == str(data)
        assert s2["data"]["val"] == str(data / "val.json")
        # stage 2 starts from this row's own stage-1 checkpoint at this seed; the row's compressor in both stages
        assert s2["init"]["from"] == str(runs / row / "s0" / "stage1" / "final")
        assert s1["model"]["compressor"] == s2["model"]["compressor"] == ("stf" if row == "stf" else "mlp2x_gelu")
        assert s2["stage"]["modules"]["llm"]["mode"] == "full"
    assert _cfg(runs / "stf" / "s0" / "stage1")["model"]["compressor_params"] == {"k": 2, "E": 1}
    # the plan's train_overrides reach every stage; finished stages keep their final model only
    assert _cfg(runs / "stf" / "s0" / "stage1")["checkpoint"]["keep_last"] == 2
    assert _cfg(runs / "stf" / "s0" / "stage2")["checkpoint"]["keep_last"] == 2
    events = [json.loads(l) for l in (runs / "stf" / "s0" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4, 6]  # written while it ran ...
    assert not list((runs / "stf" / "s0" / "stage1" / "checkpoints").glob("step-*"))  # ... and dropped after
    assert (runs / "stf" / "s0" / "stage1" / "final" / "compactvlm.json").exists()
    # stf-b shares stf's stage 1 and trains only its own stage 2, with its own override
    assert not (runs / "stf-b" / "s0" / "stage1").exists()
    b2 = _cfg(runs / "stf-b" / "s0" / "stage2")
    assert b2["init"]["from"] == str(runs / "stf" / "s0" / "stage1" / "final")
    assert b2["stage"]["modules"]["llm"] == {"mode": "lora", "lr": 1e-5}

    res = json.loads((root / "results" / "stf" / "seed0.json").read_text())
    assert [s["stage"] for s in res["stages"]] == [1, 2]
    assert [s["train"]["steps"] for s in res["stages"]] == [6, 6] and res["train"] == res["stages"][1]["train"]
    assert all(s["train"]["batch_size"] == 4 and len(s["train"]["val_loss_curve"]) == 7 for s in res["stages"])
    assert [s["train_file"] for s in res["stages"]] == ["caption.json", "mix"]
    # learning curve: step 0 = stage 1's final, 3 = a snapshot kept during training, 6 = the final, 9 never ran
    curve = {p["step"]: p for p in res["curve"]}
    assert curve[0]["checkpoint"] == str(runs / "stf" / "s0" / "stage1" / "final")
    assert curve[3]["checkpoint"] == str(runs / "stf" / "s0" / "stage2.snapshots" / "step-000003")
    assert curve[6]["checkpoint"] == str(runs / "stf" / "s0" / "stage2" / "final")
    # the final point is the row's own test evaluation, not a second pass over the same model
    assert curve[6]["family_mean"] == res["metrics"]["family_mean"]
    assert sorted(p.name for p in (runs / "eval" / "stf").iterdir()) == ["s0", "s0.shuffled", "s0.step-000000",
                                                                          "s0.step-000003"]
    assert curve[3]["samples"] == 12 and "family_mean" in curve[3] and "ran 6 steps" in curve[9]["missing"]
    # every point but the end keeps its answers (the end's are the result's own), one per test question
    assert set(curve[0]["predictions"]) == set(curve[3]["predictions"]) == set(res["predictions"])
    assert "predictions" not in curve[6]
    assert "blind_gap" in res and "shuffled" in res["blind_gap"]["controls"]
    # the snapshots went once the result was written; a forced re-run re-scores the curve from the stored answers
    assert not (runs / "stf" / "s0" / "stage2.snapshots").exists()
    assert main(["study", "run", "--plan", str(staged), "--rows", "stf", "--force", "--quiet"]) == 0
    again = json.loads((root / "results" / "stf" / "seed0.json").read_text())
    assert again["curve"] == res["curve"] and again["metrics"] == res["metrics"]
    rand = json.loads((root / "results" / "rand-4" / "seed0.json").read_text())
    assert "curve" not in rand and rand["stages"][1]["output_dir"] == str(runs / "full" / "s0" / "stage2")

    assert main(["study", "report", "--plan", str(staged)]) == 0
    md = (root / "docs" / "results.md").read_text()
    summary = json.loads((root / "docs" / "results.json").read_text())
    conv = summary["stf"]["convergence"]
    assert conv["stage"] == 2 and conv["slopes"]["0"] is not None and conv["flat"] is not None
    assert "## Validation loss and convergence" in md and "| `stf` | 2 (" in md and "| `stf` | 1 (" in md
    assert "Test-set learning curves" in md and "3 (12):" in md
    # the end-of-training gain: final minus step 3, paired by test image, from the answers the result keeps
    gain = summary["stf"]["end_gain"]
    assert gain["step"] == 3 and gain["seeds"] == [0]
    assert gain["end"][0] == pytest.approx(res["metrics"]["family_mean"])
    assert gain["delta"][0] == pytest.approx(res["metrics"]["family_mean"] - curve[3]["family_mean"])
    assert gain["delta"][1] <= gain["delta"][0] <= gain["delta"][2]
    line = next(x for x in md.splitlines() if x.startswith("| `stf` | 0 (0):"))
    assert line.endswith(f"{gain['delta'][0]:+.1f} [{gain['delta'][1]:+.1f}, {gain['delta'][2]:+.1f}] vs step 3, "
                         f"seed 0{' **still rising**' if gain['delta'][1] > 0 else ''}{' (fell)' if gain['delta'][2] < 0 else ''} |")
    assert (root / "results" / "stf" / "curve-step-000003.bootstrap.json").exists()
    assert summary["rand-4"]["end_gain"] is None  # an evaluation-only row has no curve of its own ...
    # ... and its comparisons are judged on its source's (the convergence flag's test criterion)
    assert summary["stf"]["convergence"]["test_gain"] == gain
    assert summary["rand-4"]["convergence"]["test_gain"] == summary["full"]["end_gain"] is not None
    comps = json.loads((root / "docs" / "results_comparisons.json").read_text())
    assert "convergence" in comps[0]
    claims = json.loads((root / "docs" / "results_claims.json").read_text())
    assert claims[0]["convergence"] == pair_flag(["stf", "full"], {n: summary[n]["convergence"] for n in ("stf", "full")})
    assert comps[0]["convergence"] == pair_flag(["stf", "rand-4"], {n: summary[n]["convergence"] for n in ("stf", "rand-4")})
    assert summary["rand-4"]["convergence"]["source"] == "full"
    assert "| `stf-b` | 1 (" in md and "`stf`'s |" in md  # its stage 1 is stf's
    # the moonshot: the rows at 4 tokens, with a test-image CI of their PRT over the families the reference sees
    shot = json.loads((root / "docs" / "results_moonshot.json").read_text())
    assert "## Moonshot: the best row at 4 tokens (1/" in md
    assert [c["row"] for c in shot["candidates"]] == ["rand-4"]
    assert shot["candidates"][0]["seeds"] == [0]
    # tiny random models see nothing: no PRT families, so no PRT CI, and the report says why it is untested
    assert shot["families"] == [] and shot["candidates"][0]["prt_ci"] is None and shot["best"] is None
    assert "**The moonshot is untested**: `full` beats its blind control on no family" in md


def test_report_attaches_curve_answers_of_older_results(staged, capsys):
    """A result written before curve points kept their answers gets them from the points' evaluation folders (when
    they re-score to the stored family mean), so the end-of-training gain can be tested; otherwise nothing is
    written and the report says they are not kept."""
    root = staged.parent
    f = root / "results" / "stf" / "seed0.json"
    if not f.exists():
        assert main(["study", "run", "--plan", str(staged), "--rows", "full,stf", "--quiet"]) == 0
    kept = f.read_text()
    res = json.loads(kept)
    answers = {p["step"]: p.pop("predictions") for p in res["curve"] if "predictions" in p}
    assert sorted(answers) == [0, 3]
    try:
        f.write_text(json.dumps(res))
        capsys.readouterr()
        assert main(["study", "report", "--plan", str(staged)]) == 0
        assert "attached the answers of 1 earlier result file" in capsys.readouterr().out
        again = json.loads(f.read_text())
        assert {p["step"]: p["predictions"] for p in again["curve"] if "predictions" in p} == answers
        assert json.loads((root / "docs" / "results.json").read_text())["stf"]["end_gain"]["step"] == 3
        # answers that do not re-score to the stored point are refused, and nothing is written
        res["curve"][1]["family_mean"] += 1.0
        f.write_text(json.dumps(res))
        assert main(["study", "report", "--plan", str(staged)]) == 2
        assert "are not from the same run" in capsys.readouterr().err
        assert not any("predictions" in p for p in json.loads(f.read_text())["curve"])
    finally:
        f.write_text(kept)


def test_export_ships_lora_adapters_and_refuses_a_fully_trained_llm(staged, tmp_path, capsys):
    root = staged.parent
    if not (root / "results" / "stf-b" / "seed0.json").exists():
        assert main(["study", "run", "--plan", str(staged), "--rows", "stf,stf-b", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["study", "export", "--plan", str(staged), "--rows", "stf", "--out", str(tmp_path)]) == 2
    assert "trained the LLM's own weights (full)" in capsys.readouterr().err and not (tmp_path / "stf").exists()
    assert main(["study", "export", "--plan", str(staged), "--rows", "stf-b", "--out", str(tmp_path)]) == 0
    import torch
    from safetensors.torch import load_file

    from compactvlm.model.checkpoint import load_pretrained

    final = root / "runs" / "stf-b" / "s0" / "stage2" / "final"
    mine, shipped = load_file(str(final / "llm.safetensors")), load_file(str(tmp_path / "stf-b" / "llm.safetensors"))
    assert set(mine) == set(shipped) and all("lora" in k for k in mine)
    assert all(torch.allclose(mine[k], shipped[k].float(), atol=1e-3) for k in mine)
    a, b = load_pretrained(final, progress=False), load_pretrained(tmp_path / "stf-b", progress=False)
    pa, pb = dict(a.llm.named_parameters()), dict(b.llm.named_parameters())
    assert set(pa) == set(pb) and all(torch.allclose(pa[k], pb[k], atol=1e-3) for k in pa)


def test_a_plan_takes_its_stage1_from_another_plans_runs(staged, tmp_path, capsys):
    """`stage1_runs_dir`: a plan that changes only stage 2 (here its steps) takes each row's stage 1 from another
    plan's runs_dir once its recipe checks out against its own, trains its own stage 2 from it and deletes none of
    the other plan's checkpoints; a stage 1 trained with another recipe is refused before any training."""
    root = staged.parent
    shared = root / "runs" / "stf" / "s0" / "stage1"
    if not (shared / "final" / "compactvlm.json").exists():
        assert main(["study", "run", "--plan", str(staged), "--rows", "stf", "--quiet"]) == 0
    kept = shared / "checkpoints" / "step-000099"  # the other plan's checkpoint: this plan must leave it
    kept.mkdir(parents=True, exist_ok=True)
    (kept / "training_state.json").write_text("{}")
    (kept / "compactvlm.json").write_text("{}")
    spec = yaml.safe_load(staged.read_text())
    spec.update(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                report=str(tmp_path / "results.md"), stage1_runs_dir=str(root / "runs"),
                stage_data=[{"train": "caption.json", "val": "caption_val.json"},
                            {"train": "mix", "val": "val.json", "overrides": ["optim.max_steps=3"]}])
    spec["rows"][1]["eval_steps"] = [0, 2, 3]  # the row's own learning-curve steps, not the plan's [0, 3, 6, 9]
    spec["eval_dtype"] = "bfloat16"  # evaluated with bf16 weights, named in every evaluation folder's record
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump(spec))
    assert main(["study", "run", "--plan", str(tmp_path / "longer.yaml"), "--rows", "stf", "--quiet",
                 "--allow-emulated-bf16"]) == 0  # a no-op where bf16 is native; tiny models answer fast emulated
    assert not (tmp_path / "runs" / "stf" / "s0" / "stage1").exists()
    s2 = _cfg(tmp_path / "runs" / "stf" / "s0" / "stage2")
    assert s2["init"]["from"] == str(shared / "final") and s2["optim"]["max_steps"] == 3
    res = json.loads((tmp_path / "results" / "stf" / "seed0.json").read_text())
    assert res["stages"][0]["output_dir"] == str(shared) and res["stages"][0]["train"]["steps"] == 6
    assert res["stages"][1]["train"]["steps"] == 3
    curve = {p["step"]: p for p in res["curve"]}
    assert sorted(curve) == [0, 2, 3] and "family_mean" in curve[2]
    assert curve[2]["checkpoint"] == str(tmp_path / "runs" / "stf" / "s0" / "stage2.snapshots" / "step-000002")
    assert res["hardware"]["eval_dtype"] == "bfloat16"
    assert sorted(p.name for p in (tmp_path / "runs" / "eval" / "stf").iterdir()) == [
        "s0.bfloat16", "s0.shuffled.bfloat16", "s0.step-000000.bfloat16", "s0.step-000002.bfloat16"]
    assert json.loads((tmp_path / "runs" / "eval" / "stf" / "s0.bfloat16" / "metrics.json").read_text())["run"]["dtype"] == "bfloat16"
    first = json.loads((root / "results" / "stf" / "seed0.json").read_text())  # the float32 plan: as before
    assert first["hardware"]["eval_dtype"] == "float32"
    assert "dtype" not in json.loads((root / "runs" / "eval" / "stf" / "s0" / "metrics.json").read_text())["run"]
    assert kept.exists()  # keep_checkpoints: false drops this plan's own checkpoints only
    assert not list((tmp_path / "runs" / "stf" / "s0" / "stage2" / "checkpoints").glob("step-*"))
    # another stage-1 learning rate: refused, naming the key, before stage 2 starts
    spec.update(runs_dir=str(tmp_path / "runs3"), results_dir=str(tmp_path / "results3"))
    spec["stage_data"][0]["overrides"] = ["optim.lr=0.002"]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["study", "run", "--plan", str(tmp_path / "other.yaml"), "--rows", "stf", "--quiet",
                 "--allow-emulated-bf16"]) != 0
    captured = capsys.readouterr()
    assert "trained with another recipe: optim.lr differ" in captured.out + captured.err
    assert not (tmp_path / "runs3" / "stf").exists() and not (tmp_path / "results3" / "stf").exists()


def test_check_stages_refuses_a_mix_that_repeats_stage1_captions(staged, tmp_path):
    spec = yaml.safe_load(staged.read_text())
    spec["data"]["mix"]["captions"] = [20, 40]  # stage 1 trains on the first 24 captions
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CompactVLMError, match="would repeat them"):
        check_stages(load_plan(tmp_path / "p.yaml"))
    spec["data"]["mix"]["captions"] = [24, 36]  # 8 + 12 = 20 samples, stage 2 asks for 24
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    _, warnings = check_stages(load_plan(tmp_path / "p.yaml"))
    assert len(warnings) == 1 and "stage 2" in warnings[0] and "gives it 20" in warnings[0]


@pytest.mark.parametrize("change, match", [
    (lambda p: p.update(train_config="x.yaml"), "both train_config and train_configs"),
    (lambda p: p.update(stage_data=[{"train": "caption.json"}]), "stage_data has 1 entries for 2"),
    (lambda p: (p["data"].pop("mix"), p.update(stage_data=[{"train": "caption.json"}, {"train": "mix"}])),
     "trains on `mix`, but the plan's data has no mix"),
    (lambda p: p.update(stage_data=[{"train": "captions.json"}, {"train": "mix"}]), "trains on 'captions.json'"),
    (lambda p: p["rows"][2].update(params={"k": 4, "E": 1}), "whose compressor differs"),
    (lambda p: p["rows"][2].update(from_stage1="rand-4"), "not a trained row"),
    (lambda p: p["data"].update(caption=30), "captions \\[24, 40\\], the build has"),
    (lambda p: p.update(controls=["shuffle"]), "controls must be distinct"),
    (lambda p: p.update(cost_hint={"trianed": 5}), "cost_hint has bad entries"),
    (lambda p: p["rows"][1].update(seeds=[]), "empty seeds list"),
    (lambda p: p.update(stage1_runs_dir=p["runs_dir"]), "a folder other than its runs_dir"),
    (lambda p: p["rows"][3].update(eval_steps=[1]), "set eval_steps but train nothing"),
    (lambda p: p.update(eval_dtype="float16"), "eval_dtype 'float16' is not supported"),
    (lambda p: p["rows"][1].update(eval_steps=[2, 2]), "row 'stf''s eval_steps must be distinct"),
    (lambda p: p["rows"][0].update(reduce="fastv", budget=4), "row 'full' trains with reduce 'fastv': .*inside the LLM"),
    (lambda p: p["rows"][0].update(reduce="dart"), "row 'full' trains with reduce 'dart': .*needs a token budget"),
])
def test_bad_stage_plans_are_clear_errors(staged, tmp_path, change, match):
    spec = yaml.safe_load(staged.read_text())
    change(spec)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CompactVLMError, match=match):
        load_plan(tmp_path / "p.yaml")


def test_a_trained_row_with_a_reduction_trains_its_last_stage_with_it(staged, tmp_path, capsys):
    """A trained row with `reduce`: stage 1 is its source's (`from_stage1`), the last stage trains with the reduction
    active, and the row answers with it at every learning-curve point and at the end."""
    spec = yaml.safe_load(staged.read_text())
    spec.update(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"), eval_steps=[3],
                report=str(tmp_path / "results.md"), comparisons=[], claims=[], moonshot=None)
    spec["rows"] = [spec["rows"][0], {"name": "full-dart4", "group": "1", "compressor": "mlp2x_gelu",
                                      "from_stage1": "full", "reduce": "dart", "budget": 4}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    assert main(["study", "run", "--plan", str(tmp_path / "p.yaml"), "--rows", "full-dart4", "--quiet"]) == 0
    runs = tmp_path / "runs"
    assert _cfg(runs / "full" / "s0" / "stage1")["reduce"]["name"] is None  # the reference's own grounding ...
    assert _cfg(runs / "full-dart4" / "s0" / "stage2")["reduce"] == {"name": "dart", "budget": 4, "params": {}}
    assert not (runs / "full" / "s0" / "stage2").exists()  # ... and only this row's stage 2
    events = [json.loads(l) for l in (runs / "full-dart4" / "s0" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [e["image_tokens"] for e in events if e["event"] == "start"] == [4]
    res = json.loads((tmp_path / "results" / "full-dart4" / "seed0.json").read_text())
    assert res["vision_tokens"] == 4 and res["row"]["reduce"] == "dart"
    point = json.loads((runs / "eval" / "full-dart4" / "s0.step-000003" / "metrics.json").read_text())
    assert point["run"]["vision_tokens"] == 4
    assert [p["step"] for p in res["curve"]] == [3]
    # the report takes the row as any trained one: its tokens, its stages (stage 1 the reference's), its curve
    assert main(["study", "report", "--plan", str(tmp_path / "p.yaml")]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "| `full-dart4` | 2 (" in md and "| `full-dart4` | 1 (" in md and "`full`'s |" in md
    assert next(x for x in md.splitlines() if x.startswith("| `full-dart4` | 1 | ")).split("|")[3].strip() == "4"  # tokens


def test_one_stage_plan_refuses_from_stage1(tmp_path):
    plan = StudyPlan(reference="a", rows=[StudyRow(name="a", compressor="stf"),
                                          StudyRow(name="b", compressor="stf", from_stage1="a")])
    with pytest.raises(CompactVLMError, match="one training stage"):
        plan.validate()
    plan = StudyPlan(reference="a", rows=[StudyRow(name="a", compressor="stf")], stage1_runs_dir="runs/other")
    with pytest.raises(CompactVLMError, match="needs a plan with two or more training stages"):
        plan.validate()


# ---- convergence ------------------------------------------------------------------------------------------------
def test_last_third_slope():
    # loss falls 0.1 per step of batch 8 = 0.1 nats per 8 samples = 12.5 nats per 1000 samples
    curve = [[s, 5.0 - 0.1 * s] for s in range(0, 31, 5)]
    assert last_third_slope(curve, 8) == pytest.approx(-12.5)
    # only the last third counts: a steep start, then flat
    curve = [[0, 9.0], [100, 3.0], [200, 1.0], [300, 1.0], [400, 1.0], [500, 1.0], [600, 1.0]]
    assert last_third_slope(curve, 8) == pytest.approx(0.0)
    assert last_third_slope(curve, None) is None
    assert last_third_slope([[0, 2.0], [10, 1.0]], 8) is None  # one point in the last third


def _run(seed, curve, batch=8):
    return {"seed": seed, "stages": [{"stage": 1, "train": {"val_loss_curve": [[0, 9.0]], "batch_size": batch}},
                                     {"stage": 2, "train": {"val_loss_curve": curve, "batch_size": batch}}]}


def test_row_convergence_and_pair_flag():
    flat = [[s, 1.0] for s in range(0, 700, 100)]
    steep = [[s, 2.0 - 0.0008 * s] for s in range(0, 700, 100)]  # -0.0008 per step / 8 samples = -0.1 per 1000
    a = row_convergence([_run(0, flat), _run(1, flat)], 0.02)
    b = row_convergence([_run(0, flat), _run(1, steep)], 0.02)
    assert a["stage"] == 2 and a["flat"] is True and a["max_abs_slope"] == pytest.approx(0.0)
    assert b["flat"] is False and b["slopes"][1] == pytest.approx(-0.1)
    assert pair_flag(["a", "a2"], {"a": a, "a2": a}) is None
    flag = pair_flag(["a", "b"], {"a": a, "b": b})
    assert flag.startswith("not converged: `b`") and "-0.100" in flag and "±0.02" in flag
    unknown = row_convergence([_run(0, flat, batch=None)], 0.02)
    assert unknown["flat"] is None and pair_flag(["a", "u"], {"a": a, "u": unknown}).startswith("convergence unknown")
    # a flat validation loss, but the test score still rose over the last stretch (paired CI above 0): not converged
    rising = {**a, "test_gain": {"step": 600, "seeds": [0, 1], "delta": [2.5, 0.3, 4.6]}}
    assert pair_flag(["a", "r"], {"a": a, "r": rising}) == (
        "not converged: `r` (test score still rising: +2.5 [+0.3, +4.6] since step 600)")
    both = pair_flag(["b"], {"b": {**b, "test_gain": rising["test_gain"]}})
    assert both.startswith("not converged: `b` (last-third slope -0.100") and both.endswith("since step 600)")
    # a gain whose CI holds 0 is flat; a rising gain at seeds the comparison does not pair is not counted
    level = {**a, "test_gain": {"step": 600, "seeds": [0, 1], "delta": [1.0, -0.5, 2.5]}}
    assert pair_flag(["a", "r"], {"a": a, "r": level}) is None
    assert pair_flag(["a", "r"], {"a": a, "r": {**rising, "test_gain": {**rising["test_gain"], "seeds": [1]}}},
                     seeds={0}) is None


def test_pair_flag_judges_only_the_seeds_the_comparison_pairs():
    flat = [[s, 1.0] for s in range(0, 700, 100)]
    slight = [[s, 2.0 - 0.00024 * s] for s in range(0, 700, 100)]  # -0.030 per 1000 samples
    steep = [[s, 2.0 - 0.0008 * s] for s in range(0, 700, 100)]  # -0.100
    ref = row_convergence([_run(0, slight), _run(1, steep)], 0.02)
    row0 = row_convergence([_run(0, flat)], 0.02)  # a row with seed 0 only
    flags = {"a": row0, "ref": ref}
    assert "-0.100" in pair_flag(["a", "ref"], flags)  # every seed: the reference's worst
    on_seed0 = pair_flag(["a", "ref"], flags, seeds={0})
    assert on_seed0.startswith("not converged: `ref`") and "-0.030" in on_seed0 and "-0.100" not in on_seed0
    assert pair_flag(["a", "ref"], {"a": row0, "ref": row_convergence([_run(0, flat), _run(1, steep)], 0.02)},
                     seeds={0}) is None  # the steep seed is not paired
    assert pair_flag(["a", "ref"], flags, seeds={2}).startswith("convergence unknown")  # no curve at seed 2


# ---- progress and ETA -------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_eta_from_hints_then_measured_times():
    plan = StudyPlan(reference="full", rows=[StudyRow(name="full", compressor="mlp2x_gelu"),
                                             StudyRow(name="stf", compressor="stf"),
                                             StudyRow(name="rand", from_="full", reduce="random", budget=4)],
                     cost_hint={"trained": 60, "eval": 10, "full": 120})
    clock = FakeClock()
    items = [QueueItem("full", 0, "trained"), QueueItem("stf", 0, "trained"), QueueItem("rand", 0, "eval")]
    p = StudyProgress(plan, items, clock=clock)
    line = p.start(0)
    # nothing finished: the hints, row name first (full 120 + stf 60 + rand 10 minutes)
    assert line.startswith("[study] 1/3 full seed 0 (trained): running; elapsed 0.0 min; ETA 3 h 10 min for 3 rows")
    assert "cost_hint" in line
    clock.t += 30 * 60  # the running row's elapsed time comes off its estimate
    assert p.eta_seconds()[0] == pytest.approx((90 + 60 + 10) * 60)
    clock.t += 10 * 60
    line = p.finish(0)  # full took 40 min: trained rows are now measured at 40 min
    assert "1/3 full seed 0: done in 40 min; elapsed 40 min; ETA 50 min for 2 rows left" in line
    p.start(1)
    clock.t += 20 * 60
    line = p.finish(1)  # trained mean (40 + 20) / 2 = 30; rand still from its hint: 10
    assert "ETA 10 min for 1 row left (from the plan's cost_hint and finished rows (trained 30.0 min))" in line
    p.start(2)
    clock.t += 5 * 60
    assert p.finish(2).endswith("elapsed 1 h 05 min; queue done")


def test_progress_without_hints_and_failures():
    plan = StudyPlan(reference="a", rows=[StudyRow(name="a", compressor="stf")])
    clock = FakeClock()
    p = StudyProgress(plan, [QueueItem("a", s, "trained") for s in range(3)], clock=clock)
    assert "ETA unknown (no row has finished yet and the plan has no cost_hint)" in p.start(0)
    clock.t += 60
    assert "FAILED after 1.0 min" in p.finish(0, failed=True)  # not a measurement
    p.start(1)
    assert p.eta_seconds()[0] is None
    clock.t += 600
    assert "ETA 10 min for 1 row left (from finished rows (trained 10.0 min))" in p.finish(1)


def test_queue_kinds_follow_what_needs_training(staged):
    plan = load_plan(staged)
    plan.runs_dir = str(staged.parent / "fresh-runs")  # nothing trained yet
    q = build_queue(plan, [("rand-4", 0), ("full", 0), ("stf", 0), ("stf", 1)])
    assert [i.kind for i in q] == ["trained", "eval", "trained", "trained"]  # rand-4 trains full's model first


# ---- the shipped v2 plan ------------------------------------------------------------------------------------------
V2 = ROOT / "configs" / "study" / "sceneqa_v2.yaml"


def test_v2_plan_loads_and_validates(tmp_path):
    plan = load_plan(V2)
    names = [r.name for r in plan.rows]
    issue21 = ["full-mlp2x", "stf-k2e1", "mbtf-stf-k2e1", "avgpool-k2", "concat-k2", "qformer-64", "vistog-16",
               "vistog-32", "vistog-32-full", "avgpool-k4", "objects-unsup", "objects-unsup-b13", "objects-unsup-b9",
               "objects-unsup-b5", "rand-64", "rand-16", "fastv-64", "fastv-16", "visionzip-64", "visionzip-16",
               "avgpool-reduce-64", "avgpool-reduce-16"]
    assert set(issue21) <= set(names) and plan.reference == "full-mlp2x" and plan.seeds == [0, 1, 2]
    for method in ("dart", "divprune", "pyramiddrop", "sparsevlm", "tome"):  # issue 27: training-free at 64 and 16
        for budget in (64, 16):
            r = plan.row(f"{method}-{budget}")
            assert (r.from_, r.reduce, r.budget) == ("full-mlp2x", method, budget)
    # the remaining ablations at one seed, labelled as such
    for name in ("stf-k2e2", "stf-k4e1", "stf-k4e4", "objects-given"):
        assert plan.row(name).seeds == [0] and "1 seed" in plan.row(name).note
    # the seeds' claims, every one about rows of the plan (load_plan checked the rows; here: the claims are there)
    kinds = {(c.a, c.kind) for c in plan.claims}
    assert {("stf-k2e1", "retains"), ("vistog-16", "retains"), ("vistog-32", "retains")} <= kinds
    assert all(plan.row(r.from_).trained for r in plan.rows if r.from_)
    from compactvlm.registry import COMPRESSORS, REDUCTIONS

    assert all(r.reduce in REDUCTIONS for r in plan.rows if r.reduce)
    assert all(r.compressor in COMPRESSORS for r in plan.rows if r.compressor)
    # two stages: grounding of the compressor on the scenes' objects, then instructions with the whole LLM trained
    assert plan.train_configs == ["configs/train/recipe_ground.yaml", "configs/train/recipe_stage2_ground.yaml"]
    assert [(sd.train, sd.val) for _, sd in plan.stages()] == [("train.json", "val.json"), ("train.json", "val.json")]
    assert plan.data.dir == "data/study_v2" and plan.data.test >= 1000 and plan.data.turns == 8
    assert plan.controls == ["shuffled"] and len(plan.eval_steps) >= 3 and plan.ci_target == 2.0
    assert {"trained", "eval"} <= set(plan.cost_hint)
    plan.train_configs = [str(ROOT / c) for c in plan.train_configs]
    cfgs, warnings = check_stages(plan)
    assert warnings == []
    assert cfgs[0].objective == "grounding" and cfgs[0].stage.specs()["llm"].mode == "frozen"
    assert cfgs[1].init.from_ == "prev" and cfgs[1].stage.specs()["llm"].mode == "full"
    assert all(c.data.train.endswith("data/study_v2/train.json") for c in cfgs)
    # a stage's own overrides reach that stage only: stage 2 validates every 100 steps, stage 1 keeps its recipe's 125;
    # the plan's reach both (a resumable checkpoint every 5 minutes, none by step count, no validation at step 0)
    assert (cfgs[0].eval.every_steps, cfgs[1].eval.every_steps) == (125, 100)
    assert all(c.checkpoint.every_minutes == 5 and c.checkpoint.every_steps == 0 and not c.eval.at_start
               for c in cfgs)


def test_stf_steps_probe_plan_differs_from_v2_only_in_stage2_length():
    """The one-session convergence probe: both arms are v2's STF row (same data, recipe and plan overrides), share one
    grounding, and their stage-2 configs differ in the number of steps only."""
    from compactvlm.study.run import stage_config
    from compactvlm.train.config import to_plain
    from compactvlm.train.trainer import config_differences

    probe, v2 = load_plan(ROOT / "configs" / "study" / "probe_stf_steps.yaml"), load_plan(V2)
    assert probe.data == v2.data and probe.train_configs == v2.train_configs and probe.stage_data == v2.stage_data
    assert probe.train_overrides == v2.train_overrides and probe.eval_dtype == "bfloat16"
    short, long = probe.row("stf-300"), probe.row("stf-900")
    assert (short.compressor, short.params) == (long.compressor, long.params) == (v2.row("stf-k2e1").compressor,
                                                                                   v2.row("stf-k2e1").params)
    assert long.from_stage1 == "stf-300" and probe.reference == "stf-300" and ["stf-900", "stf-300"] in probe.comparisons
    for plan in (probe, v2):
        plan.train_configs = [str(ROOT / c) for c in plan.train_configs]
    last = len(probe.stages()) - 1
    cfg = lambda plan, row: to_plain(stage_config(plan, row, 0, Path(plan.data.dir), last, Path("out"), None))  # noqa: E731
    assert config_differences(cfg(probe, short), cfg(v2, v2.row("stf-k2e1"))) == []
    assert config_differences(cfg(probe, long), cfg(probe, short)) == ["optim.max_steps"]
    assert (cfg(probe, long)["optim"]["max_steps"], probe.row_eval_steps("stf-900")) == (900, [300, 600])


def test_stage_overrides_are_checked_before_any_work(staged, tmp_path):
    spec = yaml.safe_load(staged.read_text())
    spec["stage_data"] = [{"train": "caption.json", "val": "caption_val.json"},
                          {"train": "mix", "val": "val.json", "overrides": ["eval.evry_steps=3"]}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CompactVLMError, match="evry_steps"):
        check_stages(load_plan(tmp_path / "p.yaml"))


def test_v2_900_plan_is_v2_with_900_stage2_steps_and_v2s_groundings():
    """Decision (a) of the probe: the 900-step plan extends v2 (`_base_`): the same rows (less v2's own probe row,
    which is this recipe), stage 2 at 900 steps and nothing else different, stage 1 read from v2's runs."""
    from compactvlm.study.run import stage_config
    from compactvlm.train import load_train_config
    from compactvlm.train.config import to_plain
    from compactvlm.train.trainer import config_differences

    p900, v2 = load_plan(ROOT / "configs" / "study" / "sceneqa_v2_900.yaml"), load_plan(V2)
    # ... plus its own moonshot row (ours): the reference's recipe with DART's 16 tokens active in stage 2
    assert [r.name for r in p900.rows] == [r.name for r in v2.rows if r.name != "full-mlp2x-900"] + ["full-mlp2x-dart16"]
    assert ["full-mlp2x-900", "full-mlp2x"] not in p900.comparisons and len(p900.comparisons) == len(v2.comparisons)
    assert p900.comparisons[-1] == ["full-mlp2x-dart16", "dart-16"]
    assert p900.claims == v2.claims and "7" not in p900.groups and "full-mlp2x-900" not in p900.cost_hint
    assert p900.stage1_runs_dir == v2.runs_dir and p900.data == v2.data and p900.reference == v2.reference
    assert (v2.eval_dtype, p900.eval_dtype) == ("float32", "bfloat16")  # the probe's dtype, chosen before any answer
    assert len({p900.runs_dir, v2.runs_dir}) == len({p900.results_dir, v2.results_dir}) == len({p900.report, v2.report}) == 2
    for plan in (p900, v2):
        plan.train_configs = [str(ROOT / c) for c in plan.train_configs]
    cfg = lambda plan, k: to_plain(stage_config(plan, plan.row("stf-k2e1"), 1, Path(plan.data.dir), k,  # noqa: E731
                                                Path("out"), None))
    assert config_differences(cfg(p900, 0), cfg(v2, 0)) == []  # the grounding v2's runs hold is this plan's
    assert config_differences(cfg(p900, 1), cfg(v2, 1)) == ["optim.max_steps"] and cfg(p900, 1)["optim"]["max_steps"] == 900
    # the recipe's own stage 2 is the converged length; v2 pins the 300 steps its rows were trained with
    assert cfg(v2, 1)["optim"]["max_steps"] == 300
    assert load_train_config(ROOT / "configs" / "train" / "recipe_stage2_ground.yaml").optim.max_steps == 900
    # the moonshot row: the reference's stage 1, its own stage 2 = the reference's with DART at 16 tokens active
    shot = p900.row("full-mlp2x-dart16")
    ref2, shot2 = (to_plain(stage_config(p900, p900.row(n), 1, Path(p900.data.dir), 1, Path("out"), None))
                   for n in ("full-mlp2x", "full-mlp2x-dart16"))
    assert shot.from_stage1 == "full-mlp2x" and config_differences(ref2, shot2) == ["reduce.budget", "reduce.name"]
    assert shot2["reduce"] == {"name": "dart", "budget": 16, "params": {}}


def test_drop_rows_leaves_inherited_rows_out_and_names_unknown_ones(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "name": "b", "reference": "full", "train_config": "t.yaml", "groups": {"1": "one", "2": "two"},
        "cost_hint": {"trained": 10, "probe": 30},
        "rows": [{"name": "full", "group": "1", "compressor": "mlp2x_gelu"},
                 {"name": "stf", "group": "1", "compressor": "stf"},
                 {"name": "probe", "group": "2", "compressor": "stf"}],
        "comparisons": [["stf", "full"], ["probe", "stf"]],
        "claims": [{"claim": "x", "kind": "greater", "a": "probe", "b": "stf"},
                   {"claim": "y", "kind": "greater", "a": "stf", "b": "full"}]}))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "name": "c", "drop_rows": ["probe"]}))
    plan = load_plan(child)
    assert [r.name for r in plan.rows] == ["full", "stf"] and plan.comparisons == [["stf", "full"]]
    assert [c.claim for c in plan.claims] == ["y"] and plan.cost_hint == {"trained": 10}
    assert list(plan.groups) == ["1"]
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "name": "c", "drop_rows": ["prob"]}))
    with pytest.raises(CompactVLMError, match="drop_rows names rows it does not have: prob"):
        load_plan(child)
    # add_rows / add_comparisons append to the inherited lists (a child's `rows` would replace them whole)
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "name": "c", "drop_rows": ["probe"],
                                     "add_rows": [{"name": "stf2", "group": "1", "compressor": "stf"}],
                                     "add_comparisons": [["stf2", "stf"]]}))
    plan = load_plan(child)
    assert [r.name for r in plan.rows] == ["full", "stf", "stf2"]
    assert plan.comparisons == [["stf", "full"], ["stf2", "stf"]]
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "name": "c", "add_rows": [{"name": "stf", "group": "1",
                                                                                       "compressor": "stf"}]}))
    with pytest.raises(CompactVLMError, match="unique, non-empty names"):
        load_plan(child)
    child.write_text(yaml.safe_dump({"_base_": "base.yaml", "name": "c", "add_rows": {"name": "x"}}))
    with pytest.raises(CompactVLMError, match="add_rows must be a list"):
        load_plan(child)
