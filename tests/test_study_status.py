"""`study status`: each (row, seed)'s state read from the plan's folders, on constructed files (no training)."""

import json

from filelock import FileLock

from compactvlm.cli import main
from compactvlm.study.plan import StudyData, StudyPlan, StudyRow
from compactvlm.study.status import PairStatus, plan_status


def _plan(tmp_path, *more: StudyRow) -> StudyPlan:
    return StudyPlan(name="p", runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                     data=StudyData(dir=str(tmp_path / "data")), eval_steps=[10, 20],
                     train_configs=["s1.yaml", "s2.yaml"], reference="full", seeds=[0, 1],
                     rows=[StudyRow(name="full", compressor="mlp2x_gelu"), StudyRow(name="stf", compressor="stf"),
                           StudyRow(name="rand", from_="full", reduce="random", budget=4),
                           StudyRow(name="abl", compressor="stf", seeds=[0]), *more])


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
    plan = _plan(tmp_path, StudyRow(name="stf-long", compressor="stf", from_stage1="stf"),
                 StudyRow(name="full-long", compressor="mlp2x_gelu", from_stage1="full"))
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
         {"event": "train", "step": 47, "sec_per_step": 44.0}, {"event": "train", "step": 47, "sec_per_step": 42.0},
         {"event": "eval", "step": 20, "val_loss": 0.71}, {"event": "eval", "step": 40, "val_loss": 0.7},
         {"event": "eval", "step": 40, "val_loss": 0.6951})  # step 40 validated again after the resume: the last
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
                                       "val loss 20: 0.710, 40: 0.695; a restart resumes at step 40")
    assert got[("stf", 0)].state == "training"
    # running: the steps left count from the step it is at, (1496 - 12) x 2 s
    assert got[("stf", 0)].detail == ("stage 1/2: step 12/1496 (2.0 s/step, ~49 min of steps left); "
                                      "a restart begins the stage again (no checkpoint yet)")
    # a row that shares stf's stage 1 shows that training as stf's, not as a second one of its own
    assert got[("stf-long", 0)].state == "training"
    assert got[("stf-long", 0)].detail == "`stf`'s " + got[("stf", 0)].detail
    # full s1's stage 1 is trained and full-long's own stage 2 has not begun: not started, not "interrupted"
    assert got[("full-long", 1)].state == "not started"
    assert got[("full-long", 1)].detail == "`full`'s stage 1, which it shares, is trained"
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
    assert out.strip().splitlines()[-2] == "4 (row, seed) pairs: 1 done, 1 interrupted, 2 waiting"
    assert out.strip().splitlines()[-1] == "compute left: unknown (3 pairs without a cost_hint)"  # the plan has none
    assert main(["study", "status", "--plan", str(plan_file), "--rows", "nope"]) == 2


def test_per_step_keeps_fast_steps_readable():
    from compactvlm.study.status import _per_step

    assert _per_step(42.4) == "42 s/step"
    assert _per_step(2.0) == "2.0 s/step"
    assert _per_step(0.214) == "0.21 s/step"  # a stage-1 step, not "0 s/step"


