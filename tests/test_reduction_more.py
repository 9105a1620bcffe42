"""DART, DivPrune, PyramidDrop, SparseVLM and ToMe, and every registered reduction end to end through generate.

Tiny offline models (compactvlm.testing): DINOv2 width 32, 4 blocks, patch 4, 32 px -> 8x8 = 64 patch tokens,
mlp2x_gelu projector (LLaVA's -2 block: 3 encoder blocks run), tiny Llama of 4 layers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from compactvlm.efficiency.flops import vision_flops
from compactvlm.errors import CompactVLMError
from compactvlm.model.prompting import IMAGE_TOKEN_ID
from compactvlm.reduction.staged import StagedPruning
from compactvlm.reduction.tome import bipartite_merge
from compactvlm.registry import REDUCTIONS
from compactvlm.testing import tiny_vlm
from reduction_setup import QUESTIONS, L, N, batch, reduction_fixtures

NEW = ["dart", "divprune", "pyramiddrop", "sparsevlm", "tome"]
BEFORE_LLM = ["dart", "divprune", "tome"]
STAGED = ["pyramiddrop", "sparsevlm"]

model, images, no_reduction = reduction_fixtures(sharp=True)


def test_all_five_are_registered():
    assert set(NEW) <= set(REDUCTIONS.names())
    assert all(REDUCTIONS.get(n).in_llm for n in STAGED)
    assert not any(REDUCTIONS.get(n).in_llm for n in BEFORE_LLM)


# ---- token counts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BEFORE_LLM)
@pytest.mark.parametrize("budget", [8, 13, 32, 63, 64])
def test_before_llm_methods_emit_exactly_the_budget(model, images, name, budget):
    model.reduction = REDUCTIONS.create(name, budget=budget, model=model)
    ids, mask, pix = batch(model, images)
    assert model.num_image_tokens() == budget == int((ids == IMAGE_TOKEN_ID).sum(dim=1)[0])
    with torch.no_grad():
        assert tuple(model.encode_images(pix).shape) == (2, budget, model.llm_dim)
        assert model(ids, mask, pix, logits_to_keep=1).logits.shape[:2] == (2, 1)
    assert model.reduction.equivalent_tokens() == budget


@pytest.mark.parametrize("name", STAGED)
@pytest.mark.parametrize("budget", [17, 25, 33, 40, 50, 64])
def test_staged_methods_reach_the_budget_in_equivalent_tokens(model, images, name, budget):
    red = REDUCTIONS.create(name, budget=budget, model=model)
    model.reduction = red
    assert model.num_image_tokens() == N  # every vision token enters the prompt
    assert budget - 1 < red.equivalent_tokens() <= budget
    counts = red.schedule(N)
    assert all(a >= b for a, b in zip([N] + counts, counts)) and min(counts) >= 1
    ids, mask, pix = batch(model, images)
    cache = DynamicCache(config=model.llm.config)
    with torch.no_grad():
        embeds = model.merge(ids, model.encode_images(pix))
        red.llm_forward(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, past_key_values=cache, logits_to_keep=1)
    assert red.last_stage_counts == counts
    text = ids.shape[1] - N
    bounds = [0] + red.drop_layers + [L]
    seen = [N] + counts
    for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
        for layer in range(a, b):  # each layer's KV cache holds the tokens it saw
            assert cache.layers[layer].keys.shape[2] == text + seen[s]
    per_layer = [cache.layers[i].keys.shape[2] - text for i in range(L)]
    assert sum(per_layer) / L == pytest.approx(red.equivalent_tokens())
    for pos, n in zip(red.last_stage_positions, counts):  # text is never dropped; n image tokens per stage
        assert (ids == IMAGE_TOKEN_ID).gather(1, pos).sum(dim=1).tolist() == [n, n]
        assert pos.shape[1] == text + n


# ---- determinism ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, budget", [("dart", 12), ("divprune", 12), ("tome", 12), ("pyramiddrop", 30),
                                          ("sparsevlm", 30)])
def test_deterministic(model, images, name, budget):
    outs = []
    for _ in range(2):
        model.reduction = REDUCTIONS.create(name, budget=budget, model=model)
        ids, mask, pix = batch(model, images)
        with torch.no_grad():
            logits = model(ids, mask, pix).logits
        kept = getattr(model.reduction, "last_kept_positions", None)
        outs.append((logits, None if kept is None else kept.clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    if outs[0][1] is not None:
        assert torch.equal(outs[0][1], outs[1][1])
    texts = [model.generate(images, QUESTIONS, max_new_tokens=4).texts for _ in range(2)]
    assert texts[0] == texts[1]


# ---- DART and DivPrune: duplicates ----------------------------------------------------------------------------
def duplicated_tokens(distinct: int, copies: int, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, distinct * copies, dim) tokens: every distinct vector ``copies`` times, interleaved; (N,) vector ids."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, dim, generator=g) * torch.linspace(1, 3, distinct)[:, None]
    ids = torch.arange(distinct).repeat(copies)  # 0 1 2 .. 0 1 2 ..
    return base[ids].unsqueeze(0), ids


@pytest.mark.parametrize("name", ["dart", "divprune"])
@pytest.mark.parametrize("distinct, copies, budget", [(10, 3, 6), (10, 3, 10), (10, 3, 14), (7, 4, 9), (20, 2, 18)])
def test_never_two_identical_tokens_while_distinct_ones_remain(model, name, distinct, copies, budget):
    red = REDUCTIONS.create(name, budget=budget, model=model, **({"pivots": 3} if name == "dart" else {}))
    tokens, vec = duplicated_tokens(distinct, copies)
    idx = red.keep(tokens)[0]
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == budget  # spatial order, no repeats
    kept_vectors = vec[idx].tolist()
    assert len(set(kept_vectors)) == min(budget, distinct)  # a second copy only once every vector is kept


def test_dart_keeps_the_pivots_and_the_tokens_least_similar_to_them(model):
    e = torch.eye(8)
    tokens = torch.stack([
        10 * e[0],  # 0: largest norm -> the pivot
        e[0] + 0.01 * e[1], e[0] + 0.02 * e[2], e[0] + 0.03 * e[3],  # 1-3: near the pivot (duplicates)
        -e[0],  # 4: opposite the pivot (least similar)
        e[4],  # 5: orthogonal
        0.9 * e[0] + 0.1 * e[5],  # 6: near the pivot
        e[5] - 0.5 * e[0],  # 7: negative similarity
    ]).unsqueeze(0)
    red = REDUCTIONS.create("dart", budget=4, model=model, pivots=1)
    assert red.keep(tokens)[0].tolist() == [0, 4, 5, 7]
    red = REDUCTIONS.create("dart", budget=2, model=model, pivots=2)  # pivots only: the two largest norms
    assert red.keep(tokens * torch.tensor([1, 1, 1, 1, 1, 5, 1, 1.0])[None, :, None])[0].tolist() == [0, 5]
    # a near-copy of the first pivot is not a second pivot, though its norm is second largest
    assert red.keep(tokens * torch.tensor([1, 1, 1, 9, 1, 5, 1, 1.0])[None, :, None])[0].tolist() == [0, 5]


def greedy_max_min(tokens: torch.Tensor, budget: int) -> list[int]:
    x = F.normalize(tokens[0].double(), dim=-1)
    d = (1 - x @ x.T).clamp_min(0)
    n = len(x)
    first = max(range(n), key=lambda i: (min(d[i, j] for j in range(n) if j != i), -i))
    sel = [first]
    while len(sel) < budget:
        rest = [i for i in range(n) if i not in sel]
        sel.append(max(rest, key=lambda i: (min(d[i, j] for j in sel), -i)))
    return sorted(sel)


@pytest.mark.parametrize("budget", [1, 5, 16])
def test_divprune_is_greedy_max_min_diversity(model, budget):
    tokens = torch.randn(1, 30, 12, generator=torch.Generator().manual_seed(budget))
    red = REDUCTIONS.create("divprune", budget=budget, model=model)
    assert red.keep(tokens)[0].tolist() == greedy_max_min(tokens, budget)


@pytest.mark.parametrize("name", ["dart", "divprune"])
def test_selection_runs_on_the_projected_patches(model, images, name):
    red = REDUCTIONS.create(name, budget=10, model=model)
    model.reduction = red
    pix = model.processor(images)
    with torch.no_grad():
        feats = model.encoder_features(pix)
        all_tokens = model.compressor.project(feats.patches(model.compressor.layer))  # (B, N, D)
        idx = red.kept_patches(feats, model.compressor)  # (B, 10)
        got = model.encode_images(pix)
    assert torch.equal(idx, red.keep(all_tokens))
    torch.testing.assert_close(got, torch.gather(all_tokens, 1, idx.unsqueeze(-1).expand(-1, -1, got.shape[-1])))


# ---- PyramidDrop ----------------------------------------------------------------------------------------------
def eager_attentions(model, embeds, mask):
    cfg = model.llm.config
    old = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model.llm(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions
    finally:
        cfg._attn_implementation = old


def test_pyramiddrop_ranks_by_the_last_instruction_token_and_nests_its_stages(model, images):
    ids, mask, pix = batch(model, images)
    red = REDUCTIONS.create("pyramiddrop", budget=None, model=model, ratio=0.5, layers=(1, 2, 3))
    assert red.schedule(N) == [32, 16, 8]
    assert red.equivalent_tokens() == (64 + 32 + 16 + 8) / 4
    model.reduction = red
    with torch.no_grad():
        embeds = model.merge(ids, model.encode_images(pix))
        model(ids, mask, pix, logits_to_keep=1)
    score = eager_attentions(model, embeds, mask)[0][:, :, -1].mean(dim=1)  # (B, T): layer 1, last token
    is_img = ids == IMAGE_TOKEN_ID
    top = score.masked_fill(~is_img, -1).topk(32, dim=1).indices
    want = [sorted(set(torch.nonzero(~is_img[b]).flatten().tolist()) | set(top[b].tolist())) for b in range(2)]
    stages = red.last_stage_positions
    assert stages[0].tolist() == want
    for a, b in zip(stages, stages[1:]):  # each stage keeps a subset of the previous one
        for r in range(2):
            assert set(b[r].tolist()) < set(a[r].tolist())
    assert torch.equal(red.last_kept_positions, stages[-1])


def test_pyramiddrop_generation_with_its_cache_equals_recomputing(model, images):
    ids, mask, pix = batch(model, images)
    red = REDUCTIONS.create("pyramiddrop", budget=30, model=model)
    with torch.no_grad():
        embeds = model.merge(ids, model.encode_images(pix))
    steps, t = 6, ids.shape[1]
    got = red.generate(model.llm, embeds, mask, ids == IMAGE_TOKEN_ID, max_new_tokens=steps, eos_token_id=[])
    is_img, m, e, want = ids == IMAGE_TOKEN_ID, mask, embeds, []
    with torch.no_grad():
        for _ in range(steps):  # no cache: the whole sequence again, ranked by the prompt's last token
            pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)
            tok = red.llm_forward(model.llm, e, m, is_img, position_ids=pos, score_index=t - 1,
                                  logits_to_keep=1).logits[:, -1].argmax(dim=-1)
            want.append(tok)
            e = torch.cat([e, model.llm.get_input_embeddings()(tok)[:, None]], dim=1)
            m = torch.cat([m, torch.ones_like(m[:, :1])], dim=1)
            is_img = torch.cat([is_img, torch.zeros_like(is_img[:, :1])], dim=1)
    assert torch.equal(got, torch.stack(want, dim=1))
    assert len(set(got.flatten().tolist())) > 2


@pytest.mark.parametrize("name", STAGED)
def test_full_budget_generates_what_the_plain_model_generates(model, images, name):
    plain = model.generate(images, QUESTIONS, max_new_tokens=6)
    model.reduction = REDUCTIONS.create(name, budget=N, model=model)
    same = model.generate(images, QUESTIONS, max_new_tokens=6)
    model.reduction = REDUCTIONS.create(name, budget=20, model=model)
    pruned = model.generate(images, QUESTIONS, max_new_tokens=6)
    assert same.texts == plain.texts
    assert pruned.texts != plain.texts


# ---- SparseVLM ------------------------------------------------------------------------------------------------
def test_sparsevlm_keeps_the_tokens_the_question_attends_to(model, images):
    ids, mask, pix = batch(model, images)
    is_img = ids == IMAGE_TOKEN_ID
    t = ids.shape[1]
    g = torch.Generator().manual_seed(0)
    wanted = [sorted(torch.randperm(N, generator=g)[:8].tolist()) for _ in range(2)]  # image-token indices
    decoy = [sorted(set(range(N)) - set(w))[:8] for w in wanted]
    red = REDUCTIONS.create("sparsevlm", budget=36, model=model, layers=(2,), recycle=0.0, merge=0.0)
    assert red.schedule(N) == [8]  # (2 * 64 + 2 * 8) / 4 = 36

    def attention(layer, h, cos_sin, mask_):  # (B, T, T): the question looks at `wanted`, the system text at `decoy`
        a = torch.full((2, t, t), 1e-4)
        for b in range(2):
            img_pos = torch.nonzero(is_img[b]).flatten()
            first_img = int(img_pos[0])
            a[b, first_img + N:, img_pos[wanted[b]]] = 1.0  # rows after the image: the question
            a[b, :first_img, img_pos[decoy[b]]] = 5.0  # rows before the image (system prompt) are not raters
        return a

    red.attention = attention
    model.reduction = red
    with torch.no_grad():
        model(ids, mask, pix, logits_to_keep=1)
    for b in range(2):
        img_pos = torch.nonzero(is_img[b]).flatten()
        kept = [p for p in red.last_kept_positions[b].tolist() if is_img[b, p]]
        assert kept == img_pos[wanted[b]].tolist()


def test_sparsevlm_recycles_pruned_tokens_into_merged_ones(model):
    red = REDUCTIONS.create("sparsevlm", budget=40, model=model, recycle=1.0, merge=0.5)
    e = torch.eye(6)
    # 2 text slots then 8 image slots; ranks by score: 2 (best) 3 | centres 4, 5 | pool 6 7 8 9
    h = torch.stack([e[0], e[0], e[1], e[1], e[2], e[3], e[2] * 3, e[3] * 2, e[2] + 0.1 * e[4], e[3] + 0.1 * e[5]])
    scores = torch.tensor([0, 0, 9, 8, 7, 6, 5, 4, 3, 2.0])
    image = torch.tensor([False, False] + [True] * 8)
    keep, out = red.prune(0, h[None], scores[None], image[None], n_img=8, n_keep=4)
    assert keep[0].tolist() == [0, 1, 2, 3, 4, 5]  # text, the top 2, the 2 centres in their slots
    torch.testing.assert_close(out[0, :4], h[:4])
    torch.testing.assert_close(out[0, 4], (h[4] + h[6] + h[8]) / 3)  # centre 4 + the pool tokens like it
    torch.testing.assert_close(out[0, 5], (h[5] + h[7] + h[9]) / 3)


# ---- ToMe -----------------------------------------------------------------------------------------------------
def test_bipartite_merge_merges_the_most_similar_pairs_by_size():
    e = torch.eye(4)
    # prefix (CLS) then 6 patches; A = slots 0, 2, 4 and B = 1, 3, 5; patch 0 duplicates 1, patch 4 is near 5
    x = torch.stack([e[3] * 7, e[0], e[0], e[1], -e[1] + e[2], e[2], e[2] + 0.05 * e[1]])[None]
    size = torch.tensor([[1.0, 1, 3, 1, 1, 1, 1]])
    members = torch.eye(6)[None]
    out, s, m = bipartite_merge(x, size, members, prefix=1, r=2)
    assert out.shape == (1, 5, 4) and s.tolist() == [[1.0, 4, 1, 1, 2]]
    torch.testing.assert_close(out[0, 0], x[0, 0])  # CLS untouched
    torch.testing.assert_close(out[0, 1], (1 * x[0, 1] + 3 * x[0, 2]) / 4)  # size-weighted average
    torch.testing.assert_close(out[0, 4], (x[0, 5] + x[0, 6]) / 2)
    assert m[0].argmax(dim=0).tolist() == [0, 0, 1, 2, 3, 3]  # patch -> output token, in row-major order


def test_tome_merges_inside_the_encoder_and_makes_it_cheaper(model, images):
    pix = model.processor(images)
    seen: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1])) for b in model.encoder.blocks]
    try:
        with torch.no_grad():
            plain = model.encode_images(pix)
            assert seen == [1 + N] * 3  # CLS + 64 patches in each of the 3 blocks before the -2 output
            enc_plain = vision_flops(model)[0]
            seen.clear()
            red = REDUCTIONS.create("tome", budget=16, model=model)
            model.reduction = red
            out = model.encode_images(pix)
            tome_seen, groups = list(seen), red.patch_groups()
            enc_tome = vision_flops(model)[0]
    finally:
        for hd in hooks:
            hd.remove()
    rs = red.schedule(N, 3)
    assert sum(rs) == N - 16 and all(r <= n // 2 for r, n in zip(rs, [N, N - rs[0], N - rs[0] - rs[1]]))
    assert tome_seen == [1 + N, 1 + N - rs[0], 1 + N - rs[0] - rs[1]]  # blocks 2 and 3 run on merged tokens
    assert out.shape == (2, 16, model.llm_dim)
    assert enc_tome < 0.8 * enc_plain
    assert groups.shape == (2, N) and sorted(set(groups[0].tolist())) == list(range(16))
    model.reduction = REDUCTIONS.create("tome", budget=N, model=model)  # no merge: the plain model exactly
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(pix), plain)


def test_tome_proportional_attention_weights_keys_by_size(model, images):
    """A merged token of size s weighs like s copies of itself: the block sees log(size) as an additive mask."""
    red = REDUCTIONS.create("tome", budget=40, model=model)
    # probe hooks registered inside tome's context run after tome's own and see the mask it hands each block
    with red.encoder_context(model.encoder):
        bias = []
        probe = [b.register_forward_pre_hook(lambda mod, args: bias.append(args[1].clone())) for b in model.encoder.blocks]
        try:
            with torch.no_grad():
                model.encoder(model.processor(images), layers=[-2])
        finally:
            for hd in probe:
                hd.remove()
    assert torch.equal(bias[0], torch.zeros_like(bias[0]))  # block 1: every token has size 1
    sizes = bias[1].exp().round()  # (B, 1, 1, 1 + n)
    assert sizes.shape[-1] == 1 + N - red.schedule(N, 3)[0]
    assert sizes[..., 0].eq(1).all() and sizes.sum(dim=-1).eq(1 + N).all()  # CLS alone; patches all accounted for


# ---- options and errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options, match", [
    ("pyramiddrop", {"budget": 10}, "cannot reach"),
    ("sparsevlm", {"budget": 16, "layers": (2, 3)}, "cannot reach"),
    ("pyramiddrop", {"budget": 30, "layers": (3, 2)}, "layers"),
    ("pyramiddrop", {"budget": 30, "layers": (1, 4)}, "layers"),
    ("pyramiddrop", {"budget": 30, "ratio": 0.5}, "not both"),
    ("sparsevlm", {"budget": 30, "recycle": 1.5}, "recycle"),
    ("dart", {"budget": 8, "pivots": 0}, "pivots"),
    ("tome", {"budget": 7}, "at least 8"),
    ("divprune", {"budget": N + 1}, "budget"),
])
def test_bad_options_are_clear_errors(model, name, options, match):
    with pytest.raises(CompactVLMError, match=match):
        REDUCTIONS.create(name, model=model, **options)


def test_staged_default_layers_start_after_layer_1_when_the_budget_needs_it(model):
    assert REDUCTIONS.create("pyramiddrop", budget=40, model=model).drop_layers == [2, 3]
    assert REDUCTIONS.create("pyramiddrop", budget=30, model=model).drop_layers == [1, 2, 3]
    big = tiny_vlm("mlp2x_gelu", llm_layers=30)
    assert REDUCTIONS.create("pyramiddrop", budget=6, model=big).drop_layers == [2, 11, 21]
    assert REDUCTIONS.create("pyramiddrop", budget=5, model=big).drop_layers == [1, 11, 20]  # (2*64+28)/30 > 5
    assert REDUCTIONS.create("sparsevlm", budget=30, model=big).drop_layers == [2, 6, 14]


# ---- every registered reduction through generate ------------------------------------------------------------
def budget_for(name: str) -> int:
    """A budget every method accepts on the tiny model (staged pruning needs >= (64 + 3) / 4 equivalent tokens)."""
    return 30 if issubclass(REDUCTIONS.get(name), StagedPruning) else 16


@pytest.mark.parametrize("name", REDUCTIONS.names())
def test_every_reduction_runs_end_to_end_through_generate(model, images, name):
    budget = budget_for(name)
    red = REDUCTIONS.create(name, budget=budget, model=model)
    model.reduction = red
    res = model.generate(images, QUESTIONS, max_new_tokens=4)
    assert len(res.texts) == 2 and all(isinstance(t, str) for t in res.texts)
    assert res.num_image_tokens == (N if red.in_llm else budget)
    assert red.equivalent_tokens() <= res.num_image_tokens
    if red.in_llm:
        assert red.equivalent_tokens() < N


# ---- token maps (viz) -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, budget, kind, count", [("dart", 12, "kept", 12), ("divprune", 12, "kept", 12),
                                                       ("tome", 12, "groups", 12), ("pyramiddrop", 30, "kept", 8),
                                                       ("sparsevlm", 30, "kept", 8)])
def test_token_maps_show_what_each_method_keeps(model, images, name, budget, kind, count):
    from compactvlm.viz.token_maps import token_map

    red = REDUCTIONS.create(name, budget=budget, model=model)
    model.reduction = red
    pix = model.processor(images[:1])
    tm = token_map(model, pix)
    assert tm.kind == kind
    if kind == "groups":
        assert sorted(set(tm.groups.tolist())) == list(range(count)) and tm.num_groups == count
    else:
        assert len(tm.kept) == count
    if name in ("dart", "divprune"):
        with torch.no_grad():
            want = red.kept_patches(model.encoder_features(pix), model.compressor)[0].tolist()
        assert tm.kept.tolist() == want
    if red.in_llm:
        assert red.schedule(N)[-1] == count
