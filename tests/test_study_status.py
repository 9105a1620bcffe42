"""`study status`: each (row, seed)'s state read from the plan's folders, on constructed files (no training)."""

import json

from filelock import FileLock

from compactvlm.cli import main
from compactvlm.study.plan import StudyData, StudyPlan, StudyRow
from compactvlm.study.status import plan_status


def _plan(tmp_path) -> StudyPlan:
    return StudyPlan(name="p", runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                     data=StudyData(dir=str(tmp_path / "data")), eval_steps=[10, 20],
                     train_configs=["s1.yaml", "s2.yaml"], reference="full", seeds=[0, 1],
                     rows=[StudyRow(name="full", compressor="mlp2x_gelu"), StudyRow(name="stf", compressor="stf"),
                           StudyRow(name="rand", from_="full", reduce="random", budget=4),
                           StudyRow(name="abl", compressor="stf", seeds=[0])])


def _log(stage, *events):
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "tra')  # cut line


def _checkpoint(stage, step):
    d = stage / "checkpoints" / f"step-{step:06d}"
    d.mkdir(parents=True)
    (d / "training_state.json").write_text("{}")
    (d / "compactvlm.json").write_text("{}")


def _final(stage):
    (stage / "final").mkdir(parents=True, exist_ok=True)
    (stage / "final" / "compactvlm.json").write_text("{}")


def test_status_of_every_pair(tmp_path, capsys):
    plan = _plan(tmp_path)
    runs = tmp_path / "runs"
    # full s0: done
    res = tmp_path / "results" / "full" / "seed0.json"
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps({"metrics": {"family_mean": 39.94}, "controls": {"shuffled": {"family_mean": 27.4}}}))
    # full s1: stage 1 finished, stage 2 resumed at 40 and logged up to 47, checkpoints at 40 (and an older 30)
    _final(runs / "full" / "s1" / "stage1")
    s2 = runs / "full" / "s1" / "stage2"
    _log(s2, {"event": "start", "step": 0, "total_steps": 300}, {"event": "train", "step": 45, "sec_per_step": 99.0},
         {"event": "start", "step": 40, "total_steps": 300}, {"event": "train", "step": 46, "sec_per_step": 40.0},
         {"event": "train", "step": 47, "sec_per_step": 44.0}, {"event": "train", "step": 47, "sec_per_step": 42.0})
    _checkpoint(s2, 30)
    _checkpoint(s2, 40)
    # stf s0: stage 1 at step 12 of 1496 without a checkpoint, and a process holds its lock
    s1 = runs / "stf" / "s0" / "stage1"
    _log(s1, {"event": "start", "step": 0, "total_steps": 1496}, {"event": "train", "step": 12, "sec_per_step": 2.0})
    lock = FileLock(str(s1 / ".compactvlm.lock"))
    lock.acquire()
    # stf s1: trained (20 steps), its real-image pass has 3 of the 5 test questions answered, the rest not begun
    _final(runs / "stf" / "s1" / "stage2")
    (runs / "stf" / "s1" / "stage2" / "final" / "compactvlm.json").write_text('{"step": 20}')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test_questions.jsonl").write_text("{}\n" * 5)
    (runs / "eval" / "stf" / "s1").mkdir(parents=True)
    (runs / "eval" / "stf" / "s1" / "predictions.jsonl").write_text("{}\n" * 3)
    try:
        got = {(p.row, p.seed): p for p in plan_status(plan)}
    finally:
        lock.release()
    assert got[("full", 0)].state == "done" and got[("full", 0)].detail == "family mean 39.9, shuffled 27.4"
    assert got[("full", 1)].state == "interrupted"
    # the pace of the steps since the last start (median 42 s; the 99 s before it is another run), from the step a
    # restart resumes at: 260 x 42 s left
    assert got[("full", 1)].detail == ("stage 2/2: step 47/300 (42 s/step, ~3 h 02 min of steps left); "
                                       "a restart resumes at step 40")
    assert got[("stf", 0)].state == "training"
    # running: the steps left count from the step it is at, (1496 - 12) x 2 s
    assert got[("stf", 0)].detail == ("stage 1/2: step 12/1496 (2.0 s/step, ~49 min of steps left); "
                                      "a restart begins the stage again (no checkpoint yet)")
    assert got[("stf", 1)].state == "evaluating"  # each pass: real, the blind control, the curve point before the end
    assert got[("stf", 1)].detail.endswith("answers real 3/5, shuffled 0/5, step 10 0/5")
    assert got[("rand", 0)].state == "waiting" and "`full` seed 0" in got[("rand", 0)].detail
    assert got[("rand", 1)].state == "waiting"
    assert got[("abl", 0)].state == "not started" and ("abl", 1) not in got  # the row's own seeds
    # the command: one line per pair, the pending ones only on request, and the counts
    capsys.readouterr()
    plan_file = tmp_path / "plan.yaml"
    import yaml

    plan_file.write_text(yaml.safe_dump({
        "name": "p", "runs_dir": plan.runs_dir, "results_dir": plan.results_dir, "reference": "full",
        "seeds": [0, 1], "train_configs": ["s1.yaml", "s2.yaml"], "groups": {"1": "all"},
        "data": {"dir": str(tmp_path / "data"), "caption": 10, "train": 10, "val": 4, "test": 4},
        "rows": [{"name": "full", "group": "1", "compressor": "mlp2x_gelu"},
                 {"name": "rand", "group": "1", "from": "full", "reduce": "random", "budget": 4}]}))
    assert main(["study", "status", "--plan", str(plan_file), "--pending"]) == 0
    out = capsys.readouterr().out
    assert "full  s1  interrupted" in out and "full  s0" not in out
    assert out.strip().splitlines()[-1] == "4 (row, seed) pairs: 1 done, 1 interrupted, 2 waiting"
    assert main(["study", "status", "--plan", str(plan_file), "--rows", "nope"]) == 2


def test_per_step_keeps_fast_steps_readable():
    from compactvlm.study.status import _per_step

    assert _per_step(42.4) == "42 s/step"
    assert _per_step(2.0) == "2.0 s/step"
    assert _per_step(0.214) == "0.21 s/step"  # a stage-1 step, not "0 s/step"