def test_compute_left_sums_each_pairs_estimate_once(tmp_path):
    """The compute still needed: a last stage in progress at its measured pace plus an evaluation, the plan's
    cost_hint elsewhere, a gone source's retraining once for all the pairs that evaluate it, blocked pairs apart."""
    from compactvlm.study.status import compute_left

    plan = _plan(tmp_path)
    plan.rows.append(StudyRow(name="rand2", from_="full", reduce="random", budget=2))
    plan.cost_hint = {"trained": 90, "eval": 20, "full": 150}
    runs = tmp_path / "runs"
    res = tmp_path / "results" / "full" / "seed0.json"  # full s0: a result, its model gone (no precision on record)
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps({"metrics": {"family_mean": 40.0}, "controls": {}}))
    _final(runs / "full" / "s1" / "stage1")  # full s1: stage 2 at step 40 of 300 (checkpoint), 42 s/step, no process
    s2 = runs / "full" / "s1" / "stage2"
    _log(s2, {"event": "start", "step": 0, "total_steps": 300}, {"event": "train", "step": 40, "sec_per_step": 42.0})
    _checkpoint(s2, 40)
    _log(runs / "stf" / "s0" / "stage1", {"event": "start", "step": 0, "total_steps": 1496},
         {"event": "train", "step": 12, "sec_per_step": 2.0})  # an earlier stage: the row's hint
    _final(runs / "stf" / "s1" / "stage2")  # trained, to be evaluated
    got = {(p.row, p.seed): p for p in plan_status(plan)}
    assert got[("full", 0)].minutes_left == 0.0
    assert got[("full", 1)].state == "interrupted" and got[("full", 1)].minutes_left == 260 * 42 / 60 + 20
    assert got[("stf", 0)].minutes_left == 90 and got[("stf", 1)].minutes_left == 20
    assert got[("rand", 0)].needs == ("full", 0, 150.0) == got[("rand2", 0)].needs
    assert got[("rand", 1)].minutes_left == 20 and got[("rand", 1)].needs == ("full", 1, 150.0)
    assert got[("abl", 0)].state == "not started" and got[("abl", 0)].minutes_left == 90
    # 182 + 20 (full s1, which counts its own training) + 90 + 20 (stf) + 4 x 20 (rand, rand2) + 150 once (full s0
    # again: its pair is done) + 90 (abl) = 632 min
    line = compute_left(list(got.values()))
    assert line.startswith("compute left: ~10.5 h for 8 pairs") and "not counted" not in line
    # full s1 left out of the list: the random rows' wait for its training counts once, at the row's hint (150)
    line = compute_left([p for p in got.values() if p.row != "full"])
    assert line.startswith("compute left: ~9.7 h for 7 pairs")  # 632 - 202 (full s1) + 150 (its training) = 580 min
    # a pair with no estimate, and a blocked one, are named apart and add nothing
    plan.cost_hint = {"trained": 90}
    pairs = plan_status(plan) + [PairStatus("x", 0, "blocked", "why")]
    line = compute_left(pairs)
    # full s1 (its evaluation has no hint: the row's whole hint), stf s0, abl; stf s1 and the four random pairs
    # have no hint for an evaluation, nor does the retraining they would share count without them
    assert line.startswith("compute left: ~4.5 h for 3 pairs") and "not counted: 1 blocked, 5 without a cost_hint" in line
    assert compute_left([PairStatus("x", 0, "done", "", 0.0)]) == "compute left: none (every listed pair is done)"


def test_time_left_counts_the_validation_passes_left(tmp_path):
    """A stage that validates every 100 steps: the time left is its steps at their pace plus the passes it has still
    to run (every 100 steps before the last, and one at the end) at the median duration of those it logged since
    its latest start; without a duration logged, or without its train_config.yaml, only the steps are counted."""
    plan = _plan(tmp_path)
    _final(tmp_path / "runs" / "full" / "s0" / "stage1")
    s2 = tmp_path / "runs" / "full" / "s0" / "stage2"
    _log(s2, {"event": "start", "step": 0, "total_steps": 900},
         {"event": "eval", "step": 100, "val_loss": 0.71, "seconds": 999.0},  # another start's machine: not its pace
         {"event": "start", "step": 100, "total_steps": 900},
         {"event": "eval", "step": 200, "val_loss": 0.70, "seconds": 150.0},
         {"event": "eval", "step": 300, "val_loss": 0.69, "seconds": 170.0},
         {"event": "eval", "step": 400, "val_loss": 0.68, "seconds": 160.0},
         {"event": "train", "step": 450, "sec_per_step": 8.0})
    _checkpoint(s2, 450)
    (s2 / "train_config.yaml").write_text("eval:\n  every_steps: 100\n  at_end: true\n")
    got = plan_status(plan, rows=["full"], seeds=[0])[0]
    # 450 steps x 8 s = 60 min; passes at 500, 600, 700, 800 and the end (900): 5 x 160 s = 13.3 min
    assert got.detail == ("stage 2/2: step 450/900 (8.0 s/step, ~1 h 00 min of steps left + 5 validation passes at "
                          "~3 min: ~1 h 13 min); val loss 100: 0.710, 200: 0.700, 300: 0.690, 400: 0.680; "
                          "a restart resumes at step 450")
    plan.cost_hint = {"eval": 6}
    assert abs(plan_status(plan, rows=["full"], seeds=[0])[0].minutes_left - (60 + 800 / 60 + 6)) < 1e-6
    # no validation at the end, and the pass at step 500 already run when the restart counts from 500
    (s2 / "train_config.yaml").write_text("eval:\n  every_steps: 100\n  at_end: false\n")
    _checkpoint(s2, 500)
    assert "(8.0 s/step, ~53 min of steps left + 3 validation passes at ~3 min: ~1 h 01 min)" in \
        plan_status(plan, rows=["full"], seeds=[0])[0].detail
    (s2 / "train_config.yaml").unlink()  # unknown cadence: the steps alone, as before
    assert "(8.0 s/step, ~53 min of steps left);" in plan_status(plan, rows=["full"], seeds=[0])[0].detail
