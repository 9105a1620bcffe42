"""VisToG (compressors/vistog.py): isolated attention inside HF encoders, the grouping layer, the stage contract."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from compactvlm.compressors.base import create_compressor
from compactvlm.compressors.vistog import STAGE2_PREFIXES, GroupingLayer
from compactvlm.efficiency.flops import flop_counter
from compactvlm.encoders.base import VisionFeatures
from compactvlm.encoders.hf import HFVisionEncoder
from compactvlm.errors import CompactVLMError
from compactvlm.registry import COMPRESSORS

C, LAYERS, D_LLM = 32, 3, 24  # tiny encoder width, blocks, LLM width; 16 px / patch 4 -> 4x4 grid


def tiny_hf(family: str, impl: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(hidden_size=C, num_hidden_layers=LAYERS, num_attention_heads=4, patch_size=4, image_size=16)
    if family == "dinov2":
        model = Dinov2Model(Dinov2Config(mlp_ratio=2, layerscale_value=1.0, **common))
    elif family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(intermediate_size=64, **common))
    else:
        model = SiglipVisionModel(SiglipVisionConfig(intermediate_size=64, **common))
    model.set_attn_implementation(impl)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def enc() -> HFVisionEncoder:
    return HFVisionEncoder(tiny_hf("dinov2"))


def pixels(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def make(enc: HFVisionEncoder, **opts):
    torch.manual_seed(2)
    return create_compressor("vistog", enc.info, D_LLM, **opts)


def encode(enc, comp, x):
    """The model's call."""
    return enc(x, layers=comp.feature_layers(), extra_tokens=comp.extra_tokens(), extra_attention=comp.extra_attention)


def test_registered():
    assert "vistog" in COMPRESSORS.names()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["dinov2", "clip", "siglip"])
def test_isolated_attention_leaves_every_block_unchanged(family, impl):
    model = tiny_hf(family, impl)
    encoder = HFVisionEncoder(model)
    x = pixels()
    torch.manual_seed(3)
    comp = create_compressor("vistog", encoder.info, D_LLM, tokens=5)
    with torch.no_grad():
        ref = model(pixel_values=x, output_hidden_states=True).hidden_states  # HF's own, len LAYERS + 1
        blocks = list(range(LAYERS + 1))
        iso = encoder(x, layers=blocks, extra_tokens=comp.extra_tokens(), extra_attention="isolated")
        full = encoder(x, layers=blocks, extra_tokens=comp.extra_tokens(), extra_attention="full")
    assert len(ref) == LAYERS + 1 and iso.num_extra == 5
    n_img = ref[0].shape[1]
    for layer in blocks:
        assert iso.hidden[layer].shape[1] == n_img + 5
        torch.testing.assert_close(iso.hidden[layer][:, :n_img], ref[layer], atol=1e-5, rtol=0)
        if layer > 0:  # with full attention the patches see the semantic tokens from block 1 on
            assert (full.patches(layer) - iso.patches(layer)).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["dinov2", "clip", "siglip"])
