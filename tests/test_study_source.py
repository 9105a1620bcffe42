"""An evaluation-only row whose source has a result but no model on this machine (study.source): `study status`
says so, and `study run` refuses before any work where a retraining here cannot reproduce the source's result."""

import json
from pathlib import Path

import pytest

from compactvlm.errors import CompactVLMError
from compactvlm.study.plan import StudyData, StudyPlan, StudyRow
from compactvlm.study.run import run_row
from compactvlm.study.source import forced_retraining, missing_source
from compactvlm.study.status import pair_status

ROOT = Path(__file__).resolve().parents[1]


def _plan(tmp_path) -> StudyPlan:
    return StudyPlan(name="p", runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"),
                     data=StudyData(dir=str(tmp_path / "data")), reference="full", seeds=[0],
                     # the real recipe: both stages say `precision: auto`
                     train_configs=[str(ROOT / "configs/train/recipe_ground.yaml"),
                                    str(ROOT / "configs/train/recipe_stage2_ground.yaml")],
                     cost_hint={"full": 240},
                     rows=[StudyRow(name="full", compressor="mlp2x_gelu"),
                           StudyRow(name="rand", from_="full", reduce="random", budget=4),
                           StudyRow(name="stf", compressor="stf")])


def _source_result(tmp_path, precision: str) -> None:
    res = tmp_path / "results" / "full" / "seed0.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps({"metrics": {"family_mean": 40.0},
                               "hardware": {"device": "cpu", "cpu_capability": "AVX2"},
                               "stages": [{"train": {"precision": precision}}, {"train": {"precision": precision}}]}))


@pytest.fixture
def bf16_machine(monkeypatch):
    import compactvlm.train.trainer as trainer

    monkeypatch.setattr(trainer, "bf16_is_fast", lambda device="cpu": True)  # `auto` resolves to bf16 here


def test_other_precision_blocks_the_row_before_any_work(tmp_path, bf16_machine):
    plan = _plan(tmp_path)
    _source_result(tmp_path, "fp32")
    gone = missing_source(plan, "rand", 0)
    assert gone is not None and not gone.reproducible and gone.source == "full"
    assert "not on this machine" in gone.message and "fp32/fp32 (AVX2)" in gone.message and "bf16/bf16" in gone.message
    assert "~4.0 h" in gone.message and "--rows full --seeds 0 --force" in gone.fix
    st = pair_status(plan, "rand", 0)
    assert st.state == "blocked" and st.detail == gone.message
    with pytest.raises(CompactVLMError, match="cannot here"):
        run_row(plan, "rand", 0, progress=False)
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # nothing built, nothing trained


def test_same_precision_warns_and_waits(tmp_path, bf16_machine):
    plan = _plan(tmp_path)
    _source_result(tmp_path, "bf16")
    gone = missing_source(plan, "rand", 0)
    assert gone is not None and gone.reproducible and "cannot here" not in gone.message
    assert "would train `full` again first" in gone.message
    assert pair_status(plan, "rand", 0).state == "waiting"


def test_nothing_to_say_when_the_model_is_there_or_the_source_has_no_result(tmp_path, bf16_machine):
    plan = _plan(tmp_path)
    assert missing_source(plan, "rand", 0) is None  # no result: training the source is the normal path
    assert pair_status(plan, "rand", 0).detail == "for `full` seed 0 to finish training"
    _source_result(tmp_path, "fp32")
    final = tmp_path / "runs" / "full" / "s0" / "stage2" / "final"
    final.mkdir(parents=True)
    (final / "compactvlm.json").write_text("{}")
    assert missing_source(plan, "rand", 0) is None
    assert missing_source(plan, "stf", 0) is None and missing_source(plan, "full", 0) is None  # trained rows


def test_forced_retraining_names_a_trained_row_whose_model_is_gone(tmp_path):
    plan = _plan(tmp_path)
    assert forced_retraining(plan, "full", 0) is None  # no result yet: --force just trains it
    _source_result(tmp_path, "bf16")
    final = tmp_path / "runs" / "full" / "s0" / "stage2" / "final"
    said = forced_retraining(plan, "full", 0)
    assert said is not None and f"({final} is missing): it is trained again (~4.0 h" in said and "not re-scored" in said
    assert forced_retraining(plan, "rand", 0) is None  # evaluation-only: missing_source speaks for its source
    final.mkdir(parents=True)
    (final / "compactvlm.json").write_text("{}")
    assert forced_retraining(plan, "full", 0) is None  # the model is there: --force re-scores it
