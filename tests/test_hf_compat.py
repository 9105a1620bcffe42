"""What differs between transformers versions (src/compactvlm/hf_compat.py, pyproject's transformers >= 5.17):
the KV-cache keyword, and DINOv2 layers that take no attention mask before 5.25. The installed version has the new
forms; the old ones are simulated on stand-in classes, so each test can fail on either version."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactvlm.encoders.hf import HFVisionEncoder
from compactvlm.errors import CompactVLMError
from compactvlm.hf_compat import cache_keyword, cache_kwargs
from compactvlm.registry import REDUCTIONS
from compactvlm.testing import tiny_clip, tiny_dinov2, tiny_llama, tiny_vlm


class _New(nn.Module):
    def forward(self, x, cache=None, **kwargs):
        return x


class _Old(nn.Module):
    def forward(self, x, past_key_values=None, **kwargs):
        return x


class _Wrapper(nn.Module):  # a PEFT-style wrapper: forward takes **kwargs only
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_base_model(self):
        return self.inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_cache_kwargs_names_each_versions_keyword():
    sentinel = object()
    assert cache_kwargs(_New(), sentinel) == {"cache": sentinel}
    assert cache_kwargs(_Old(), sentinel) == {"past_key_values": sentinel}
    assert cache_kwargs(_Wrapper(_Old()), sentinel) == {"past_key_values": sentinel}
    assert cache_kwargs(_Wrapper(_New()), sentinel) == {"cache": sentinel}


def test_cache_kwargs_fills_the_installed_transformers_cache():
    """The keyword it picks for the installed LLM is the one that fills the cache (a wrong one is swallowed by
    **kwargs and leaves the cache empty)."""
    from transformers import DynamicCache

    llm = tiny_llama()
    cache = DynamicCache(config=llm.config)
    with torch.inference_mode():
        llm(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **cache_kwargs(llm, cache))
    assert cache.get_seq_length() == 3
    assert cache_keyword(type(llm.model.layers[0])) in ("cache", "past_key_values")


@pytest.mark.parametrize("make", [tiny_dinov2, tiny_clip])
def test_installed_encoder_layers_take_a_mask(make):
    assert HFVisionEncoder(make()).blocks_take_mask  # CI's transformers (>= 5.25): VisToG and ToMe need it


def test_layers_without_a_mask_run_plain_and_refuse_isolated_extra_tokens(monkeypatch):
    vlm = tiny_vlm("mlp2x_gelu")
    enc = vlm.encoder
    pix = torch.randn(1, 3, 32, 32)
    extra = torch.randn(2, 32)
    with torch.inference_mode():
        want = enc(pix, layers=(4,)).hidden[4]
        full_extra = enc(pix, layers=(4,), extra_tokens=extra, extra_attention="full").hidden[4]
        iso_extra = enc(pix, layers=(4,), extra_tokens=extra, extra_attention="isolated").hidden[4]
    monkeypatch.setattr(HFVisionEncoder, "blocks_take_mask", property(lambda self: False))
    with torch.inference_mode():
        got = enc(pix, layers=(4,)).hidden[4]  # block(h): same features as block(h, None)
        got_extra = enc(pix, layers=(4,), extra_tokens=extra, extra_attention="full").hidden[4]
        # isolated extra tokens as their own stream need no mask ...
        torch.testing.assert_close(enc(pix, layers=(4,), extra_tokens=extra).hidden[4], iso_extra)
        # ... the masked concatenation, for layers whose parts are unknown, does
        monkeypatch.setattr(HFVisionEncoder, "stream_parts", lambda self: None)
        with pytest.raises(CompactVLMError, match="take no attention mask"):
            enc(pix, layers=(4,), extra_tokens=extra, extra_attention="isolated")
        with pytest.raises(CompactVLMError, match="tome's proportional attention"):
            with REDUCTIONS.create("tome", budget=16, model=vlm).encoder_context(enc):
                pass
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_extra, full_extra)


def test_cache_kwargs_sees_through_a_real_peft_wrapper():
    from peft import LoraConfig, get_peft_model
    from transformers import DynamicCache

    llm = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    cache = DynamicCache(config=llm.get_base_model().config)
    kw = cache_kwargs(llm, cache)
    assert list(kw) == [cache_keyword(type(llm.get_base_model()))]
    with torch.inference_mode():
        llm(input_ids=torch.tensor([[1, 2, 3, 4]]), use_cache=True, **kw)
    assert cache.get_seq_length() == 4
