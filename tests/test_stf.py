"""Method-specific tests for STF / MBTF and their baselines (avgpool, concat, qformer, random_drop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compactvlm.compressors import create_compressor
from compactvlm.compressors.concat import depth_to_space, space_to_depth
from compactvlm.compressors.stf import default_mbtf_layers, evenly_sampled_layers
from compactvlm.compressors.summary import param_table, table_specs
from compactvlm.model.presets import PRESETS, get_preset
from compactvlm.spec import parse_options
from compactvlm.encoders.base import EncoderInfo, VisionFeatures
from compactvlm.errors import CompactVLMError

C = 6
INFO = EncoderInfo(hidden_size=C, num_layers=4, patch_size=4, image_size=32, num_heads=2)  # 8x8 grid
LLAVA = get_preset("llava-1.5-7b")
LLAVA_ENC = LLAVA.encoder_info


def feats_of(blocks: dict[int, torch.Tensor], grid: tuple[int, int], info: EncoderInfo = INFO) -> VisionFeatures:
    """VisionFeatures from (B, H*W, C) patch tokens per block (a random CLS token is prepended)."""
    hidden = {}
    for layer, x in blocks.items():
        cls = torch.randn(x.shape[0], 1, x.shape[2], device=x.device)
        hidden[info.normalize_layer(layer)] = torch.cat([cls, x], dim=1)  # (B, 1 + H*W, C)
    return VisionFeatures(hidden=hidden, grid=grid, num_prefix=1, num_extra=0, info=info)


def position_coded(b: int, h: int, w: int, c: int) -> torch.Tensor:
    """x[n, r*W + s, ch] = 10000*n + 100*r + s + ch/100: every value names its image, position and channel."""
    n = torch.arange(b).view(b, 1, 1, 1) * 10000.0
    r = torch.arange(h).view(1, h, 1, 1) * 100.0
    s = torch.arange(w).view(1, 1, w, 1) * 1.0
    ch = torch.arange(c).view(1, 1, 1, c) / 100.0
    return (n + r + s + ch).reshape(b, h * w, c)


# --- space-to-depth / TokenConcat ------------------------------------------------------------------------------


@pytest.mark.parametrize("grid,k", [((8, 8), 2), ((4, 6), 2), ((6, 9), 3), ((8, 8), 4), ((5, 7), 1)])
def test_space_to_depth_is_exactly_invertible_and_ordered(grid, k):
    h, w = grid
    x = position_coded(2, h, w, C)
    y = space_to_depth(x, grid, k)
    assert y.shape == (2, (h // k) * (w // k), k * k * C)
    assert torch.equal(depth_to_space(y, grid, k), x)
    w2 = w // k
    for r2 in range(h // k):
        for s2 in range(w2):
            for i in range(k):
                for j in range(k):
                    p = i * k + j
                    assert torch.equal(y[:, r2 * w2 + s2, p * C:(p + 1) * C], x[:, (r2 * k + i) * w + s2 * k + j])


def test_token_concat_is_mlp_over_concatenated_windows():
    comp = create_compressor("concat", INFO, 10, k=2).eval()
    x = torch.randn(2, 64, C)
    out = comp(feats_of({-2: x}, (8, 8)))
    assert out.shape == (2, 16, 10)
    assert torch.allclose(out, comp.proj(space_to_depth(x, (8, 8), 2)))


# --- AvgPool ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid,k", [((8, 8), 2), ((4, 6), 2), ((8, 8), 4)])
def test_avgpool_equals_f_avg_pool2d(grid, k):
    h, w = grid
    comp = create_compressor("avgpool", INFO, 10, k=k).eval()
    x = torch.randn(3, h * w, C)
    feats = feats_of({-2: x}, grid)
    ref = F.avg_pool2d(x.reshape(3, h, w, C).permute(0, 3, 1, 2), k)  # (B, C, H/k, W/k)
    ref = ref.permute(0, 2, 3, 1).reshape(3, (h // k) * (w // k), C)
    assert torch.allclose(comp.pool(feats), ref, atol=1e-6)
    assert torch.allclose(comp(feats), comp.proj(ref), atol=1e-6)
    assert comp.num_output_tokens(grid) == (h // k) * (w // k)


# --- STF -------------------------------------------------------------------------------------------------------


def identity_fuse(comp) -> None:
    with torch.no_grad():
        comp.conv1.weight.copy_(torch.eye(comp.conv1.weight.shape[0]))
        comp.conv1.bias.zero_()


def test_stf_identity_fuse_preserves_the_window_tokens():
    comp = create_compressor("stf", INFO, 10, k=2, E=1)
    identity_fuse(comp)
    x = torch.randn(2, 64, C)
    fused = comp.fuse(x, (8, 8))  # (B, 16, 4C)
    assert fused.shape == (2, 16, 4 * C)
    # with conv1 = identity the fused token is the (GELU of the) concatenation of its k² tokens, so
    # depth-to-space gives back every input token, up to the elementwise activation
    assert torch.allclose(depth_to_space(fused, (8, 8), 2), F.gelu(x), atol=1e-6)
    # without the learned layer it is exactly the concatenation
    plain = create_compressor("stf", INFO, 10, k=2, E=1, learned_fuse=False)
    assert plain.conv1 is None
    assert torch.equal(depth_to_space(plain.fuse(x, (8, 8)), (8, 8), 2), x)


@pytest.mark.parametrize("k,E", [(2, 2), (2, 3), (4, 2), (4, 8)])
def test_stf_e_reshape_order(k, E):
    h, w = 8, 8
    x = position_coded(2, h, w, C)
    comp = create_compressor("stf", INFO, 10, k=k, E=E, learned_fuse=False)
    out = comp.fuse(x, (h, w))
    h2, w2, c2 = h // k, w // k, k * k * C
    assert out.shape == (2, h2 * w2 * E, c2 // E)
    for r2 in range(h2):
        for s2 in range(w2):
            # the window's k² tokens concatenated row-major, token-major
            window = torch.cat([x[:, (r2 * k + i) * w + s2 * k + j] for i in range(k) for j in range(k)], dim=-1)
            for e in range(E):
                chunk = window[:, e * c2 // E:(e + 1) * c2 // E]
                assert torch.equal(out[:, (r2 * w2 + s2) * E + e], chunk), (r2, s2, e)


def test_stf_e_chunks_are_whole_tokens_when_e_divides_k2():
    x = position_coded(1, 8, 8, C)
    comp = create_compressor("stf", INFO, 10, k=2, E=2)
    identity_fuse(comp)
    out = comp.fuse(x, (8, 8))  # (1, 32, 2C)
    # window (0, 1) is tokens (0,2),(0,3),(1,2),(1,3); its second output token holds (1,2) then (1,3)
    second = out[0, 1 * 2 + 1]
    assert torch.allclose(second, F.gelu(torch.cat([x[0, 1 * 8 + 2], x[0, 1 * 8 + 3]])))


def test_stf_forward_layers_follow_table_1b():
    comp = create_compressor("stf", INFO, 10, k=2, E=2, hidden=12)
    assert comp.conv1.weight.shape == (4 * C, 4 * C)  # C2 = k²*C1
    assert comp.conv2.weight.shape == (12, 2 * C)  # C2/E -> hidden
    assert comp.conv3.weight.shape == (10, 12)
    x = torch.randn(2, 64, C)
    feats = feats_of({-2: x}, (8, 8))
    out = comp(feats)
    ref = F.gelu(comp.conv3(F.gelu(comp.conv2(comp.fuse(x, (8, 8))))))
    assert torch.allclose(out, ref)
    assert out.min() >= -0.2  # the final GELU of Table 1b (GELU's minimum is about -0.17)
    no_act = create_compressor("stf", INFO, 10, k=2, E=2, hidden=12, act_last=False)
    no_act.load_state_dict(comp.state_dict())
    assert torch.allclose(no_act(feats), comp.conv3(F.gelu(comp.conv2(comp.fuse(x, (8, 8))))))


@pytest.mark.parametrize("k,E,want", [
    (2, 1, 144), (2, 2, 288),
    (4, 4, 144), (4, 8, 288),
    (8, 4, 36), (8, 8, 72), (8, 16, 144), (8, 32, 288),
])
def test_paper_token_counts_on_24x24(k, E, want):
    # the counts of v1 Table 4 / v2 Table 5 (576 -> 144 at 1.9 TFLOPs, 288 at 3.8, 36 at 0.5, 72 at 0.9)
    with torch.device("meta"):
        comp = create_compressor("stf", LLAVA_ENC, LLAVA.llm_dim, k=k, E=E)
        feats = feats_of({-2: torch.empty(1, 576, 1024)}, (24, 24), LLAVA_ENC)
        out = comp(feats)
    assert comp.num_output_tokens() == want == (24 // k) ** 2 * E
    assert tuple(out.shape) == (1, want, 4096)


def test_table_1_parameter_arithmetic_on_llava_7b():
    rows = param_table(LLAVA_ENC, LLAVA.llm_dim, [("stf", {"k": 2, "E": 1}), ("stf_mbtf", {"k": 2, "E": 1})])
    stf = (2 * 2 * 1024 * 4096 + 4096) + (4096 * 16384 + 16384) + (16384 * 4096 + 4096)
    mbtf = (8 * 1024 * 4096 + 4096) + (4096 * 1024 + 1024)
    assert [r["params"] for r in rows] == [stf, stf + mbtf]
    assert [r["tokens"] for r in rows] == [144, 144]


@pytest.mark.parametrize("opts", [
    {"k": 3},  # 3 does not divide 8
    {"k": 2, "E": 4},  # E = k²
    {"k": 2, "E": 5},
    {"k": 2, "E": 0},
    {"k": 1, "E": 2},
    {"k": 0},
    {"k": 2, "E": 3, "fuse_dim": 16},  # E does not divide C2
    {"k": 2, "fuse_dim": 8, "learned_fuse": False},
    {"mbtf_blocks": 5},  # more blocks than the encoder has
    {"mbtf_layers": [3, 3]},
    {"mbtf_layers": [7]},
    {"mbtf_layers": [2], "mbtf_blocks": 2},
])
def test_stf_bad_options_are_user_errors(opts):
    with pytest.raises(CompactVLMError):
        create_compressor("stf", INFO, 10, **opts)


def test_stf_grid_not_divisible_at_run_time_is_a_user_error():
    comp = create_compressor("stf", INFO, 10, k=4)
    with pytest.raises(CompactVLMError, match="does not divide"):
        comp.num_output_tokens((6, 6))
    with pytest.raises(CompactVLMError, match="does not divide"):
        comp(feats_of({-2: torch.randn(1, 36, C)}, (6, 6)))


@pytest.mark.parametrize("name", ["avgpool", "concat"])
def test_pooling_baselines_reject_k_not_dividing_the_grid(name):
    with pytest.raises(CompactVLMError):
        create_compressor(name, INFO, 10, k=3)


# --- MBTF ------------------------------------------------------------------------------------------------------


def test_mbtf_default_blocks():
    assert default_mbtf_layers(24) == list(range(3, 25, 3))
    assert default_mbtf_layers(12) == [3, 6, 9, 12]
    assert evenly_sampled_layers(24, 8) == default_mbtf_layers(24)
    sixteen = evenly_sampled_layers(24, 16)
    assert len(set(sixteen)) == 16 and sixteen == sorted(sixteen) and sixteen[-1] == 24
    assert evenly_sampled_layers(24, 24) == list(range(1, 25))
    with torch.device("meta"):
        comp = create_compressor("stf_mbtf", LLAVA_ENC, LLAVA.llm_dim)
    assert comp.feature_layers() == list(range(3, 25, 3))
    assert comp.mbtf.conv1.weight.shape == (4096, 8192) and comp.mbtf.conv2.weight.shape == (1024, 4096)
    assert create_compressor("stf", INFO, 10).feature_layers() == [-2]


def test_mbtf_concatenates_the_listed_blocks_in_order():
    comp = create_compressor("stf", INFO, 10, k=2, mbtf_layers="4,2")
    assert comp.feature_layers() == [4, 2]
    x2, x4 = torch.randn(2, 64, C), torch.randn(2, 64, C)
    feats = feats_of({2: x2, 4: x4}, (8, 8))
    ref = F.gelu(comp.mbtf.conv2(F.gelu(comp.mbtf.conv1(torch.cat([x4, x2], dim=-1)))))
    assert torch.allclose(comp.block_features(feats), ref)
    swapped = feats_of({2: x4, 4: x2}, (8, 8))
    assert not torch.allclose(comp.block_features(swapped), ref)


def test_mbtf_alone_keeps_every_token():
    comp = create_compressor("stf_mbtf", INFO, 10, k=1, E=1)
    x = {l: torch.randn(2, 64, C) for l in comp.feature_layers()}
    assert comp(feats_of(x, (8, 8))).shape == (2, 64, 10) and comp.num_output_tokens() == 64


# --- Q-Former, random drop -------------------------------------------------------------------------------------


def test_qformer_budget_is_independent_of_the_grid():
    comp = create_compressor("qformer", INFO, 10).eval()
    assert comp.num_output_tokens() == 16 == (8 // 2) * (8 // 2)  # default: the k=2 budget
    for grid in [(8, 8), (4, 6)]:
        out = comp(feats_of({-2: torch.randn(2, grid[0] * grid[1], C)}, grid))
        assert out.shape == (2, 16, 10) and comp.num_output_tokens(grid) == 16
    assert create_compressor("qformer", INFO, 10, tokens=5, dim=8, heads=4).num_output_tokens() == 5


def test_random_drop_eval_is_seeded_sorted_and_shared_across_the_batch():
    comp = create_compressor("random_drop", INFO, 10, tokens=16, seed=3).eval()
    idx = comp.keep_indices(4, 64)
    assert idx.shape == (4, 16)
    assert torch.equal(idx, comp.keep_indices(4, 64))  # same seed, same subset
    assert (idx == idx[:1]).all()  # shared by the batch
    assert (idx[0].diff() > 0).all()  # spatial order kept, no repeats
    other = create_compressor("random_drop", INFO, 10, tokens=16, seed=4).eval()
    assert not torch.equal(idx, other.keep_indices(4, 64))
    x = torch.randn(4, 64, C)
    out = comp(feats_of({-2: x}, (8, 8)))
    assert torch.allclose(out, comp.proj(x[:, idx[0]]))


def test_random_drop_training_draws_per_image():
    comp = create_compressor("random_drop", INFO, 10, tokens=16).train()
    torch.manual_seed(0)
    idx = comp.keep_indices(4, 64)
    assert idx.shape == (4, 16) and not (idx == idx[:1]).all()
    assert all(len(set(row.tolist())) == 16 for row in idx)


def test_random_drop_budget_above_the_grid_is_a_user_error():
    with pytest.raises(CompactVLMError):
        create_compressor("random_drop", INFO, 10, tokens=65)
    comp = create_compressor("random_drop", INFO, 10, tokens=64)
    with pytest.raises(CompactVLMError):
        comp.num_output_tokens((4, 4))


# --- summary table ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_param_table_matches_real_modules(preset):
    p = get_preset(preset)
    enc = p.encoder_info
    specs = [("avgpool", {"k": 2}), "concat_k2", "stf:k=2,E=2", ("stf", {"k": 5})]
    rows = param_table(enc, p.llm_dim, specs)
    h, w = enc.grid
    assert [r["tokens"] for r in rows[:3]] == [h * w // 4, h * w // 4, h * w // 2]
    c, d = enc.hidden_size, p.llm_dim
    assert rows[0]["params"] == (c * d + d) + (d * d + d)
    assert rows[1]["params"] == (4 * c * d + d) + (d * d + d)
    assert rows[3]["error"] and rows[3]["params"] is None  # 5 divides neither 24 nor 16


def test_the_default_table_is_the_registry_s_variants():
    rows = {r["name"]: r for r in param_table(LLAVA_ENC, LLAVA.llm_dim)}
    assert list(rows) == table_specs() and table_specs()[0] == "mlp2x_gelu"
    assert rows["stf_k2e1"]["options"] == "k=2,E=1" and rows["stf_k2e1"]["tokens"] == 144
    assert rows["stf_mbtf_k2e1"]["params"] == 188_773_376  # MBTF + STF (k=2, E=1), Table 1 of the paper
    assert rows["concat_k4"]["tokens"] == 36 and rows["avgpool_k4"]["tokens"] == 36
    with pytest.raises(CompactVLMError, match="reduction"):
        param_table(LLAVA_ENC, LLAVA.llm_dim, ["mlp2x_gelu+fastv:budget=16"])


def test_parse_options():
    assert parse_options("stf:k=4,E=8,mbtf_layers=[3,6]") == ("stf", {"k": 4, "E": 8, "mbtf_layers": [3, 6]})
    assert parse_options("stf_mbtf:mbtf_layers=3,6,9,E=2") == ("stf_mbtf", {"mbtf_layers": (3, 6, 9), "E": 2})
    assert parse_options("avgpool") == ("avgpool", {})
    with pytest.raises(CompactVLMError):
        parse_options("stf:k")
