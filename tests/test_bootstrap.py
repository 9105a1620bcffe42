"""The test-image bootstrap of SceneQA scores (compactvlm.evaluate.bootstrap)."""

import pytest

from compactvlm.errors import CompactVLMError
from compactvlm.evaluate.benchmarks.sceneqa import score_rows
from compactvlm.evaluate.bootstrap import bootstrap_sceneqa, resample_images


def _records(n_images=30):
    """Per image: one existence question and an MME yes/no pair (grouped by image, for acc+)."""
    rows = []
    for i in range(n_images):
        img = f"images/test/{i:06d}.jpg"
        rows.append({"question_id": f"q{i}-e", "image": img, "family": "existence", "subset": "random",
                     "answer": "yes" if i % 2 else "no", "answers": ["yes" if i % 2 else "no"]})
        for j, lab in enumerate(("yes", "no")):
            rows.append({"question_id": f"q{i}-m{j}", "image": img, "family": "mme", "subset": "existence",
                         "group": f"g{i}", "answer": lab, "answers": [lab]})
    return rows


def _truth(rows):
    return {r["question_id"]: r["answer"] for r in rows}


def test_identical_runs_have_zero_difference_and_full_prt():
    rows = _records()
    right = _truth(rows)
    b = bootstrap_sceneqa(rows, [right], [right], n=50)
    assert b["delta"] == [0.0, 0.0, 0.0] and b["prt"] == [pytest.approx(100.0)] * 3
    assert b["family_mean"] == [100.0, 100.0, 100.0] and b["clusters"] == 30 and b["unit"] == "test image"


def test_point_estimate_is_the_benchmark_score_and_lies_in_its_ci():
    rows = _records()
    preds = {r["question_id"]: ("yes" if k % 3 else "no") for k, r in enumerate(rows)}
    b = bootstrap_sceneqa(rows, [preds], n=300, seed=1)
    point = score_rows(rows, [preds[r["question_id"]] for r in rows])["family_mean"]
    assert b["family_mean"][0] == pytest.approx(point)
    assert b["family_mean"][1] < point < b["family_mean"][2]
    assert "delta" not in b  # no reference given
    # deterministic for a given seed, different draws for another
    assert bootstrap_sceneqa(rows, [preds], n=300, seed=1) == b
    assert bootstrap_sceneqa(rows, [preds], n=300, seed=2)["family_mean"][1:] != b["family_mean"][1:]


def test_a_clearly_better_run_has_a_difference_ci_above_zero():
    rows = _records()
    right = _truth(rows)
    always_yes = {q: "yes" for q in right}
    b = bootstrap_sceneqa(rows, [right], [always_yes], n=200)
    assert b["delta"][0] > 0 and b["delta"][1] > 0  # the whole interval excludes "no difference"
    assert b["prt"][0] > 100


def test_repeated_images_are_separate_clusters():
    # three images, MME pairs only: image 0 answered right twice, images 1 and 2 wrong twice. Drawing image 0
    # twice and image 1 once: acc 4/6, acc+ 2/3 (two copies of image 0 count twice) -> (66.7 + 66.7) / 2.
    # Merging the copies into one group would give acc+ 1/2 and 58.3 %.
    rows = [r for r in _records(3) if r["family"] == "mme"]
    by_image = {}
    for i, r in enumerate(rows):
        by_image.setdefault(r["image"], []).append(i)
    preds = {r["question_id"]: (r["answer"] if r["image"].endswith("000000.jpg") else "maybe") for r in rows}
    imgs = list(by_image)
    draw_rows, idx = resample_images(rows, by_image, [imgs[0], imgs[0], imgs[1]])
    assert idx == [0, 1, 0, 1, 2, 3] and len({r["group"] for r in draw_rows}) == 3
    s = score_rows(draw_rows, [preds[rows[i]["question_id"]] for i in idx])
    assert s["family_mean"] == pytest.approx(200 / 3)


def test_seeds_are_averaged_on_each_draw():
    rows = _records()
    right = _truth(rows)
    wrong = {q: ("no" if a == "yes" else "yes") for q, a in right.items()}
    b = bootstrap_sceneqa(rows, [right, wrong], [right, right], n=50)
    assert b["seeds"] == 2
    assert b["family_mean"][0] == pytest.approx((100.0 + score_rows(rows, [wrong[r["question_id"]] for r in rows])
                                                 ["family_mean"]) / 2)


def test_bad_inputs_are_clear_errors():
    rows = _records(3)
    right = _truth(rows)
    with pytest.raises(CompactVLMError, match="no answer for 1 of 9"):
        bootstrap_sceneqa(rows, [{k: v for k, v in right.items() if k != "q0-e"}], n=20)
    with pytest.raises(CompactVLMError, match="2 runs but 1 reference"):
        bootstrap_sceneqa(rows, [right, right], [right], n=20)
    with pytest.raises(CompactVLMError, match="at least 10 draws"):
        bootstrap_sceneqa(rows, [right], n=3)
    with pytest.raises(CompactVLMError, match="no run's answers"):
        bootstrap_sceneqa(rows, [], n=20)


def test_prt_can_average_over_chosen_families_only():
    """The study's PRT averages over the families the reference sees; the bootstrap's PRT CI must do the same."""
    rows = _records()
    right = _truth(rows)
    half_mme = {**right, **{f"q{i}-m0": "no" for i in range(0, 30, 2)}}  # every other MME pair broken
    every = bootstrap_sceneqa(rows, [half_mme], [right], n=50)
    exist = bootstrap_sceneqa(rows, [half_mme], [right], n=50, prt_components=["sceneqa/existence"])
    assert exist["prt"] == [pytest.approx(100.0)] * 3  # existence untouched
    assert every["prt"][0] < 100.0  # the MME pairs pull the all-family PRT down
