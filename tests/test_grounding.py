"""The grounding objective (train.grounding, objective=grounding): where each object's target goes, the loss's
zero and weights, the token windows every windowed compressor declares, and a training run on a SceneQA build."""

import json
from pathlib import Path

import pytest
import torch

from compactvlm.compressors.base import create_compressor
from compactvlm.data.sceneqa import build_sceneqa
from compactvlm.encoders.base import EncoderInfo
from compactvlm.errors import CompactVLMError
from compactvlm.registry import COMPRESSORS
from compactvlm.train import train
from compactvlm.train.fixtures import tiny_train_config
from compactvlm.train.grounding import WordVectors, grounding_loss, matched_targets, num_objects, window_targets

D = 4
VEC = {"circle": torch.tensor([1.0, 0, 0, 0]), "red": torch.tensor([0, 1.0, 0, 0]),
       "dress": torch.tensor([0, 0, 1.0, 0]), "sign": torch.tensor([0, 0, 0, 1.0]), "stop": torch.tensor([0, 0, 0, 2.0])}


def vectors(words):
    return torch.stack([VEC[w] for w in words]).sum(0)


CIRCLE = {"box": [0.05, 0.05, 0.20, 0.20], "words": ["circle", "red"]}  # centre (0.125, 0.125): top-left window
DRESS = {"box": [0.60, 0.55, 0.90, 0.95], "words": ["dress"]}  # centre (0.75, 0.75): bottom-right window


def test_window_targets_put_each_object_at_the_window_of_its_centre():
    t, m = window_targets([CIRCLE, DRESS], (2, 2, 1), vectors, D)
    assert m.tolist() == [1, 0, 0, 1]
    assert torch.equal(t[0], VEC["circle"] + VEC["red"]) and torch.equal(t[3], VEC["dress"])
    assert torch.equal(t[1], torch.zeros(D)) and torch.equal(t[2], torch.zeros(D))
    t, m = window_targets([DRESS], (4, 4, 2), vectors, D)  # 4x4 windows, 2 tokens each: the window's first token
    assert m.nonzero().flatten().tolist() == [(3 * 4 + 3) * 2]


