"""Registry-driven checks that every registered compressor must pass (including ones added later).

Each compressor is built with its default options on a tiny random-config DINOv2 (width 32, 4 blocks,
2 heads, patch 4, 32 px -> 8x8 grid) and llm_dim 24. Two optional class attributes adapt this:
- ``test_options``: dict of options merged in for this tiny encoder (e.g. a budget that fits 8x8);
- ``test_inputs``: a string naming inputs the generic test cannot make (e.g. "object masks in
  extra_state"); when set, the compressor is skipped here and must be tested in its own test file.
"""

from __future__ import annotations

import inspect
import sys

import pytest
import torch

from compactvlm.compressors import create_compressor
from compactvlm.compressors.base import WindowCompressor
from compactvlm.encoders.hf import HFVisionEncoder
from compactvlm.errors import CompactVLMError
from compactvlm.registry import COMPRESSORS

LLM_DIM = 24
BATCH = 2
NAMES = COMPRESSORS.names()


@pytest.fixture(scope="module")
def encoder() -> HFVisionEncoder:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       patch_size=4, image_size=32)
    enc = HFVisionEncoder(Dinov2Model(cfg)).eval()
    enc.requires_grad_(False)
    return enc


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def build(name: str, encoder: HFVisionEncoder, seed: int = 0):
    cls = COMPRESSORS.get(name)
    needs = getattr(cls, "test_inputs", None)
    if needs:
        pytest.skip(f"{name} needs {needs}")
    torch.manual_seed(seed)
    return create_compressor(name, encoder.info, LLM_DIM, **dict(getattr(cls, "test_options", None) or {}))


def run(comp, encoder: HFVisionEncoder, pixels: torch.Tensor):
    feats = encoder(pixels, layers=comp.feature_layers(), extra_tokens=comp.extra_tokens(),
                    extra_attention=comp.extra_attention)
    return comp(feats), feats


def test_registry_has_the_stf_paper_methods():
    assert {"mlp2x_gelu", "stf", "stf_mbtf", "avgpool", "concat", "qformer", "random_drop"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_module_docstring_names_a_paper(name):
    doc = sys.modules[COMPRESSORS.get(name).__module__].__doc__ or ""
    assert len(doc.strip()) > 40, f"{name}: method file must open with a docstring naming its paper"


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_matches_declared_count(name, encoder, pixels):
    comp = build(name, encoder).eval()
    with torch.no_grad():
        out, feats = run(comp, encoder, pixels)
    want = comp.num_output_tokens(feats.grid)
    assert out.shape == (BATCH, want, LLM_DIM)
    assert comp.num_output_tokens() == comp.num_output_tokens(encoder.info.grid)
    comp.check_output(out, feats)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name, encoder, pixels):
    comp = build(name, encoder).train()
    params = dict(comp.named_parameters())
    if comp.training_free:
        assert not params, f"{name} is training_free but has parameters {list(params)}"
        return
    assert any(p.requires_grad for p in params.values()), f"{name} has no trainable parameters"
    out, _ = run(comp, encoder, pixels)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in params.items():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"
    assert all(p.grad is None for p in encoder.parameters()), "the frozen encoder must get no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed_in_eval(name, encoder, pixels):
    a = build(name, encoder, seed=0).eval()
    b = build(name, encoder, seed=0).eval()
    with torch.no_grad():
        out_a1, _ = run(a, encoder, pixels)
        out_a2, _ = run(a, encoder, pixels)
        out_b, _ = run(b, encoder, pixels)
    assert torch.equal(out_a1, out_a2), f"{name}: two eval calls differ"
    assert torch.equal(out_a1, out_b), f"{name}: same seed, different output"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_a_user_error(name, encoder):
    with pytest.raises(CompactVLMError):
        create_compressor(name, encoder.info, LLM_DIM, no_such_option=1)


WINDOW_NAMES = [n for n in NAMES if issubclass(COMPRESSORS.get(n), WindowCompressor)]


@pytest.mark.parametrize("name", WINDOW_NAMES)
def test_window_geometry_is_checked_when_built(name, encoder):
    """Every k x k window method refuses a window that does not tile the grid and a block the encoder lacks, with
    the error naming the value (WindowCompressor's constructor checks them once for all)."""
    takes_k = "k" in inspect.signature(COMPRESSORS.get(name).__init__).parameters
    bad = [({"layer": 99}, "encoder block 99 does not exist")]
    if takes_k:
        bad += [({"k": 0}, "k=0 must be a positive window size"), ({"k": 3}, "k=3 does not divide")]
    for options, match in bad:
        with pytest.raises(CompactVLMError, match=match):
            create_compressor(name, encoder.info, LLM_DIM, **options)
