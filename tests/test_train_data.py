"""Training data and objective: LLaVA JSON reading, padding/positions/labels, label-position loss, feature cache."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compactvlm.data.llava import LlavaDataset, collate_llava, num_label_tokens, read_llava_json
from compactvlm.errors import CompactVLMError
from compactvlm.model.prompting import IGNORE_INDEX, IMAGE_TOKEN_ID
from compactvlm.testing import tiny_vlm
from compactvlm.train.fixtures import write_llava_json
from compactvlm.train.objective import FeatureCache, TrainingModel, check_cacheable


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    return write_llava_json(root, n=6, seed=3)


def dataset(model, path, **kw):
    return LlavaDataset(path, model.tokenizer, model.num_image_tokens(), model.processor, **kw)


def test_padding_attention_positions_and_answer_only_labels(data):
    model = tiny_vlm("mlp2x_gelu")
    ds = dataset(model, data)
    items = [ds[0], ds[1]]
    # make the second sample longer so the first one is padded
    items[1] = dict(items[1], input_ids=items[1]["input_ids"] + [5, 6], labels=items[1]["labels"] + [5, 6])
    b = collate_llava(items, pad_id=model.tokenizer.pad_token_id)
    n0 = len(items[0]["input_ids"])
    assert b["input_ids"].shape == (2, n0 + 2) and b["pixel_values"].shape == (2, 3, 32, 32)
    assert b["attention_mask"][0].tolist() == [1] * n0 + [0, 0]
    assert (b["labels"][0, n0:] == IGNORE_INDEX).all()
    assert b["position_ids"][0, :n0].tolist() == list(range(n0))
    assert b["position_ids"][1].tolist() == list(range(n0 + 2))
    assert int((b["input_ids"][0] == IMAGE_TOKEN_ID).sum()) == model.num_image_tokens()
    # labels: exactly the answer ("<colour> ." + end of turn), nothing of the question or image
    lab = [t for t in items[0]["labels"] if t != IGNORE_INDEX]
    answer = json.loads(data.read_text())[0]["conversations"][1]["value"]
    assert model.tokenizer.decode(lab, skip_special_tokens=True).replace(" ", "") == answer.replace(" ", "")
    assert num_label_tokens(b["labels"]) == len(lab) + len([t for t in items[1]["labels"] if t != IGNORE_INDEX])


def test_dataset_errors(tmp_path, data):
    model = tiny_vlm("mlp2x_gelu")
    recs = json.loads(data.read_text())
    bad = tmp_path / "missing.json"
    bad.write_text(json.dumps([dict(recs[0], image="images/nope.png")]))
    with pytest.raises(CompactVLMError, match="missing"):
        dataset(model, bad, image_root=data.parent)
    esc = tmp_path / "escape.json"
    esc.write_text(json.dumps([dict(recs[0], image="../../etc/passwd")]))
    with pytest.raises(CompactVLMError, match="escapes"):
        dataset(model, esc, image_root=data.parent)
    text_only = data.parent / "text_only.json"
    text_only.write_text(json.dumps([{k: v for k, v in recs[0].items() if k != "image"}, recs[1]]))
    with pytest.raises(CompactVLMError, match="text_only=skip"):
        dataset(model, text_only)
    assert len(dataset(model, text_only, text_only="skip")) == 1
    notlist = tmp_path / "obj.json"
    notlist.write_text("{}")
    with pytest.raises(CompactVLMError, match="list"):
        read_llava_json(notlist)
    with pytest.raises(CompactVLMError, match="max_length"):
        dataset(model, data, max_length=10)[0]


def _batch(model, data, n=3):
    ds = dataset(model, data)
    return collate_llava([ds[i] for i in range(n)], pad_id=model.tokenizer.pad_token_id)


def test_label_position_loss_equals_full_logits_loss(data):
    model = tiny_vlm("stf", k=2, E=1)
    b = _batch(model, data)
    x = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values")}
    tm_lab, tm_all = TrainingModel(model, "labels"), TrainingModel(model, "all")
    s1, n1 = tm_lab(**x)
    s2, n2 = tm_all(**x)
    assert int(n1) == int(n2) == num_label_tokens(b["labels"]) > 0
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    # and equals HF's own token-mean loss from the full model forward
    out = model(b["input_ids"], b["attention_mask"], b["pixel_values"], labels=b["labels"],
                position_ids=b["position_ids"])
    torch.testing.assert_close(s1 / n1, out.loss, rtol=1e-5, atol=1e-5)
    # gradients agree too
    g = []
    for tm in (tm_lab, tm_all):
        model.zero_grad()
        tm(**x)[0].backward()
        g.append(torch.cat([p.grad.flatten() for p in model.compressor.parameters()]))
    assert g[0].abs().sum() > 0
    torch.testing.assert_close(g[0], g[1], rtol=1e-4, atol=1e-6)


def test_loss_ignores_padding(data):
    """Appending padding to a batch changes nothing."""
    model = tiny_vlm("mlp2x_gelu")
    b = _batch(model, data, 2)
    x = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values")}
    pad = dict(x)
    for k, v in (("input_ids", model.tokenizer.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX),
                 ("position_ids", 0)):
        pad[k] = F.pad(x[k], (0, 5), value=v)
    tm = TrainingModel(model)
    torch.testing.assert_close(tm(**x)[0], tm(**pad)[0], rtol=1e-5, atol=1e-5)


def test_feature_cache_blocks_keep_every_sample(monkeypatch):
    """Samples spread over several preallocated blocks come back exactly, in any order, and each is encoded once."""
    model = tiny_vlm("stf", k=2, E=1)
    monkeypatch.setattr(FeatureCache, "CHUNK", 2)
    layers = [model.encoder.info.normalize_layer(l) for l in model.compressor.feature_layers()]
    cache = FeatureCache(layers)
    pix = torch.randn(5, 3, 32, 32)
    want = model.encoder(pix, layers=layers).hidden
    calls = []
    orig = model.encoder.forward
    model.encoder.forward = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    cache.features(model, torch.tensor([0, 1, 2]), pix[:3], torch.device("cpu"))
    cache.features(model, torch.tensor([3, 4]), pix[3:], torch.device("cpu"))
    got = cache.features(model, torch.tensor([4, 0, 3]), torch.zeros(3, 3, 32, 32), torch.device("cpu"))
    assert len(calls) == 2 and len(cache) == 5 and len(cache.blocks[layers[0]]) == 3
    for l in layers:
        torch.testing.assert_close(got[l], want[l][[4, 0, 3]])


def test_feature_cache_same_loss_and_validity(data):
    model = tiny_vlm("stf", k=2, E=1)
    b = _batch(model, data)
    tm = TrainingModel(model)
    x = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "position_ids")}
    direct = tm(**x, pixel_values=b["pixel_values"])[0]
    cache = FeatureCache([model.encoder.info.normalize_layer(l) for l in model.compressor.feature_layers()])
    f1 = cache.features(model, b["index"], b["pixel_values"], torch.device("cpu"))
    assert len(cache) == 3
    f2 = cache.features(model, b["index"], torch.zeros_like(b["pixel_values"]), torch.device("cpu"))  # from cache
    for k in f1:
        assert torch.equal(f1[k], f2[k])
    torch.testing.assert_close(tm(**x, features=f2)[0], direct, rtol=1e-6, atol=1e-6)
    assert check_cacheable(model) is None
    # VisToG's isolated semantic tokens run beside cached image blocks; with full attention the blocks change
    assert check_cacheable(tiny_vlm("vistog", tokens=4, grouping=True)) is None
    assert "that the image tokens attend to" in check_cacheable(tiny_vlm("vistog", tokens=4, attention="full"))
    # declared on the compressor (via its mask source), not guessed: detector + SAM read the pixels
    assert "reads the image" in check_cacheable(tiny_vlm("objects", mask_source="detector_sam"))
    assert check_cacheable(tiny_vlm("objects")) is None
    for p in model.encoder.parameters():
        p.requires_grad_(True)
    assert "encoder is trained" in check_cacheable(model)


def test_reduction_active_in_training_reads_cache_and_passes_gradients(data):
    """A training-free reduction set while training (train.config.ReduceConfig): the dataset places its token count,
    the cached path gives the loss of the direct one, and the compressor gets gradients through the kept tokens."""
    model = tiny_vlm("mlp2x_gelu")
    full = model.num_image_tokens()
    model.set_budget(3, reduce="dart", pivots=1)
    assert model.num_image_tokens() == 3 < full
    b = _batch(model, data)
    assert int((b["input_ids"][0] == IMAGE_TOKEN_ID).sum()) == 3
    x = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "position_ids")}
    tm = TrainingModel(model)
    assert check_cacheable(model) is None  # DART reads only the encoder's blocks
    cache = FeatureCache([model.encoder.info.normalize_layer(l) for l in model.feature_layers()])
    feats = cache.features(model, b["index"], b["pixel_values"], torch.device("cpu"))
    direct = tm(**x, pixel_values=b["pixel_values"])[0]
    cached = tm(**x, features=feats)[0]
    torch.testing.assert_close(cached, direct, rtol=1e-6, atol=1e-6)
    model.zero_grad()
    cached.backward()
    grads = [p.grad for p in model.compressor.parameters()]
    assert grads and all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    # an in-LLM reduction cannot be cached (nor trained through: ReduceConfig refuses it)
    model.set_budget(3, reduce="fastv", k=1)
    assert "reads more than the encoder's blocks" in check_cacheable(model)


def _before_llm():
    from compactvlm.registry import REDUCTIONS

    return [n for n in REDUCTIONS.names() if not REDUCTIONS.get(n).in_llm]


@pytest.mark.parametrize("name", _before_llm())
def test_every_reduction_before_the_llm_trains(data, name):
    """What ReduceConfig admits (every registered reduction that runs before the LLM) trains: the loss over its kept
    tokens is finite and reaches the compressor's weights."""
    model = tiny_vlm("mlp2x_gelu")
    budget = 16  # avgpool: a square; tome: its tiny encoder's 3 blocks take 64 tokens to 8 at the most
    model.set_budget(budget, reduce=name)
    b = _batch(model, data)
    assert int((b["input_ids"][0] == IMAGE_TOKEN_ID).sum()) == budget
    x = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "position_ids", "pixel_values")}
    loss, _ = TrainingModel(model)(**x)
    assert torch.isfinite(loss)
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.compressor.parameters() if p.grad is not None) > 0


