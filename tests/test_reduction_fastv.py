"""FastV: pruning inside the LLM, its positions, its KV cache and its layer-K scores (tiny offline models).

The tiny Llama gets larger random weights (std 0.3) so its greedy answers vary with the input instead of
repeating one token; the comparisons below would be vacuous otherwise.
"""

from __future__ import annotations

import pytest
import torch

from compactvlm.errors import CompactVLMError
from compactvlm.model.prompting import IMAGE_TOKEN_ID
from compactvlm.registry import REDUCTIONS
from reduction_setup import QUESTIONS, L, N, batch, reduction_fixtures

model, images, no_reduction = reduction_fixtures(sharp=True)


def prompt(model, images, questions=QUESTIONS):
    ids, mask, pix = batch(model, images, questions)
    with torch.no_grad():
        embeds = model.merge(ids, model.encode_images(pix))
    return ids, mask, embeds


def reference_generate(model, fastv, ids, mask, embeds, max_new_tokens):
    """No KV cache: every step re-runs the whole sequence with the pruning, ranked by the prompt's last token."""
    t = ids.shape[1]
    is_img = ids == IMAGE_TOKEN_ID
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            logits = fastv.llm_forward(model.llm, embeds, mask, is_img, position_ids=pos, score_index=t - 1,
                                       logits_to_keep=1).logits
            tok = logits[:, -1].argmax(dim=-1)  # (B,)
            out.append(tok)
            embeds = torch.cat([embeds, model.llm.get_input_embeddings()(tok)[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            is_img = torch.cat([is_img, torch.zeros_like(is_img[:, :1])], dim=1)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("budget, k", [(8, 2), (1, 1), (20, 3)])
def test_generate_with_kv_cache_equals_recomputing_without_it(model, images, budget, k):
    ids, mask, embeds = prompt(model, images)
    fastv = REDUCTIONS.create("fastv", budget=budget, model=model, k=k)
    steps = 8
    got = fastv.generate(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, max_new_tokens=steps, eos_token_id=[])
    want = reference_generate(model, fastv, ids, mask, embeds, steps)
    assert got.shape == (2, steps)
    assert torch.equal(got, want)
    assert len(set(got.flatten().tolist())) > 2  # the answers are not one repeated token


def test_full_budget_generates_what_the_plain_model_generates(model, images):
    plain = model.generate(images, QUESTIONS, max_new_tokens=6)
    model.reduction = REDUCTIONS.create("fastv", budget=N, model=model)
    same = model.generate(images, QUESTIONS, max_new_tokens=6)
    model.reduction = REDUCTIONS.create("fastv", budget=4, model=model)
    pruned = model.generate(images, QUESTIONS, max_new_tokens=6)
    assert same.texts == plain.texts
    assert pruned.texts != plain.texts  # pruning 60 of 64 tokens changes these answers
    assert same.num_image_tokens == pruned.num_image_tokens == N


def test_kept_tokens_are_the_top_of_layer_k_attention_from_the_last_token(model, images):
    """The scores FastV computes for layer K equal HF's own eager attention weights (RoPE, GQA, padding)."""
    ids, mask, embeds = prompt(model, images)
    budget, k = 10, 2
    cfg = model.llm.config
    old = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        with torch.no_grad():
            att = model.llm(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions
    finally:
        cfg._attn_implementation = old
    score = att[k - 1][:, :, -1].mean(dim=1)  # (B, T): layer K, last token, mean over heads
    is_img = ids == IMAGE_TOKEN_ID
    top = score.masked_fill(~is_img, -1).topk(budget, dim=1).indices
    want = [sorted(set(torch.nonzero(~is_img[b]).flatten().tolist()) | set(top[b].tolist())) for b in range(2)]
    model.reduction = REDUCTIONS.create("fastv", budget=budget, model=model, k=k)
    with torch.no_grad():
        model(ids, mask, model.processor(images), logits_to_keep=1)
    assert model.reduction.last_kept_positions.tolist() == want


def test_pruned_tokens_keep_their_positions(model, images):
    """Pruning after the last layer but one equals the plain model with the dropped tokens masked out there.

    With K = L - 1, the plain model's first L - 1 layers are FastV's; a reference for the last layer runs HF's
    decoder layer with the original RoPE positions and an attention mask hiding the dropped tokens."""
    ids, mask, embeds = prompt(model, images)
    k, budget = L - 1, 12
    fastv = REDUCTIONS.create("fastv", budget=budget, model=model, k=k)
    with torch.no_grad():
        got = fastv.llm_forward(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, logits_to_keep=1).logits
        keep = fastv.last_kept_positions
        hs = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states
        h = hs[k]  # input of the last layer, (B, T, D)
        b, t, _ = h.shape
        pos = torch.arange(t).expand(b, t)
        visible = torch.zeros(b, t, dtype=torch.bool).scatter(1, keep, True) & mask.bool()
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        allowed = visible[:, None, None, :] & causal
        am = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        core = model.llm.model
        out = core.layers[k](h, attention_mask=am, position_ids=pos, position_embeddings=core.rotary_emb(h, pos))
        want = model.llm.lm_head(core.norm(out))[:, -1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ratio_and_equivalent_tokens(model):
    r = REDUCTIONS.create("fastv", budget=None, model=model, ratio=0.5)
    assert r.kept(N) == 32
    assert r.equivalent_tokens() == (2 * N + (L - 2) * 32) / L
    r = REDUCTIONS.create("fastv", budget=16, model=model, k=1)
    assert r.equivalent_tokens() == (1 * N + 3 * 16) / L


@pytest.mark.parametrize("options, match", [({"budget": 8, "k": 0}, "k=0"), ({"budget": 8, "k": L}, f"k={L}"),
                                            ({"budget": 8, "ratio": 0.5}, "not both"),
                                            ({"budget": None, "ratio": 1.5}, "ratio"),
                                            ({"budget": None}, "budget")])
def test_bad_options_are_clear_errors(model, options, match):
    with pytest.raises(CompactVLMError, match=match):
        REDUCTIONS.create("fastv", model=model, **options)


def test_sampling_and_training_are_refused(model, images):
    model.reduction = REDUCTIONS.create("fastv", budget=8, model=model)
    with pytest.raises(CompactVLMError, match="greedy"):
        model.generate(images, QUESTIONS, max_new_tokens=2, do_sample=True)
    ids, mask, _ = prompt(model, images)
    with pytest.raises(CompactVLMError, match="inference-time"):
        model(ids, mask, model.processor(images), labels=ids.clamp(min=0))


def test_text_only_generation_bypasses_fastv(model):
    plain = model.generate(None, ["what is it"], max_new_tokens=3)
    model.reduction = REDUCTIONS.create("fastv", budget=8, model=model)
    assert model.generate(None, ["what is it"], max_new_tokens=3).texts == plain.texts
