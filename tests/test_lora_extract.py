"""A fully fine-tuned LLM as LoRA (compactvlm.train.lora_extract): exact for a low-rank change, reported honestly."""

import copy

import pytest
import torch

from compactvlm.testing import tiny_llama
from compactvlm.train.lora_extract import lora_from_finetune


def _logits(llm, ids):
    return llm(input_ids=ids).logits


def test_a_rank_2_change_on_the_targets_is_recovered_exactly_at_rank_2():
    base = tiny_llama(seed=0)
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.endswith(("q_proj.weight", "down_proj.weight")):
                b, a = torch.randn(p.shape[0], 2, generator=g), torch.randn(2, p.shape[1], generator=g)
                p.add_(0.05 * b @ a)
    ids = torch.randint(0, 256, (2, 9), generator=g)
    want = _logits(tuned, ids)
    assert not torch.allclose(want, _logits(base, ids), atol=1e-3)  # the change matters
    peft_llm, rep = lora_from_finetune(tuned, copy.deepcopy(base), rank=2)
    assert torch.allclose(_logits(peft_llm, ids), want, atol=1e-4)
    assert rep["kept"] == pytest.approx(1.0, abs=1e-6) and rep["cut"] == pytest.approx(0.0, abs=1e-6)
    assert rep["dropped"] == {}
    # rank 1 cannot hold a rank-2 change: part of it is cut, and the logits differ
    peft1, rep1 = lora_from_finetune(tuned, copy.deepcopy(base), rank=1)
    assert 0.0 < rep1["cut"] < 1.0 and not torch.allclose(_logits(peft1, ids), want, atol=1e-4)


def test_changes_outside_the_targets_are_reported_as_dropped():
    base = tiny_llama(seed=0)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.norm.weight.add_(0.5)
        tuned.model.embed_tokens.weight[3].add_(1.0)
    _, rep = lora_from_finetune(tuned, copy.deepcopy(base), rank=2)
    assert rep["kept"] == 0.0 and set(rep["dropped"]) == {"norms", "embeddings"}
    assert sum(rep["dropped"].values()) == pytest.approx(1.0)


def test_different_architectures_are_refused():
    with pytest.raises(ValueError, match="different weights"):
        lora_from_finetune(tiny_llama(layers=2), tiny_llama(layers=3), rank=2)
