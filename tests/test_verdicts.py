"""The claims table's four verdicts (compactvlm.study.verdicts) on constructed evidence."""

import pytest

from compactvlm.errors import CompactVLMError
from compactvlm.study.verdicts import DIRECTION_ONLY, HOLDS, NOT_REPRODUCED, UNTESTED, Evidence, verdict


def ev(delta=None, prt=None, ref=True, row=True):
    return Evidence(delta=delta, prt=prt, reference_sees=ref, row_sees=row)


@pytest.mark.parametrize("kind, e, want", [
    ("greater", ev(delta=(2.0, 0.5, 3.5)), HOLDS),
    ("greater", ev(delta=(2.0, -0.5, 4.5)), DIRECTION_ONLY),
    ("greater", ev(delta=(-1.0, -3.0, 1.0)), NOT_REPRODUCED),
    ("greater", ev(delta=(0.0, -1.0, 1.0)), NOT_REPRODUCED),
    ("less", ev(delta=(-2.0, -3.5, -0.5)), HOLDS),
    ("less", ev(delta=(-2.0, -4.0, 0.5)), DIRECTION_ONLY),
    ("less", ev(delta=(1.0, -1.0, 3.0)), NOT_REPRODUCED),
    ("retains", ev(prt=(99.0, 97.5, 101.0)), HOLDS),
    ("retains", ev(prt=(99.0, 95.0, 103.0)), DIRECTION_ONLY),
    ("retains", ev(prt=(92.0, 88.0, 96.0)), NOT_REPRODUCED),
    ("equal", ev(delta=(0.5, -2.0, 2.5)), HOLDS),
    ("equal", ev(delta=(1.0, -4.0, 6.0)), DIRECTION_ONLY),
    ("equal", ev(delta=(-5.0, -8.0, -2.0)), NOT_REPRODUCED),
])
def test_rule(kind, e, want):
    assert verdict(kind, e) == want


@pytest.mark.parametrize("ref, row", [(False, True), (True, False), (False, False)])
def test_a_blind_model_makes_every_claim_untested(ref, row):
    """Even numbers that would 'hold' say nothing when a model does not beat its blind control."""
    for kind, e in [("greater", ev(delta=(5.0, 3.0, 7.0), ref=ref, row=row)),
                    ("retains", ev(prt=(100.0, 99.0, 101.0), ref=ref, row=row))]:
        assert verdict(kind, e) == UNTESTED


def test_tolerance_and_bad_input():
    assert verdict("retains", ev(prt=(99.0, 96.5, 101.0)), tol=3.0) == DIRECTION_ONLY
    assert verdict("retains", ev(prt=(99.0, 96.5, 101.0)), tol=4.0) == HOLDS
    with pytest.raises(CompactVLMError, match="unknown claim kind"):
        verdict("beats", ev(delta=(1, 0, 2)))
    with pytest.raises(CompactVLMError, match="reversed"):
        verdict("greater", ev(delta=(1, 2, 0)))
    with pytest.raises(CompactVLMError, match="PRT must be"):
        verdict("retains", ev(delta=(1, 0, 2)))


def test_a_comparison_before_the_curves_flattened_holds_at_best_in_direction():
    """A CI that settles the claim while a model was still learning gives "direction only"; the other verdicts
    (and a blind model's "untested") are unchanged."""
    loose = dict(converged=False)
    assert verdict("greater", Evidence(delta=(2.0, 0.5, 3.5), reference_sees=True, row_sees=True, **loose)) \
        == DIRECTION_ONLY
    assert verdict("retains", Evidence(prt=(99.0, 97.5, 101.0), reference_sees=True, row_sees=True, **loose)) \
        == DIRECTION_ONLY
    assert verdict("greater", Evidence(delta=(2.0, -0.5, 4.5), reference_sees=True, row_sees=True, **loose)) \
        == DIRECTION_ONLY
    assert verdict("greater", Evidence(delta=(-1.0, -3.0, 1.0), reference_sees=True, row_sees=True, **loose)) \
        == NOT_REPRODUCED
    assert verdict("greater", Evidence(delta=(5.0, 3.0, 7.0), reference_sees=False, row_sees=True, **loose)) \
        == UNTESTED
