"""Property-based token-count arithmetic (hypothesis) for every registered compressor and reduction.

For random grids and options, an independent oracle (the paper's arithmetic, written out here) says whether
the combination is valid and how many tokens it gives. Valid: ``num_output_tokens`` equals the oracle and the
number of tokens the forward pass really emits (and the prompt's placeholder count). Invalid: building it
raises ``CompactVLMError``, never another exception and never a silently wrong count. Reductions keep exactly
their budget.

Tiny random DINOv2 (width 32, 4 blocks, 2 heads, patch 4) at 16/24/32/48 px -> 4x4/6x6/8x8/12x12 grids.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from compactvlm.compressors import create_compressor  # noqa: E402
from compactvlm.encoders.hf import HFVisionEncoder  # noqa: E402
from compactvlm.errors import CompactVLMError  # noqa: E402
from compactvlm.model.prompting import IMAGE_TOKEN_ID  # noqa: E402
from compactvlm.registry import COMPRESSORS, REDUCTIONS  # noqa: E402


WIDTH, PATCH, LLM_DIM = 32, 4, 24
SIDES = [4, 6, 8, 12]  # patch-grid sides
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@lru_cache(maxsize=None)
def encoder(side: int) -> HFVisionEncoder:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=WIDTH, num_hidden_layers=4, num_attention_heads=2, intermediate_size=2 * WIDTH,
                       patch_size=PATCH, image_size=side * PATCH)
    enc = HFVisionEncoder(Dinov2Model(cfg).eval(), image_size=side * PATCH).eval()
    enc.requires_grad_(False)
    return enc


# ---- oracles: (options strategy, expected count or None when the combination is invalid) ------------------
def _k_windows(side, k):
    return None if k < 1 or side % k else (side // k) ** 2


def _stf(side, p):
    k, E = p["k"], p["E"]
    n = _k_windows(side, k)
    if n is None or (k == 1 and E != 1) or (k > 1 and not 1 <= E < k * k):
        return None
    c2 = p.get("fuse_dim") or k * k * WIDTH
    if c2 % E:
        return None
    if p.get("mbtf_blocks") is not None and not 1 <= p["mbtf_blocks"] <= 4:
        return None
    return n * E


def _objects(side, p):
    pg, mo, b = p["pool_grid"], p["max_objects"], p["budget"]
    if not 1 <= pg <= side or mo < 1:
        return None
    lo, hi = 1 + pg * pg, 1 + pg * pg + mo
    if b is not None and not lo <= b <= hi:
        return None
    return hi if b is None else b


@st.composite
def _st_stf(draw, side: int, mbtf: bool):
    """Half the draws from the valid region (k a divisor of the side, 1 <= E < k²), half anywhere."""
    divisors = [d for d in range(1, 6) if side % d == 0]
    k = draw(st.one_of(st.sampled_from(divisors), st.integers(0, 5)), label="k")
    E = draw(st.one_of(st.integers(1, max(1, k * k - 1)), st.integers(0, k * k + 1)), label="E")
    p = {"k": k, "E": E}
    fuse_dim = draw(st.sampled_from([None, None, 48, 96]), label="fuse_dim")
    if fuse_dim:
        p["fuse_dim"] = fuse_dim
    if mbtf:
        blocks = draw(st.sampled_from([None, 1, 2, 3, 4, 5]), label="mbtf_blocks")
        if blocks is not None:
            p["mbtf_blocks"] = blocks
    return p


SPECS = {
    "mlp2x_gelu": (lambda side: st.just({}), lambda side, p: side * side),
    "avgpool": (lambda side: st.fixed_dictionaries({"k": st.integers(1, 13)}), lambda side, p: _k_windows(side, p["k"])),
    "concat": (lambda side: st.fixed_dictionaries({"k": st.integers(1, 13)}), lambda side, p: _k_windows(side, p["k"])),
    "stf": (lambda side: _st_stf(side, False), _stf),
    "stf_mbtf": (lambda side: _st_stf(side, True), _stf),
    "qformer": (lambda side: st.fixed_dictionaries({"tokens": st.integers(-2, 80)}),
                lambda side, p: p["tokens"] if p["tokens"] >= 1 else None),
    "random_drop": (lambda side: st.fixed_dictionaries({"tokens": st.integers(-2, side * side + 4)}),
                    lambda side, p: p["tokens"] if 1 <= p["tokens"] <= side * side else None),
    "vistog": (lambda side: st.fixed_dictionaries({"tokens": st.integers(-1, 40), "grouping": st.booleans()}),
               lambda side, p: None if p["tokens"] < 1 else (p["tokens"] if p["grouping"] else side * side)),
    "objects": (lambda side: st.fixed_dictionaries({
        "pool_grid": st.integers(0, side + 1), "max_objects": st.integers(0, 6),
        "budget": st.one_of(st.none(), st.integers(-1, 2 + (side + 1) ** 2 + 8)), "cache": st.just(False)}), _objects),
}


def test_every_registered_compressor_has_an_oracle():
    assert set(COMPRESSORS.names()) <= set(SPECS), f"add an oracle for {set(COMPRESSORS.names()) - set(SPECS)}"


@pytest.mark.parametrize("name", sorted(SPECS))
@SETTINGS
@given(data=st.data())
def test_compressor_token_count_matches_forward(name, data):
    side = data.draw(st.sampled_from(SIDES), label="grid side")
    strat, oracle = SPECS[name]
    params = data.draw(strat(side), label="options")
    want = oracle(side, params)
    event("valid" if want is not None else "invalid")
    enc = encoder(side)
    if want is None:
        with pytest.raises(CompactVLMError):
            comp = create_compressor(name, enc.info, LLM_DIM, **params)
            comp.num_output_tokens(enc.info.grid)  # a check deferred to the count is also a user error
        return
    torch.manual_seed(0)
    comp = create_compressor(name, enc.info, LLM_DIM, **params).eval()
    assert comp.num_output_tokens(enc.info.grid) == want
    assert comp.num_output_tokens() == want
    pixels = torch.randn(2, 3, side * PATCH, side * PATCH, generator=torch.Generator().manual_seed(side))
    with torch.no_grad():
        feats = enc(pixels, layers=comp.feature_layers(), extra_tokens=comp.extra_tokens(),
                    extra_attention=comp.extra_attention)
        out = comp(feats)
    assert feats.grid == (side, side)
    assert tuple(out.shape) == (2, want, LLM_DIM)
    comp.check_output(out, feats)


@pytest.mark.parametrize("k,E", [(2, 1), (2, 3), (4, 5), (4, 8)])
def test_stf_count_formula_by_hand(k, E):
    """Spot values of the oracle itself: 8x8 grid, 2x2 windows -> 16 windows x E."""
    want = {(2, 1): 16, (2, 3): None, (4, 5): None, (4, 8): 32}[(k, E)]  # E must divide C2 = k²*32
    assert _stf(8, {"k": k, "E": E}) == want
    if want is None:
        with pytest.raises(CompactVLMError, match="does not divide the fused width"):
            create_compressor("stf", encoder(8).info, LLM_DIM, k=k, E=E)
    else:
        assert create_compressor("stf", encoder(8).info, LLM_DIM, k=k, E=E).num_output_tokens() == want


# ---- reductions ------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def model(image: int):
    from compactvlm.testing import tiny_llama, tiny_vlm

    m = tiny_vlm("mlp2x_gelu", image=image)
    m.llm = tiny_llama(vocab_size=len(m.tokenizer), layers=4)  # fastv prunes after layer k=2 < 4
    return m.eval()


def _square_fits(b, side):
    r = math.isqrt(b) if b >= 0 else -1
    return b >= 1 and r * r == b and r <= side


REDUCTION_ORACLES = {  # (budget, side, options) -> valid?
    "random": lambda b, side, o: 1 <= b <= side * side,
    "visionzip": lambda b, side, o: 1 <= b <= side * side and (o.get("contextual") is None or 0 <= o["contextual"] <= b),
    "avgpool": lambda b, side, o: _square_fits(b, side),
    "fastv": lambda b, side, o: 1 <= b <= side * side,
    "dart": lambda b, side, o: 1 <= b <= side * side,
    "divprune": lambda b, side, o: 1 <= b <= side * side,
    # 3 encoder blocks before LLaVA's -2 output, each merging at most half of the tokens
    "tome": lambda b, side, o: -(-(-(-(-(-side * side // 2)) // 2)) // 2) <= b <= side * side,
    # budget = equivalent tokens; at best only LLM layer 1 of 4 sees all side*side tokens, the rest 1 each
    "pyramiddrop": lambda b, side, o: (side * side + 3) / 4 <= b <= side * side,
    "sparsevlm": lambda b, side, o: (side * side + 3) / 4 <= b <= side * side,
}


def test_every_registered_reduction_has_an_oracle():
    assert set(REDUCTIONS.names()) <= set(REDUCTION_ORACLES)


@pytest.mark.parametrize("name", sorted(REDUCTION_ORACLES))
@SETTINGS
@given(data=st.data())
def test_reduction_keeps_exactly_the_budget(name, data):
    image = data.draw(st.sampled_from([24, 32]), label="image px")
    side = image // PATCH
    n = side * side
    budget = data.draw(st.one_of(st.integers(-2, n + 3), st.sampled_from([1, n, n + 1])), label="budget")
    opts = {}
    if name == "visionzip" and data.draw(st.booleans(), label="explicit split"):
        opts["contextual"] = data.draw(st.integers(-1, max(budget, 0) + 1), label="contextual")
    m = model(image)
    m.reduction = None
    valid = REDUCTION_ORACLES[name](budget, side, opts)
    event("valid" if valid else "invalid")
    if not valid:
        with pytest.raises(CompactVLMError):
            REDUCTIONS.create(name, budget=budget, model=m, **opts)
        return
    red = REDUCTIONS.create(name, budget=budget, model=m, **opts)
    m.reduction = red
    try:
        ids, mask = m.pad_left([m.prompt_ids("what is in the image"), m.prompt_ids("how many")])
        pix = torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(budget))
        placeholders = (ids == IMAGE_TOKEN_ID).sum(dim=1).tolist()
        with torch.no_grad():
            if red.in_llm and name != "fastv":  # staged pruning: `budget` equivalent tokens (mean per LLM layer)
                assert m.num_image_tokens() == n and placeholders == [n, n]
                m(ids, mask, pix, logits_to_keep=1)
                assert budget - 1 < red.equivalent_tokens() <= budget
                kept = red.last_kept_positions
                assert (ids == IMAGE_TOKEN_ID).gather(1, kept).sum(dim=1).tolist() == [red.schedule(n)[-1]] * 2
            elif red.in_llm:  # all tokens enter the prompt, exactly `budget` survive layer k
                assert m.num_image_tokens() == n and placeholders == [n, n]
                m(ids, mask, pix, logits_to_keep=1)
                kept = red.last_kept_positions
                assert (ids == IMAGE_TOKEN_ID).gather(1, kept).sum(dim=1).tolist() == [budget, budget]
            else:
                assert m.num_image_tokens() == budget and placeholders == [budget, budget]
                assert tuple(m.encode_images(pix).shape) == (2, budget, m.llm_dim)
                out = m(ids, mask, pix, logits_to_keep=1)
                assert out.logits.shape[:2] == (2, 1)
    finally:
        m.reduction = None


@lru_cache(maxsize=None)
def _tok():
    from compactvlm.testing import tiny_tokenizer

    return tiny_tokenizer()


@SETTINGS
@given(side=st.sampled_from(SIDES), k=st.integers(1, 6), E=st.integers(1, 4))
def test_model_prompt_has_exactly_num_image_tokens_placeholders(side, k, E):
    """Where token counts meet text: the prompt's placeholder count is the compressor's count."""
    from compactvlm.model.prompting import build_prompt

    enc = encoder(side)
    want = _stf(side, {"k": k, "E": E})
    if want is None:
        with pytest.raises(CompactVLMError):
            create_compressor("stf", enc.info, LLM_DIM, k=k, E=E)
        return
    comp = create_compressor("stf", enc.info, LLM_DIM, k=k, E=E)
    ids = build_prompt(_tok(), "what is in the image", comp.num_output_tokens(enc.info.grid))
    assert ids.count(IMAGE_TOKEN_ID) == want == comp.num_output_tokens()
