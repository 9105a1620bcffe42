"""Training-free reductions before the LLM (random, avgpool, visionzip) and what every reduction must do.

Tiny offline models: DINOv2/CLIP/SigLIP width 32, 4 blocks, 2 heads, patch 4, 32 px -> 8x8 = 64 patch tokens,
mlp2x_gelu projector (the full-token reference), tiny Llama.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compactvlm.errors import CompactVLMError
from compactvlm.registry import REDUCTIONS
from compactvlm.testing import tiny_vlm
from reduction_setup import QUESTIONS, N, batch, reduction_fixtures

model, images, no_reduction = reduction_fixtures(sharp=False)


def test_all_four_are_registered():
    assert {"random", "avgpool", "visionzip", "fastv"} <= set(REDUCTIONS.names())


# ---- budgets -----------------------------------------------------------------------------------------------
BUDGETS = {"random": [1, 5, 17, 63, 64], "avgpool": [1, 4, 16, 36, 64], "visionzip": [1, 5, 17, 63, 64],
           "fastv": [1, 7, 40, 64]}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_budget_is_respected_exactly(model, images, name):
    for budget in BUDGETS[name]:
        model.reduction = REDUCTIONS.create(name, budget=budget, model=model)
        ids, mask, pix = batch(model, images)
        with torch.no_grad():
            out = model(ids, mask, pix, logits_to_keep=1)
        assert out.logits.shape[:2] == (2, 1)
        if name == "fastv":
            assert model.num_image_tokens() == N  # all tokens enter the prompt; pruning is inside the LLM
            kept = model.reduction.last_kept_positions  # (B, T')
            is_img = (ids == -200).gather(1, kept)
            assert is_img.sum(dim=1).tolist() == [budget, budget]
            assert kept.shape[1] == ids.shape[1] - N + budget
        else:
            assert model.num_image_tokens() == budget
            with torch.no_grad():
                toks = model.encode_images(pix)
            assert toks.shape == (2, budget, model.llm_dim)


@pytest.mark.parametrize("name", sorted(BUDGETS))
@pytest.mark.parametrize("budget", [0, -3, N + 1, None])
def test_bad_budget_is_a_clear_error(model, name, budget):
    with pytest.raises(CompactVLMError, match="budget"):
        REDUCTIONS.create(name, budget=budget, model=model)


def test_avgpool_needs_a_square_budget(model):
    with pytest.raises(CompactVLMError, match="square") as e:
        REDUCTIONS.create("avgpool", budget=32, model=model)
    assert "25" in str(e.value) and "36" in str(e.value)


def test_visionzip_split_options(model):
    r = REDUCTIONS.create("visionzip", budget=64, model=model)
    assert (r.dominant, r.contextual) == (54, 10)  # VisionZip's default split
    r = REDUCTIONS.create("visionzip", budget=32, model=model)
    assert (r.dominant, r.contextual) == (27, 5)  # scaled
    r = REDUCTIONS.create("visionzip", budget=20, model=model, contextual=8)
    assert (r.dominant, r.contextual) == (12, 8)
    with pytest.raises(CompactVLMError, match="split"):
        REDUCTIONS.create("visionzip", budget=20, model=model, dominant=15, contextual=8)


@pytest.mark.parametrize("name", ["random", "avgpool", "visionzip"])
def test_patch_reductions_need_a_per_token_projection(name):
    m = tiny_vlm("avgpool", k=2)  # already compresses: no per-token `project`
    with pytest.raises(CompactVLMError, match="per-token"):
        REDUCTIONS.create(name, budget=4, model=m)


# ---- budget = all tokens reproduces the unreduced model ---------------------------------------------------
@pytest.mark.parametrize("name, options", [("random", {}), ("random", {"seed": 7}), ("avgpool", {}),
                                           ("visionzip", {"dominant": N}), ("fastv", {}), ("fastv", {"k": 3})])
def test_budget_all_reproduces_the_unreduced_logits(model, images, name, options):
    ids, mask, pix = batch(model, images)
    with torch.no_grad():
        ref = model(ids, mask, pix).logits
        model.reduction = REDUCTIONS.create(name, budget=N, model=model, **options)
        got = model(ids, mask, pix).logits
    valid = mask.bool()
    assert got.shape == ref.shape
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_visionzip_default_split_at_full_budget_keeps_every_token(model, images):
    pix = model.processor(images)
    with torch.no_grad():
        ref = model.encode_images(pix)  # (B, 64, D)
        model.reduction = REDUCTIONS.create("visionzip", budget=N, model=model)
        got = model.encode_images(pix)
    # 54 dominant + 10 "merged" groups of one token each: the same tokens, dominant ones first
    for b in range(2):
        dist = (got[b][:, None] - ref[b][None]).norm(dim=-1)  # (64, 64)
        assert torch.all(dist.min(dim=1).values < 1e-5)
        assert len(set(dist.argmin(dim=1).tolist())) == N


# ---- random ------------------------------------------------------------------------------------------------
def test_random_is_seeded_spatially_ordered_and_selects_patches(model, images):
    pix = model.processor(images)
    r = REDUCTIONS.create("random", budget=12, model=model, seed=5)
    idx = r.keep_indices(N)
    assert torch.equal(idx, r.keep_indices(N))  # deterministic under seed
    assert torch.all(idx[1:] > idx[:-1])  # spatial order kept
    assert not torch.equal(idx, REDUCTIONS.create("random", budget=12, model=model, seed=6).keep_indices(N))
    with torch.no_grad():
        full = model.encode_images(pix)  # (B, 64, D): projection is per token
        model.reduction = r
        a, b = model.encode_images(pix), model.encode_images(pix)
        one = model.encode_images(pix[1:])  # an image's tokens do not depend on its batch
    torch.testing.assert_close(a, full[:, idx])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(one[0], a[1])


# ---- avgpool -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget, k", [(16, 2), (4, 4), (1, 8)])
def test_avgpool_equals_window_means(model, images, budget, k):
    pix = model.processor(images)
    comp = model.compressor
    with torch.no_grad():
        feats = model.encoder(pix, layers=[comp.layer])
        want = comp.project(F.avg_pool2d(feats.patch_grid(comp.layer), k).flatten(2).transpose(1, 2))
        model.reduction = REDUCTIONS.create("avgpool", budget=budget, model=model)
        got = model.encode_images(pix)
    torch.testing.assert_close(got, want)


# ---- visionzip ---------------------------------------------------------------------------------------------
def tiny_siglip():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                             patch_size=4, image_size=32)
    cfg._attn_implementation = "sdpa"
    return SiglipVisionModel(cfg).eval()


def vlm_with(encoder_kind: str):
    if encoder_kind == "siglip":
        from compactvlm.encoders.hf import HFVisionEncoder

        m = tiny_vlm("mlp2x_gelu")
        m.encoder = HFVisionEncoder(tiny_siglip(), image_size=32)
        return m
    return tiny_vlm("mlp2x_gelu", encoder=encoder_kind)


def eager_attention(m, pix, block_index):
    """HF's own attention probabilities of encoder block ``block_index`` (1-based): (B, heads, S, S)."""
    enc = m.encoder
    block = enc.blocks[block_index - 1]
    attn = getattr(block, "attention", None) or block.self_attn
    got = {}

    def hook(mod, inp, out):
        got["w"] = out[1]

    handle = attn.register_forward_hook(hook)
    old = enc.model.config._attn_implementation
    enc.model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            enc(pix, layers=[block_index])
    finally:
        enc.model.config._attn_implementation = old
        handle.remove()
    return got["w"]