def test_isolated_extra_stream_equals_the_masked_concatenation(family, impl, monkeypatch):
    """The two-stream run (image blocks alone, extra tokens as queries beside them) gives the masked run's features
    and the same gradients to the semantic tokens, the grouping layer and the projector."""
    encoder = HFVisionEncoder(tiny_hf(family, impl))
    assert encoder.splits_extra_tokens
    x = pixels()
    blocks = list(range(LAYERS + 1))

    def run():
        comp = make(encoder, tokens=5).train()
        comp.grouping.seed = 7
        feats = encoder(x, layers=blocks, extra_tokens=comp.extra_tokens(), extra_attention="isolated")
        comp(VisionFeatures(hidden={-2 % (LAYERS + 1): feats.hidden[LAYERS - 1]}, grid=feats.grid,
                            num_prefix=feats.num_prefix, num_extra=feats.num_extra, info=feats.info)).square().sum().backward()
        grads = {n: p.grad.clone() for n, p in comp.named_parameters() if p.grad is not None}
        return feats, grads

    split, split_grads = run()
    with monkeypatch.context() as m:
        m.setattr(HFVisionEncoder, "stream_parts", lambda self: None)
        joint, joint_grads = run()
    assert split.num_extra == joint.num_extra == 5
    for layer in blocks:
        torch.testing.assert_close(split.hidden[layer], joint.hidden[layer], atol=1e-5, rtol=1e-5)
    assert "semantic_tokens" in split_grads and split_grads.keys() == joint_grads.keys()
    for name, g in split_grads.items():
        torch.testing.assert_close(g, joint_grads[name], atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("family", ["dinov2", "clip", "siglip"])
def test_isolated_extra_tokens_add_only_their_own_flops(family, monkeypatch):
    """``forward`` reuses the image run's keys and values: the isolated run costs the plain encoder plus the extra
    tokens' own projections, MLP and attention rows, fewer FLOPs than the masked run of the concatenation."""
    encoder = HFVisionEncoder(tiny_hf(family))
    x = pixels(1)
    comp = make(encoder, tokens=5)

    def count(**kw) -> int:
        with torch.no_grad(), flop_counter() as fc:
            encoder(x, layers=[LAYERS], **kw)
        return fc.get_total_flops()

    s, x_tok, mlp = encoder.embed(x).shape[1], 5, 64  # image tokens, extra tokens, MLP width (tiny_hf)
    # per block: the extra tokens' q k v o projections, their attention rows (scores and sum), their MLP
    per_block = 2 * x_tok * C * C * 4 + 2 * 2 * x_tok * (s + x_tok) * C + 2 * 2 * x_tok * C * mlp
    plain = count()
    isolated = count(extra_tokens=comp.extra_tokens(), extra_attention="isolated")
    assert isolated - plain == LAYERS * per_block
    with monkeypatch.context() as m:
        m.setattr(HFVisionEncoder, "stream_parts", lambda self: None)
        masked = count(extra_tokens=comp.extra_tokens(), extra_attention="isolated")
    assert isolated < masked


def test_the_extra_stream_falls_back_under_dropout_and_refuses_a_token_merge(enc):
    comp = make(enc, tokens=3)
    enc.train()
    try:
        assert enc.splits_extra_tokens  # training mode without dropout: the same computation
        for name in ("attention_probs_dropout_prob", "drop_path_rate"):
            cfg = dict(hidden_size=C, num_hidden_layers=LAYERS, num_attention_heads=4, patch_size=4, image_size=16)
            drop = HFVisionEncoder(Dinov2Model(Dinov2Config(**cfg, **{name: 0.1})).train())
            assert not drop.splits_extra_tokens  # dropout / drop-path are the blocks' own business
            assert drop.eval().splits_extra_tokens
    finally:
        enc.eval()
    image = enc._run(enc.embed(pixels()), None, set(range(LAYERS + 1)))
    image[1] = image[1][:, :-2]  # as if a merge had dropped two tokens after block 1
    with pytest.raises(CompactVLMError, match="changed in number"):
        enc.extra_stream(image, comp.extra_tokens(), {LAYERS})


@pytest.mark.parametrize("n", [1, 5, 24])  # 24 > 16 patches: some groups must be empty
def test_output_count_is_n(enc, n):
    comp = make(enc, tokens=n).eval()
    feats = encode(enc, comp, pixels())
    out = comp.check_output(comp(feats), feats)
    assert out.shape == (2, n, D_LLM) and comp.num_output_tokens(feats.grid) == n
    assert torch.isfinite(out).all()


def hand_vistog(comp, sem, img):
    """Eq. 2-4 with the argmax groups, one group at a time."""
    g = comp.grouping
    q, k = sem @ g.q.weight.T + g.q.bias, img @ g.k.weight.T + g.k.bias
    groups = (q @ k.transpose(1, 2)).argmax(dim=1)  # (B, M)
    out = []
    for b in range(sem.shape[0]):
        rows = []
        for i in range(sem.shape[1]):
            members = img[b, groups[b] == i]  # (m_i, C)
            if len(members) == 0:
                rows.append(sem[b, i])
            else:
                v = members @ g.v.weight.T + g.v.bias
                rows.append(sem[b, i] + g.o.weight @ v.mean(dim=0))
        out.append(torch.stack(rows))
    return comp.proj(torch.stack(out)), groups


@pytest.mark.parametrize("n", [3, 24])
def test_forward_equals_hard_assignment(enc, n):
    comp = make(enc, tokens=n).eval()
    torch.manual_seed(4)
    for lin in (comp.grouping.v, comp.grouping.o):  # away from the identity init, so W_v/W_o matter
        torch.nn.init.normal_(lin.weight, std=0.3)
    feats = encode(enc, comp, pixels())
    with torch.no_grad():
        got = comp(feats)
        want, groups = hand_vistog(comp, feats.extra(-2), feats.patches(-2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assign = comp.token_assignment(feats)
    assert assign.dtype == torch.long and assign.shape == (2, 16)
    assert torch.equal(assign, groups)
    if n > 16:
        assert len(assign[0].unique()) < n  # the empty-group branch was exercised


def test_gradients_reach_semantic_tokens_and_all_projections(enc):
    comp = make(enc, tokens=6, seed=0).train()
    feats = encode(enc, comp, pixels())
    comp(feats).square().mean().backward()
    named = dict(comp.named_parameters())
    for name in ("semantic_tokens", "grouping.q.weight", "grouping.k.weight", "grouping.v.weight",
                 "grouping.o.weight", "proj.linear_1.weight"):
        grad = named[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in enc.parameters())  # the encoder stays frozen


def test_straight_through_gradient_is_the_soft_assignment_gradient():
    torch.manual_seed(5)
    layer = GroupingLayer(C, seed=0).eval()
    sem, img = torch.randn(2, 4, C), torch.randn(2, 10, C)
    a_hat, soft = layer.assign(sem, img)
    hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
    torch.testing.assert_close(a_hat, hard, atol=1e-6, rtol=0)  # the value is the one-hot
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(2, 10))  # A: a distribution over the N groups

    def loss(a):
        return (layer.merge(sem, img, a) * torch.linspace(-1, 1, C)).sum()

    params = [layer.q.weight, layer.k.weight]
    got = torch.autograd.grad(loss(a_hat), params, retain_graph=True)
    leaf = a_hat.detach().requires_grad_(True)
    (d_a,) = torch.autograd.grad(loss(leaf), leaf)  # dL/dÂ
    want = torch.autograd.grad(soft, params, grad_outputs=d_a)  # pushed through A only
    for g, w in zip(got, want):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w)


def test_empty_groups_give_the_semantic_token_and_no_nan():
    torch.manual_seed(6)
    layer = GroupingLayer(C, seed=0).train()
    sem = torch.randn(2, 8, C, requires_grad=True)
    img = torch.randn(2, 3, C)  # 3 image tokens, 8 groups: at least 5 empty per image
    a_hat, _ = layer.assign(sem, img)
    vis = layer.merge(sem, img, a_hat)
    empty = a_hat.detach().sum(dim=2).round() == 0  # (B, N)
    assert empty.sum(dim=1).min() >= 5
    torch.testing.assert_close(vis[empty], sem[empty])
    vis.square().sum().backward()
    for p in (sem, layer.q.weight, layer.k.weight, layer.v.weight, layer.o.weight):
        assert torch.isfinite(p.grad).all()


def test_eval_is_deterministic_and_training_noise_is_seeded(enc):
    feats = encode(enc, make(enc, tokens=4), pixels())

    def grouped(seed, train):
        comp = make(enc, tokens=4, seed=seed).train(train)
        torch.nn.init.zeros_(comp.grouping.q.weight)  # all logits equal: only Gumbel noise can break the tie
        torch.nn.init.zeros_(comp.grouping.q.bias)
        a_hat, _ = comp.grouping.assign(feats.extra(-2), feats.patches(-2))
        return a_hat.argmax(dim=1)  # (B, M)

    assert torch.equal(grouped(0, False), torch.zeros(2, 16, dtype=torch.long))  # no noise in eval
    assert torch.equal(grouped(0, True), grouped(0, True))
    assert not torch.equal(grouped(0, True), grouped(1, True))
    comp = make(enc, tokens=4).eval()
    assert torch.equal(comp(feats), comp(feats))


def test_stage1_is_llava_mlp_and_loads_into_stage2(enc):
    stage1 = make(enc, tokens=8, grouping=False)
    assert stage1.extra_tokens() is None and stage1.num_output_tokens((4, 4)) == 16
    feats = enc(pixels(), layers=stage1.feature_layers())
    mlp = create_compressor("mlp2x_gelu", enc.info, D_LLM)
    mlp.load_state_dict(stage1.state_dict())  # strict: the same parameter names
    torch.testing.assert_close(stage1(feats), mlp(feats))

    stage2 = make(enc, tokens=8, grouping=True)
    new = stage2.new_parameters_vs(stage1.state_dict().keys())
    assert new and all(k.startswith(STAGE2_PREFIXES) for k in new)
    assert {p for p in STAGE2_PREFIXES if any(k.startswith(p) for k in new)} == set(STAGE2_PREFIXES)
    result = stage2.load_state_dict(stage1.state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted(new) and not result.unexpected_keys
    torch.testing.assert_close(stage2.proj.linear_1.weight, stage1.proj.linear_1.weight)
    with pytest.raises(CompactVLMError):
        stage1.token_assignment(feats)


def test_user_errors(enc):
    for bad in (dict(tokens=0), dict(attention="causal"), dict(tau=0.0), dict(layer=99)):
        with pytest.raises(CompactVLMError):
            make(enc, **bad)
    comp = make(enc, tokens=4)
    with pytest.raises(CompactVLMError, match="extra_tokens"):
        comp(enc(pixels(), layers=comp.feature_layers()))  # encoder run without the semantic tokens
