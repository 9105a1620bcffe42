"""The ``objects`` compressor (Mask-LLaVA): token counts per budget, norm scaling, masked_pool by hand,
MaskInversion, the per-image cache. Tiny random DINOv2 (width 32, 4 blocks, patch 4, 32 px -> 8x8 grid)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compactvlm.compressors import create_compressor
from compactvlm.compressors.object_embed import MaskInversion, soft_dice
from compactvlm.encoders.hf import HFVisionEncoder
from compactvlm.errors import CompactVLMError
from compactvlm.testing import tiny_dinov2

D = 24


@pytest.fixture(scope="module")
def encoder() -> HFVisionEncoder:
    return HFVisionEncoder(tiny_dinov2()).requires_grad_(False)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def toy_masks() -> list[torch.Tensor]:
    """Pixel masks not aligned to the 4 px patches; fewer than max_objects, so there is padding."""
    a = torch.zeros(2, 32, 32, dtype=torch.bool)
    a[0, 2:14, 3:21] = True  # area 216
    a[1, 18:31, 10:30] = True  # area 260
    b = torch.zeros(1, 32, 32, dtype=torch.bool)
    b[0, :, :6] = True  # area 192
    return [a, b]


def build(encoder, **opts):
    torch.manual_seed(0)
    return create_compressor("objects", encoder.info, D, **opts)


def run(comp, encoder, pixels, grad=False, **extra):
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        f = encoder(pixels, layers=comp.feature_layers())
        f.extra_state.update(pixel_values=pixels, encoder=encoder, **extra)
        return comp(f), f


@pytest.mark.parametrize("pool_grid, k", [(1, 3), (2, 5), (3, 2)])
def test_token_count_for_every_budget(encoder, pixels, pool_grid, k):
    comp = build(encoder, pool_grid=pool_grid, max_objects=k).eval()
    lo, hi = 1 + pool_grid**2, 1 + pool_grid**2 + k
    assert comp.budget_range() == (lo, hi)
    assert comp.num_output_tokens() == hi
    full, _ = run(comp, encoder, pixels)
    assert full.shape == (2, hi, D)
    for budget in range(lo, hi + 1):
        comp.set_budget(budget)
        out, f = run(comp, encoder, pixels)
        assert comp.num_output_tokens(f.grid) == budget and out.shape == (2, budget, D)
        comp.check_output(out, f)
        # dropping object tokens never touches CLS / pooled tokens, and keeps the top objects in order
        assert torch.allclose(out, full[:, :budget], atol=1e-6)
    for bad in (lo - 1, hi + 1, 0, 2.5):
        with pytest.raises(CompactVLMError, match="budget"):
            comp.set_budget(bad)
    with pytest.raises(CompactVLMError, match="budget"):
        build(encoder, pool_grid=pool_grid, max_objects=k, budget=hi + 1)
    comp.set_budget(None)
    assert comp.num_output_tokens() == hi
    assert build(encoder, pool_grid=pool_grid, max_objects=k, budget=lo).num_output_tokens() == lo


def test_budget_keeps_the_largest_objects_in_a_deterministic_order(encoder, pixels):
    comp = build(encoder, mask_source="given", max_objects=4).eval()
    masks = toy_masks()
    run(comp, encoder, pixels, masks=masks)
    areas = [c.flatten(1).mean(dim=1) for c in comp.last_coverage]
    assert all(bool((a[:-1] >= a[1:]).all()) for a in areas), "objects are sorted by area, largest first"
    # image 0: background (1024 - 476 px) > 260 px > 216 px; image 1: background (832 px) > 192 px
    assert torch.allclose(areas[0], torch.tensor([548, 260, 216]) / 1024)
    assert torch.allclose(areas[1], torch.tensor([832, 192]) / 1024)
    comp_order = build(encoder, mask_source="given", max_objects=4, score="order").eval()
    run(comp_order, encoder, pixels, masks=masks)
    assert torch.allclose(comp_order.last_coverage[0].flatten(1).mean(dim=1), torch.tensor([216, 260, 548]) / 1024)


def test_contrast_score_ranks_segments_unlike_the_image_first(encoder, pixels):
    from compactvlm.compressors.objects import ObjectTokens

    # constructed features: a 4x4 grid whose 12-patch background shares one feature, a 4-patch object another
    bg, obj = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    patches = bg.repeat(16, 1)  # (H*W, C)
    patches[[5, 6, 9, 10]] = obj
    cov = torch.zeros(2, 4, 4)
    cov[0].view(-1)[:] = 1
    cov[0].view(-1)[[5, 6, 9, 10]] = 0  # the background segment: the larger one
    cov[1].view(-1)[[5, 6, 9, 10]] = 1
    score = ObjectTokens._contrast(patches, cov)
    mean = patches.mean(dim=0)
    by_hand = [1 - float(torch.dot(v, mean) / (v.norm() * mean.norm())) for v in (bg, obj)]
    assert torch.allclose(score, torch.tensor(by_hand), atol=1e-6) and score[1] > score[0]
    # in the compressor: the kept order follows the score, whatever the areas
    comp = build(encoder, mask_source="given", max_objects=4, score="contrast").eval()
    _, f = run(comp, encoder, pixels, masks=toy_masks())
    for b, c in enumerate(comp.last_coverage):
        s = ObjectTokens._contrast(f.patches(-2)[b], c)
        assert bool((s[:-1] >= s[1:]).all()) and len(c) == len(toy_masks()[b]) + 1  # + the complement
    with pytest.raises(CompactVLMError, match="score"):
        build(encoder, score="saliency")


def test_given_masks_reproduce_masked_pool_by_hand(encoder, pixels):
    comp = build(encoder, mask_source="given", max_objects=4, pad="zero").eval()
    masks = toy_masks()
    with torch.no_grad():
        f = encoder(pixels, layers=comp.feature_layers())
    f.extra_state.update(pixel_values=pixels, masks=masks)
    objs, valid = comp.object_features(f)
    assert objs.shape == (2, 4, 32) and valid.tolist() == [[True] * 3 + [False], [True] * 2 + [False] * 2]
    patches = f.patches(-2)  # (B, 64, 32)
    for b, m in enumerate(masks):
        m = torch.cat([m, ~m.any(dim=0, keepdim=True)])  # + background
        m = m[torch.argsort(m.flatten(1).sum(dim=1), descending=True, stable=True)]
        for j, mask in enumerate(m):
            num, den = torch.zeros(32), 0.0
            for i in range(8):
                for jj in range(8):
                    frac = mask[4 * i: 4 * i + 4, 4 * jj: 4 * jj + 4].float().mean()
                    num += frac * patches[b, 8 * i + jj]
                    den += float(frac)
            assert torch.allclose(objs[b, j], num / den, atol=1e-5), (b, j)
    assert (objs[~valid] == 0).all(), "padding is the zero vector"
    rep = build(encoder, mask_source="given", max_objects=4, pad="repeat").eval()
    objs_r, _ = rep.object_features(f)
    assert torch.equal(objs_r[1, 2], objs_r[1, 0]) and torch.equal(objs_r[1, :2], objs[1, :2])


@pytest.mark.parametrize("mode", ["type_mean", "token"])
def test_norm_scaling_equalises_per_type_mean_norms(encoder, pixels, mode):
    comp = build(encoder, mask_source="given", max_objects=4, norm_scaling=mode).eval()
    with torch.no_grad():
        f = encoder(pixels, layers=comp.feature_layers())
        f.extra_state.update(pixel_values=pixels, masks=toy_masks())
        raw = comp.types(f)
        t = comp.norm_scale(raw)

    def means(d):
        return torch.stack([d["cls"].norm(dim=-1).mean(1), d["pooled"].norm(dim=-1).mean(1),
                            d["objects"].norm(dim=-1).where(d["valid"], torch.nan).nanmean(1)])  # (3, B)

    before, after = means(raw), means(t)
    assert not torch.allclose(before[0], before[1], rtol=1e-2), "raw types differ in norm (else the test is moot)"
    ref = raw["reference"]  # mean norm of the raw patch tokens
    assert torch.allclose(after, ref.expand(3, -1), rtol=1e-5)
    assert (t["objects"][~t["valid"]] == 0).all(), "zero padding stays zero"


def test_norm_scaling_at_output_and_none(encoder, pixels):
    comp = build(encoder, mask_source="unsupervised", max_objects=5, norm_at="output").eval()
    out, _ = run(comp, encoder, pixels)
    n = out.norm(dim=-1)  # (B, 1 + 4 + 5)
    per_type = torch.stack([n[:, :1].mean(1), n[:, 1:5].mean(1), n[:, 5:].mean(1)])
    assert torch.allclose(per_type, per_type[1].expand(3, -1), rtol=1e-5)
    plain = build(encoder, mask_source="unsupervised", max_objects=5, norm_scaling="none").eval()
    n = run(plain, encoder, pixels)[0].norm(dim=-1)
    assert not torch.allclose(n[:, :1].mean(1), n[:, 1:5].mean(1), rtol=1e-3)


def test_maskinversion_reduces_its_loss_on_a_toy_mask(encoder, pixels):
    mi = MaskInversion(iterations=10, lr=0.05, reg=0.0)
    with torch.inference_mode():  # must work from inference callers
        f = encoder(pixels, layers=mi.feature_layers())
        lo, _, blocks = mi._tail(f, encoder)
        target = torch.zeros(2, 8, 8)
        target[0, :, :4] = 1  # left half
        target[1, 5:, 5:] = 1  # bottom-right corner
        emb, losses = mi.invert(blocks, f.hidden[lo][0], f.cls(-1)[0], target.flatten(1), f.num_prefix)
    assert len(losses) == 11 and losses[-1] < losses[0] - 0.02
    assert emb.shape == (2, 32) and not emb.requires_grad
    assert torch.allclose(emb.norm(dim=-1), f.cls(-1)[0].norm().expand(2), rtol=1e-4), "CLS scale kept"
    # independent check: the explainability map of the result matches the mask better than the start
    target = target.flatten(1).clone()  # a normal tensor, outside inference mode
    with torch.enable_grad():
        h = f.hidden[lo][0].clone()[None].expand(2, -1, -1).clone().requires_grad_(True)
        c_out = mi.cls_out(blocks, h, 1, 64)
        assert torch.allclose(c_out[0], f.cls(-1)[0], atol=1e-5), "the tail recomputes the encoder's CLS"
        d0 = soft_dice(mi.explain(c_out, h, f.cls(-1)[0].clone().expand(2, -1), 1, 64), target)
        d1 = soft_dice(mi.explain(c_out, h, emb.clone(), 1, 64), target)
    assert float(d1.detach().mean()) < float(d0.detach().mean())
    assert all(p.grad is None for p in encoder.parameters())


def test_maskinversion_through_the_compressor(encoder, pixels):
    comp = build(encoder, object_embed="maskinversion", mi_iterations=3, max_objects=4).eval()
    assert set(comp.feature_layers()) == {3, 4}
    with torch.inference_mode():
        out, _ = run(comp, encoder, pixels)
    assert out.shape == (2, 9, D) and torch.isfinite(out).all()
    assert len(comp.embedder.last_losses) == 2 and len(comp.embedder.last_losses[0]) == 4
    with torch.no_grad():
        f = encoder(pixels, layers=comp.feature_layers())  # no extra_state["encoder"]
    comp.clear_cache()
    with pytest.raises(CompactVLMError, match="extra_state\\['encoder'\\]"):
        comp(f)


def test_cache_skips_recomputation_only_for_a_frozen_encoder(encoder, pixels, monkeypatch):
    comp = build(encoder, max_objects=4).eval()
    calls = []
    real = comp.source.__call__

    def counting(feats, k):
        calls.append(feats.batch_size)
        return real(feats, k)

    monkeypatch.setattr(type(comp.source), "__call__", lambda self, feats, k: counting(feats, k))
    a, _ = run(comp, encoder, pixels)
    b, _ = run(comp, encoder, pixels)
    assert calls == [2] and torch.equal(a, b)
    run(comp, encoder, torch.cat([pixels[:1], pixels[:1] + 1]))  # one cached image, one new
    assert calls == [2, 1]
    fresh = build(encoder, max_objects=4, cache=False).eval()
    assert torch.allclose(run(fresh, encoder, pixels)[0], a, atol=1e-6)
    assert calls == [2, 1, 2]
    # features that require grad (a trainable encoder) are never cached
    encoder.requires_grad_(True)
    try:
        run(comp, encoder, pixels, grad=True)
        assert calls == [2, 1, 2, 2]
        run(comp, encoder, pixels, grad=True)
        assert calls == [2, 1, 2, 2, 2]
    finally:
        encoder.requires_grad_(False)
        for p in encoder.parameters():
            p.grad = None


def test_given_masks_are_part_of_the_cache_key(encoder, pixels):
    comp = build(encoder, mask_source="given", max_objects=4).eval()
    a, _ = run(comp, encoder, pixels, masks=toy_masks())
    other = [torch.ones(1, 32, 32, dtype=torch.bool)] * 2
    b, _ = run(comp, encoder, pixels, masks=other)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_bad_options_are_user_errors(encoder):
    for opts, match in [({"pool_grid": 9}, "pool_grid"), ({"max_objects": 0}, "max_objects"),
                        ({"norm_scaling": "l3"}, "norm_scaling"), ({"score": "iou"}, "score"),
                        ({"mask_source": "sam"}, "mask source"), ({"object_embed": "clip"}, "object embedding"),
                        ({"mi_lr": 0.1}, "maskinversion"), ({"mask_options": {"foo": 1}}, "bad option")]:
        with pytest.raises(CompactVLMError, match=match):
            build(encoder, **opts)


def test_gradients_reach_all_three_projectors(encoder, pixels):
    comp = build(encoder, mask_source="given", max_objects=4).train()
    out, _ = run(comp, encoder, pixels, grad=True, masks=toy_masks())
    F.mse_loss(out, torch.zeros_like(out)).backward()
    for name in ("proj_cls", "proj_pool", "proj_obj"):
        g = getattr(comp, name).linear_1.weight.grad
        assert g is not None and g.abs().sum() > 0, name
