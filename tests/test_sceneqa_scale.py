"""SceneQA's object_scale: larger objects in the training splits only; scale 1 changes nothing."""

import json

import pytest

from compactvlm.data.sceneqa import build_sceneqa
from compactvlm.errors import CompactVLMError


def _boxes(out, split):
    rows = [json.loads(l) for l in (out / f"{split}_scenes.jsonl").read_text().splitlines()]
    return [(o["box"][2] - o["box"][0]) for r in rows for o in r["objects"] if o["kind"] == "shape"]


def _read(out, name):
    return (out / name).read_bytes()


@pytest.mark.parametrize("workers", [1])
def test_scale_grows_training_objects_and_leaves_evaluation_splits_alone(tmp_path, workers):
    sizes = {"caption": 24, "train": 12, "val": 6, "test": 6}
    a = build_sceneqa(tmp_path / "a", seed=3, sizes=sizes, progress=False, workers=workers)
    b = build_sceneqa(tmp_path / "b", seed=3, sizes=sizes, progress=False, workers=workers, object_scale=1.75)
    c = build_sceneqa(tmp_path / "c", seed=3, sizes=sizes, progress=False, workers=workers, object_scale=1.0)
    assert b["object_scale"] == {"caption": 1.75, "train": 1.75, "val": 1.0, "test": 1.0}
    for name in ("test_questions.jsonl", "test_answers.jsonl", "val.json", "test_scenes.jsonl"):
        assert _read(tmp_path / "a", name) == _read(tmp_path / "b", name)  # evaluation splits unchanged
    for name in ("caption.json", "train.json", "test_answers.jsonl"):
        assert _read(tmp_path / "a", name) == _read(tmp_path / "c", name)  # scale 1 == no scale
    small, big = _boxes(tmp_path / "a", "caption"), _boxes(tmp_path / "b", "caption")
    assert small and big and min(big) >= 34 and max(small) <= 40 and sum(big) / len(big) > 1.5 * sum(small) / len(small)


def test_scale_out_of_range_is_refused(tmp_path):
    with pytest.raises(CompactVLMError, match="object_scale"):
        build_sceneqa(tmp_path / "x", sizes={"caption": 1, "train": 0, "val": 0, "test": 0}, progress=False,
                      object_scale=5)