@pytest.mark.parametrize("encoder_kind", ["dinov2", "clip", "siglip"])
def test_visionzip_scores_match_hf_attention_and_pick_dominant_tokens(images, encoder_kind):
    m = vlm_with(encoder_kind)
    pix = m.processor(images)
    r = REDUCTIONS.create("visionzip", budget=16, model=m, contextual=0)
    idx = m.encoder.info.normalize_layer(m.compressor.layer)
    assert sorted(r.feature_layers()) == [idx - 1, idx]
    with torch.no_grad():
        feats = m.encoder(pix, layers=r.feature_layers())
        feats.extra_state["encoder"] = m.encoder
        score, _ = r.scores(feats, idx)
    w = eager_attention(m, pix, idx).mean(dim=1)  # (B, S, S), mean over heads
    p = m.encoder.num_prefix
    want = w[:, 0, p:] if p else w[:, :, p:].mean(dim=1)  # CLS row, or mean attention received (SigLIP)
    torch.testing.assert_close(score, want, atol=1e-5, rtol=1e-4)
    top = want.topk(16, dim=1).indices.sort(dim=1).values
    with torch.no_grad():
        full = m.encode_images(pix)  # (B, 64, D)
        m.reduction = r
        got = m.encode_images(pix)
    torch.testing.assert_close(got, torch.stack([full[b, top[b]] for b in range(2)]))


def test_visionzip_contextual_tokens_are_group_means_by_key_similarity(model, images):
    d, c = 6, 5
    r = REDUCTIONS.create("visionzip", budget=d + c, model=model, dominant=d, contextual=c)
    pix = model.processor(images)
    idx = model.encoder.info.normalize_layer(model.compressor.layer)
    with torch.no_grad():
        feats = model.encoder(pix, layers=r.feature_layers())
        feats.extra_state["encoder"] = model.encoder
        score, keys = r.scores(feats, idx)
        x = feats.patches(model.compressor.layer)  # (B, 64, C)
        got = r.select(feats, model.compressor.layer)  # (B, d + c, C)
    for b in range(2):
        dom = sorted(score[b].topk(d).indices.tolist())
        rest = [i for i in range(N) if i not in dom]
        step = len(rest) // c
        targets = [rest[j] for j in range(0, len(rest), step)][:c]
        groups = {t: [t] for t in targets}
        for i in rest:
            if i in groups:
                continue
            sims = [F.cosine_similarity(keys[b, i], keys[b, t], dim=0) for t in targets]
            groups[targets[int(torch.stack(sims).argmax())]].append(i)
        want = torch.stack([x[b, i] for i in dom] + [x[b, g].mean(dim=0) for g in groups.values()])
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-5)


# ---- generation with each reduction -----------------------------------------------------------------------
@pytest.mark.parametrize("name, budget", [("random", 9), ("avgpool", 9), ("visionzip", 9), ("fastv", 9)])
def test_generate_runs_with_each_reduction(model, images, name, budget):
    model.reduction = REDUCTIONS.create(name, budget=budget, model=model)
    res = model.generate(images, QUESTIONS, max_new_tokens=3)
    assert len(res.texts) == 2 and all(isinstance(t, str) for t in res.texts)
    assert res.num_image_tokens == (N if name == "fastv" else budget)
    assert model.reduction.equivalent_tokens() == (budget if name != "fastv" else (2 * N + 2 * budget) / 4)
