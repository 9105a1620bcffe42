"""Training Mask-LLaVA's `objects` compressor with the `given` mask source: every training sample brings its own
SceneQA object masks to the compressor (with and without the feature cache); data without masks is refused."""

import json

import numpy as np
import pytest

from compactvlm.compressors.masks.given import GivenMasks
from compactvlm.data.sceneqa import build_sceneqa
from compactvlm.data.sceneqa.masks import object_masks
from compactvlm.errors import CompactVLMError
from compactvlm.train import train
from compactvlm.train.fixtures import tiny_train_config

OBJECTS = ["model.compressor=objects", "model.compressor_params={pool_grid: 2, max_objects: 4, mask_source: given}",
           "optim.max_steps=2", "eval.every_steps=0", "threads=1"]


@pytest.fixture(scope="module")
def sceneqa(tmp_path_factory):
    d = tmp_path_factory.mktemp("sceneqa")
    build_sceneqa(d, seed=0, progress=False, sizes={"caption": 0, "train": 6, "val": 2, "test": 2})
    return d


@pytest.mark.parametrize("cache", [True, False])
def test_training_feeds_each_samples_own_masks(tmp_path, sceneqa, monkeypatch, cache):
    seen = []
    real = GivenMasks.__call__

    def spy(self, feats, max_masks):
        seen.append([m.clone() for m in feats.extra_state["masks"]])
        return real(self, feats, max_masks)

    monkeypatch.setattr(GivenMasks, "__call__", spy)
    cfg = tiny_train_config(tmp_path, OBJECTS + [f"data.train={sceneqa / 'train.json'}", "data.val=null",
                                                 f"cache_features={str(cache).lower()}", "data.shuffle=false"])
    result = train(cfg)
    assert (result.final_dir / "compactvlm.json").exists()
    assert seen, "the given mask source was never called"
    # the first batch holds the first samples in file order (no shuffling): their own label maps, at 32 px
    records = json.loads((sceneqa / "train.json").read_text())
    for got, rec in zip(seen[0], records):
        want = object_masks(sceneqa, rec["image"], size=(32, 32))[0]
        assert got.shape == want.shape and np.array_equal(got.cpu().numpy(), want)
    assert any(len(m) > 0 for batch in seen for m in batch)


def test_given_masks_need_a_dataset_with_masks(tmp_path):
    cfg = tiny_train_config(tmp_path, OBJECTS)  # tiny colour data: no scene files, no label maps
    with pytest.raises(CompactVLMError, match="'given' mask source needs the object masks") as e:
        train(cfg)
    assert "mask_source=unsupervised" in e.value.fix
    assert not (tmp_path / "run" / "final").exists()


def test_unsupervised_objects_train_without_masks(tmp_path):
    cfg = tiny_train_config(tmp_path, [o.replace("mask_source: given", "mask_source: unsupervised") for o in OBJECTS])
    assert (train(cfg).final_dir / "compactvlm.json").exists()