class _WordTokenizer:
    """Each word one token id, in order of first use (a leading space is ignored)."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        from types import SimpleNamespace
        return SimpleNamespace(input_ids=[self.ids.setdefault(w, len(self.ids)) for w in text.split()])


def test_place_words_say_where_the_object_is():
    torch.manual_seed(0)
    wv = WordVectors(_WordTokenizer(), torch.nn.Embedding(16, 8))
    up, down, left, right = (wv.word(w) for w in ("top", "bottom", "left", "right"))
    t, m = window_targets([CIRCLE, DRESS], (2, 2, 1), wv, 8, place=True)
    assert m.tolist() == [1, 0, 0, 1]
    # the circle's centre is (0.125, 0.125): mostly "top" and "left"; the dress's (0.75, 0.75): mostly "bottom", "right"
    assert torch.allclose(t[0], wv(["circle", "red"]) + 0.875 * up + 0.125 * down + 0.875 * left + 0.125 * right)
    assert torch.allclose(t[3], wv(["dress"]) + 0.25 * up + 0.75 * down + 0.25 * left + 0.75 * right)
    plain, _ = window_targets([CIRCLE, DRESS], (2, 2, 1), wv, 8)
    assert torch.allclose(plain[0], wv(["circle", "red"])) and torch.allclose(plain[3], wv(["dress"]))
    # the higher object's target is nearer "top" than the lower one's, by the difference of their places
    d = down - up
    assert float(((t[3] - wv(["dress"])) - (t[0] - wv(["circle", "red"]))) @ d) > 0
    tm, _ = matched_targets(torch.zeros(2, 8), [CIRCLE], wv, place=True)
    assert torch.allclose(tm.sum(0), t[0])
    # centred: the same differences between places, without the part every object shares
    c, _ = window_targets([CIRCLE, DRESS], (2, 2, 1), wv, 8, place="centred")
    assert torch.allclose(c[0], wv(["circle", "red"]) - 0.375 * d - 0.375 * (right - left))
    assert torch.allclose((c[3] - wv(["dress"])) - (c[0] - wv(["circle", "red"])),
                          (t[3] - wv(["dress"])) - (t[0] - wv(["circle", "red"])), atol=1e-6)
    centre = {"box": [0.4, 0.4, 0.6, 0.6], "words": ["dress"]}
    c, _ = window_targets([centre], (1, 1, 1), wv, 8, place="centred")
    assert torch.allclose(c[0], wv(["dress"]))


def test_matched_targets_give_each_object_its_own_nearest_token():
    tokens = torch.stack([VEC["dress"], torch.zeros(D), VEC["circle"] + VEC["red"]])  # (3, D)
    t, m = matched_targets(tokens, [CIRCLE, DRESS], vectors)
    assert m.tolist() == [1, 0, 1]
    assert torch.equal(t[0], VEC["dress"]) and torch.equal(t[2], VEC["circle"] + VEC["red"])
    t, m = matched_targets(tokens[:1], [CIRCLE, DRESS], vectors)  # more objects than tokens: one is matched
    assert m.tolist() == [1]


def test_grounding_loss_is_zero_at_the_targets_and_weighs_images_by_their_objects():
    perfect = torch.zeros(2, 4, D)  # two images, 2x2 windows
    perfect[0, 0] = VEC["circle"] + VEC["red"]
    perfect[0, 3] = VEC["dress"]
    objects = [[CIRCLE, DRESS], []]
    loss, n = grounding_loss(perfect, objects, vectors, (2, 2, 1), background=0.1)
    assert float(loss) == 0.0 and float(n) == 3.0 == sum(num_objects(o) for o in objects)
    wrong = perfect.clone()
    wrong[0, 3] = 0  # the dress is missing: its token's MSE is 1/4, averaged over the image's 2 object tokens
    loss, _ = grounding_loss(wrong, objects, vectors, (2, 2, 1), background=0.1)
    assert float(loss) == pytest.approx(2 * (0.25 / 2))
    noisy = perfect.clone()
    noisy[1] = 1.0  # an image without objects: its tokens are pulled to 0 with the background weight
    loss, _ = grounding_loss(noisy, objects, vectors, (2, 2, 1), background=0.1)
    assert float(loss) == pytest.approx(0.1 * 1.0)
    with pytest.raises(CompactVLMError, match="declares"):
        grounding_loss(perfect, objects, vectors, (3, 3, 1))


@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_declared_token_windows_tile_the_output(name):
    enc = EncoderInfo(hidden_size=8, num_layers=4, patch_size=2, image_size=16, num_heads=2)  # an 8x8 grid
    params = {"E": 2} if name.startswith("stf") else {}
    try:
        comp = create_compressor(name, enc=enc, llm_dim=8, **params)
    except (CompactVLMError, TypeError):
        comp = create_compressor(name, enc=enc, llm_dim=8)
    win = comp.token_windows()
    if win is not None:
        rows, cols, per = win
        assert rows * cols * per == comp.num_output_tokens()
        assert 8 % rows == 0 and 8 % cols == 0


@pytest.fixture(scope="module")
def sceneqa(tmp_path_factory):
    d = tmp_path_factory.mktemp("sceneqa")
    build_sceneqa(d, seed=0, progress=False, sizes={"caption": 0, "train": 16, "val": 4, "test": 0})
    # validation on held-out training images (the val split's conversations are fine too)
    recs = json.loads((d / "train.json").read_text())
    (d / "held.json").write_text(json.dumps(recs[12:]))
    (d / "fit.json").write_text(json.dumps(recs[:12]))
    return d


GROUND = ["objective=grounding", "stage.modules={encoder: frozen, compressor: full, llm: frozen}", "optim.lr=1e-2",
          "threads=1", "eval.every_steps=0", "eval.at_start=true", "eval.at_end=true", "data.shuffle=false"]


@pytest.mark.parametrize("cache", [True, False])
def test_grounding_stage_trains_the_compressor_towards_its_targets(tmp_path, sceneqa, cache):
    cfg = tiny_train_config(tmp_path, GROUND + [f"data.train={sceneqa / 'fit.json'}", f"data.val={sceneqa / 'held.json'}",
                                                "model.compressor=stf:k=2,E=1", "optim.epochs=8",
                                                f"cache_features={str(cache).lower()}"])
    result = train(cfg)
    evals = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in l]
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert last < 0.5 * first, (first, last)
    assert (result.final_dir / "compressor.safetensors").exists()


def test_grounding_runs_for_a_compressor_without_windows(tmp_path, sceneqa):
    cfg = tiny_train_config(tmp_path, GROUND + [f"data.train={sceneqa / 'fit.json'}", "data.val=null",
                                                "model.compressor=qformer:tokens=4", "optim.max_steps=2"])
    assert (train(cfg).final_dir / "compactvlm.json").exists()


def test_grounding_refuses_a_trained_llm_and_data_without_scenes(tmp_path, sceneqa):
    with pytest.raises(CompactVLMError, match="compressor only") as e:  # at config load, before any model load
        tiny_train_config(tmp_path / "a", GROUND + [f"data.train={sceneqa / 'fit.json'}", "data.val=null",
                                                    "optim.max_steps=1", "stage.modules.llm=full"])
    assert "llm=frozen" in e.value.fix
    cfg = tiny_train_config(tmp_path / "b", GROUND + ["optim.max_steps=1"])  # the tiny colour data: no scenes
    with pytest.raises(CompactVLMError, match="grounding objective needs the objects") as e:
        train(cfg)
    assert "objective=lm" in e.value.fix
    with pytest.raises(CompactVLMError, match="'objective': 'captions' is not one of"):
        tiny_train_config(tmp_path / "c", ["objective=captions"])


def test_grounding_readout_reads_every_object_of_a_place_grounded_run(tmp_path, sceneqa):
    import importlib.util

    from compactvlm.data.sceneqa.vocab import COLOURS

    cfg = tiny_train_config(tmp_path, GROUND + [f"data.train={sceneqa / 'fit.json'}", "data.val=null",
                                                "model.compressor=stf:k=2,E=1", "optim.epochs=2", "grounding_place=true"])
    final = train(cfg).final_dir
    spec = importlib.util.spec_from_file_location("grounding_readout", Path(__file__).parents[1] / "scripts" / "grounding_readout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "readout.json"
    assert mod.main([str(final), "--data", str(sceneqa), "--split", "val", "--out", str(out)]) == 0
    table = json.loads(out.read_text())["readout"]
    scenes = [json.loads(l) for l in (sceneqa / "val_scenes.jsonl").read_text().splitlines()]
    objects = [o for s in scenes for o in s["objects"]]
    assert table["name"]["n"] == len(objects)
    assert table["colour"]["n"] == sum(o.get("color") is not None for o in objects)
    assert table["colour"]["chance"] == round(100 / len(COLOURS), 1)
    assert all(0 <= v["accuracy"] <= 100 for v in table.values())
    with pytest.raises(CompactVLMError, match="not found"):
        mod.main([str(final), "--data", str(sceneqa), "--split", "nosuch"])
