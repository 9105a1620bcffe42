"""Both scoring rule sets against their references on every case of tests/fixtures/metric_cases.json.

lmms-eval rules: lmms-eval 0.7.3's own scoring code gives the expected answer of every case (no answers are
stored for them); 0 disagreements allowed. llava rules: the VQA normaliser against the EvalAI processor (the
one LLaVA's m4c_evaluator copies; lmms-eval ships it verbatim), every other case agrees with lmms-eval unless
the table records a departure, which must then really depart. Needs lmms-eval's code: `make test-lmms-eval`.
"""

from __future__ import annotations

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not importable: `make test-lmms-eval` puts its code on "
                                        "PYTHONPATH and runs this file")
pytest.importorskip("loguru", reason="lmms-eval's code needs loguru (installed with it by `make test-lmms-eval`)")

from compactvlm.evaluate.metrics import mme_score, pope_metrics  # noqa: E402
from lmms_reference import Reference  # noqa: E402
from metric_cases import KINDS, load_cases, ours  # noqa: E402


@pytest.fixture(scope="module")
def ref():
    return Reference()


@pytest.fixture(scope="module")
def cases():
    return load_cases()


@pytest.mark.parametrize("kind", KINDS)
def test_lmms_eval_rules_agree_with_lmms_eval_on_every_case(ref, cases, kind):
    wrong = [(c, ours(kind, c, "lmms-eval"), ref.output(kind, c)) for c in cases[kind]
             if ours(kind, c, "lmms-eval") != ref.output(kind, c)]
    assert not wrong, f"{len(wrong)} of {len(cases[kind])} {kind} cases disagree, e.g. {wrong[:3]}"


def test_llava_normaliser_is_the_evalai_processor_on_every_case(ref, cases):
    processor = ref.EvalAI()
    wrong = [c for c in cases["evalai"] if ours("evalai", c, "llava") != processor(c)]
    assert not wrong, f"{len(wrong)} cases differ from EvalAI's processor: {wrong[:5]}"


@pytest.mark.parametrize("kind", KINDS[1:])
def test_llava_rules_depart_from_lmms_eval_exactly_where_recorded(ref, cases, kind):
    unrecorded, not_departing = [], []
    for c in cases[kind]:
        mine, theirs = ours(kind, c, "llava"), ref.output(kind, c)
        if "llava" not in c and mine != theirs:
            unrecorded.append((c, mine, theirs))
        if "llava" in c and c["llava"] == theirs:
            not_departing.append(c)
    assert not unrecorded, f"llava departs from lmms-eval without a record: {unrecorded[:3]}"
    assert not not_departing, f"recorded departures that agree with lmms-eval: {not_departing[:3]}"


def test_pope_aggregates_equal_lmms_evals(ref, cases):
    rows = cases["pope"]
    for part in (rows, rows[:40], rows[1::3], rows[::7]):
        ours_ = pope_metrics([c["pred"] for c in part], [c["label"] for c in part], "lmms-eval")
        theirs = ref.pope_aggregate(part)
        for mine, key in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"),
                          ("f1", "f1_score"), ("yes_ratio", "yes_ratio")):
            assert ours_[mine] == pytest.approx(100.0 * theirs[key], abs=1e-9), (mine, len(part))


def test_mme_totals_equal_lmms_evals(ref, cases):
    rows = cases["mme"]  # consecutive pairs are an image's two questions; categories cycle
    cats = ["existence", "count", "OCR", "code_reasoning", "text_translation"]
    images = [f"img{i // 2}" for i in range(len(rows))]
    categories = [cats[(i // 2) % len(cats)] for i in range(len(rows))]
    for lo, hi in ((0, len(rows)), (0, 24), (24, 60)):
        part, cat, img = rows[lo:hi], categories[lo:hi], images[lo:hi]
        mine = mme_score([c["pred"] for c in part], [c["label"] for c in part], cat, img, rules="lmms-eval")["total"]
        assert mine == pytest.approx(ref.mme_aggregate(part, cat, img), abs=1e-9)