def test_bad_training_json_is_refused_before_the_model_load(tmp_path, monkeypatch):
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    cfg = tiny_train_config(tmp_path)
    p = Path(cfg.data.train)
    p.write_bytes(p.read_bytes().replace(b"colour", "colo\u00fcr".encode("latin-1")))
    import compactvlm.model.build as build
    import compactvlm.model.checkpoint  # noqa: F401  imported first: its own `build_model` name stays the real one

    monkeypatch.setattr(build, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    with pytest.raises(CompactVLMError, match="is not UTF-8 text"):
        train(cfg)


def test_feature_store_on_disk_is_shared_by_runs(tmp_path):
    """A second cache over the same store encodes nothing and returns the same features; a different image misses."""
    from compactvlm.train.objective import FeatureStore, store_tag

    model = tiny_vlm("stf", k=2, E=1)
    layers = [model.encoder.info.normalize_layer(l) for l in model.compressor.feature_layers()]
    tag = store_tag(model, layers, "fp32")
    pix = torch.randn(3, 3, 32, 32)
    first = FeatureCache(layers, FeatureStore(tmp_path, tag))
    want = first.features(model, torch.tensor([0, 1, 2]), pix, torch.device("cpu"))
    assert len(list((tmp_path / tag).glob("*.safetensors"))) == 3
    calls = []
    orig = model.encoder.forward
    model.encoder.forward = lambda *a, **k: (calls.append(a[0].shape[0]), orig(*a, **k))[1]
    store = FeatureStore(tmp_path, tag)
    second = FeatureCache(layers, store)
    got = second.features(model, torch.tensor([5, 6, 7]), pix, torch.device("cpu"))  # other indices, same images
    assert calls == [] and store.hits == 3
    for l in layers:
        assert torch.equal(got[l], want[l])
    new = torch.randn(1, 3, 32, 32)
    second.features(model, torch.tensor([5, 8]), torch.cat([pix[:1], new]), torch.device("cpu"))
    assert calls == [1]  # only the new image went through the encoder
    # another encoder (weights), other layers or another precision: another folder
    other = tiny_vlm("stf", k=2, E=1)
    with torch.no_grad():
        next(other.encoder.parameters()).add_(1.0)
    assert len({tag, store_tag(other, layers, "fp32"), store_tag(model, layers, "bf16"),
                store_tag(model, [0], "fp32")}) == 4


def test_feature_cache_dir_trains_the_same_and_encodes_once(tmp_path):
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    def losses(run, extra):
        cfg = tiny_train_config(tmp_path / run, ["cache_features=true", "optim.max_steps=4", "eval.every_steps=0"] + extra)
        train(cfg)
        rows = [json.loads(l) for l in (tmp_path / run / "run" / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r and r.get("event") != "eval"]

    store = tmp_path / "features"
    plain = losses("a", [])
    first = losses("b", [f"feature_cache_dir={store}"])
    files = sorted(p.name for p in store.rglob("*.safetensors"))
    second = losses("c", [f"feature_cache_dir={store}"])
    assert files and sorted(p.name for p in store.rglob("*.safetensors")) == files  # nothing new written
    assert plain == pytest.approx(first, rel=1e-5) and first == pytest.approx(second, rel=1e-5)
    with pytest.raises(CompactVLMError, match="cache_features"):
        tiny_train_config(tmp_path / "d", [f"feature_cache_dir={store}"])


def test_caches_encode_a_repeated_image_once():
    """A batch that holds one image twice (the blank control's repeated index, a study's shared test image) costs one
    encoder pass for it in both caches, and the evaluation cache counts its memory once."""
    from compactvlm.model.features import ImageFeatureCache

    model = tiny_vlm("stf", k=2, E=1)
    layers = [model.encoder.info.normalize_layer(l) for l in model.compressor.feature_layers()]
    calls = []
    orig = model.encoder.forward
    model.encoder.forward = lambda *a, **k: (calls.append(a[0].shape[0]), orig(*a, **k))[1]
    pix = torch.randn(2, 3, 32, 32)
    train_cache = FeatureCache(layers)
    got = train_cache.features(model, torch.tensor([7, 7, 3]), pix[[0, 0, 1]], torch.device("cpu"))
    assert calls == [2] and len(train_cache) == 2 and train_cache.encoded == 2
    for l in layers:
        assert torch.equal(got[l][0], got[l][1])
    calls.clear()
    eval_cache = ImageFeatureCache()
    hidden = eval_cache.hidden(model, pix[[1, 0, 1]])
    assert calls == [2] and eval_cache.encoded == 2 and len(eval_cache.mem) == 2
    assert eval_cache.nbytes == sum(t.numel() * t.element_size() for f in eval_cache.mem.values() for t in f.values())
    want = orig(pix, layers=layers).hidden
    for l in layers:
        torch.testing.assert_close(hidden[l], want[l][[1, 0, 1]])
    eval_cache.hidden(model, pix)
    assert calls == [2] and eval_cache.hits == 2  # both images from memory


def test_isolated_extra_tokens_train_and_answer_from_cached_blocks(tmp_path):
    """VisToG from cached blocks: the caches keep every block input up to the one read (training's on disk only, in
    the dtype asked), and the tokens, the loss and its gradients equal the encoder's own run."""
    from compactvlm.model.features import ImageFeatureCache, cached_layers, encode_from_features
    from compactvlm.train.objective import FeatureStore, store_tag

    torch.manual_seed(0)
    vis = tiny_vlm("vistog", tokens=4, grouping=True)
    last = vis.encoder.info.normalize_layer(vis.compressor.layer)
    layers = cached_layers(vis)
    assert layers == list(range(last + 1))
    pix = torch.randn(3, 3, 32, 32)
    vis.compressor.eval()  # no Gumbel noise: one assignment for both runs
    with torch.no_grad():
        want = vis.encode_images(pix)
        got = encode_from_features(vis, ImageFeatureCache().hidden(vis, pix))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    store = FeatureStore(tmp_path, store_tag(vis, layers, "fp32"))
    cache = FeatureCache(layers, store, memory=False)
    feats = cache.features(vis, torch.tensor([0, 1, 2]), pix, torch.device("cpu"))
    assert len(cache) == 0 and store.written == 3  # nothing held in memory: every block is on disk
    again = cache.features(vis, torch.tensor([0, 1, 2]), pix, torch.device("cpu"))
    assert store.hits == 3 and all(torch.equal(feats[l], again[l]) for l in layers)
    direct = vis.encode_images(pix)
    direct.square().sum().backward()
    g_direct = vis.compressor.semantic_tokens.grad.clone()
    vis.compressor.semantic_tokens.grad = None
    cached = encode_from_features(vis, again)
    cached.square().sum().backward()
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vis.compressor.semantic_tokens.grad, g_direct, atol=1e-5, rtol=1e-4)

    half = FeatureCache(layers, FeatureStore(tmp_path, store_tag(vis, layers, "bf16")), memory=False,
                        dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in half.features(vis, torch.tensor([0]), pix[:1],
                                                                 torch.device("cpu")).values())
    with pytest.raises(ValueError, match="needs a FeatureStore"):
        FeatureCache(layers, None, memory=False)


def test_vistog_training_caches_its_blocks_on_disk_only(tmp_path, capfd):
    """Training VisToG with cache_features: without a feature_cache_dir it says why it does not cache (every block
    of every image would be held in memory); with one, the blocks go to disk and the losses equal the uncached run."""
    from safetensors.torch import load_file

    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    def run(name, extra):
        cfg = tiny_train_config(tmp_path / name, ["model.compressor=vistog:tokens=4", "cache_features=true",
                                                  "optim.max_steps=3", "eval.every_steps=0"] + extra)
        train(cfg)
        rows = [json.loads(l) for l in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        return capfd.readouterr().err, [r["loss"] for r in rows if "loss" in r and r.get("event") != "eval"]

    store = tmp_path / "features"
    err_plain, plain = run("a", [])
    assert "cache_features off: the extra tokens read every encoder block" in err_plain
    err_disk, disk = run("b", [f"feature_cache_dir={store}"])
    assert "encoder features on disk" in err_disk
    files = list(store.rglob("*.safetensors"))
    assert files and disk == pytest.approx(plain, rel=1e-4)
    keys = set(load_file(str(files[0])))
    assert len(keys) > 2 and keys == {f"layer{i}" for i in range(len(keys))}  # blocks 0.. up to the one read
