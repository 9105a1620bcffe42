"""Official metric behaviour, checked against values worked out by hand."""

from __future__ import annotations

import pytest

from compactvlm.evaluate.metrics import (circular_accuracy, exact_match, extract_option, gqa_score, mme_score,
                                         mme_yes_no, normalize_answer, option_accuracy, pope_metrics, pope_score,
                                         pope_yes_no, sqa_option, vqa_accuracy, vqa_score)


@pytest.mark.parametrize("raw, norm", [
    ("Two.", "2"),                   # number word -> digit, final period dropped
    ("none", "0"),
    ("The Dog", "dog"),              # lower case, article dropped
    ("an apple", "apple"),
    ("dont", "don't"),               # contraction restored
    ("1,000", "1000"),               # digit grouping comma
    ("t-shirt", "t shirt"),          # hyphen inside a word -> space
    ("yes!", "yes"),
    ("3.5", "3.5"),                  # a period before a digit stays
    ("red , white", "red white"),
    ("  Coca\tCola\n", "coca cola"),
    ("it's", "it 's"),               # the possessive split off (EvalAI processor)
    ("(c)", "c"),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_leave_one_out_by_hand():
    # 2 of 10 humans said "cat": the 2 "cat" subsets hold 1 cat (1/3), the 8 others hold 2 (2/3)
    # -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)
    # 1 of 10: 9 subsets hold it once -> 9 * (1/3) / 10 = 0.3
    assert vqa_accuracy("Cat.", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    # 3 of 10: the 3 "cat" subsets hold 2 (2/3), the 7 others hold 3 (1) -> (2 + 7) / 10 = 0.9
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("bird", ["cat"] * 10) == 0.0
    # normalisation on both sides: "two" == "2", "a dog" == "dog"
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("A dog", ["dog"] * 10) == 1.0


def test_vqa_score_is_mean_percent():
    out = vqa_score(["cat", "bird"], [["cat"] * 2 + ["dog"] * 8, ["bird"] * 10])
    assert out["accuracy"] == pytest.approx(80.0)
    assert out["n"] == 2
    with pytest.raises(ValueError):
        vqa_score(["a"], [])


def test_gqa_exact_match_and_groups():
    assert exact_match("Yes.", "yes")
    assert exact_match(" Left ", "left")
    assert not exact_match("the table", "table")      # GQA does not drop articles
    out = gqa_score(["Yes.", "no", "the table"], ["yes", "no", "table"], ["verify", "verify", "query"])
    assert out["accuracy"] == pytest.approx(200 / 3)
    assert out["per_group"] == {"query": 0.0, "verify": 100.0}


def test_pope_yes_no_reading_is_llavas():
    assert pope_yes_no("Yes, there is a dog.") == "yes"
    assert pope_yes_no("No.") == "no"
    assert pope_yes_no("There is not a cat.") == "no"
    assert pope_yes_no("No, there is none") == "no"
    assert pope_yes_no("I don't see one") == "yes"              # LLaVA's parser only knows No / no / not
    assert pope_yes_no("Yes. But no cat.") == "yes"              # only the first sentence counts


def test_pope_metrics_by_hand():
    # labels y n y n y n ; preds y y n n y n -> TP 2, FP 1, TN 2, FN 1
    out = pope_metrics(["yes", "yes", "no", "no", "Yes", "no"], ["yes", "no", "yes", "no", "yes", "no"])
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (2, 1, 2, 1)
    assert out["accuracy"] == pytest.approx(400 / 6)
    assert out["precision"] == pytest.approx(200 / 3)
    assert out["recall"] == pytest.approx(200 / 3)
    assert out["f1"] == pytest.approx(200 / 3)
    assert out["yes_ratio"] == pytest.approx(50.0)
    # always "yes" on a balanced set: P 50, R 100, F1 66.7, accuracy 50
    yes = pope_metrics(["yes"] * 4, ["yes", "no", "yes", "no"])
    assert (yes["accuracy"], yes["precision"], yes["recall"]) == (50.0, 50.0, 100.0)
    assert yes["f1"] == pytest.approx(200 / 3)
    # never "yes": precision undefined -> 0, F1 0
    assert pope_metrics(["no"] * 2, ["yes", "no"])["f1"] == 0.0


def test_pope_score_splits_and_means():
    out = pope_score(["yes", "no", "no", "no"], ["yes", "no", "yes", "no"], ["random", "random", "popular", "popular"])
    assert out["random"]["accuracy"] == 100.0 and out["popular"]["accuracy"] == 50.0
    assert out["mean_accuracy"] == 75.0
    assert out["mean_f1"] == pytest.approx((100.0 + 0.0) / 2)


def test_mme_reading_and_scores_by_hand():
    assert mme_yes_no("Yes") == "yes"
    assert mme_yes_no("no, it is not") == "no"
    assert mme_yes_no("Not sure") == "no"                      # "no" within the first four characters
    assert mme_yes_no("The answer is yes") == "other"
    # category A: image 1 both right, image 2 one right -> acc 75, acc+ 50 -> 125
    # category B: one image, one right -> acc 50, acc+ 0 -> 50
    preds = ["Yes", "No", "yes", "yes", "maybe", "no"]
    labels = ["yes", "no", "yes", "no", "yes", "no"]
    cats = ["existence", "existence", "existence", "existence", "artwork", "artwork"]
    images = ["e1", "e1", "e2", "e2", "a1", "a1"]
    out = mme_score(preds, labels, cats, images)
    assert out["categories"]["existence"]["acc"] == 75.0
    assert out["categories"]["existence"]["acc_plus"] == 50.0
    assert out["categories"]["existence"]["score"] == 125.0
    assert out["categories"]["artwork"]["score"] == 50.0
    assert out["perception"] == 175.0 and out["cognition"] == 0.0
    cog = mme_score(["yes", "no"], ["yes", "no"], ["code_reasoning"] * 2, ["c", "c"])
    assert cog["cognition"] == 200.0 and cog["perception"] == 0.0


OPTS = ["dress", "bag", "coat", "boot"]


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("B.", "B"), ("(C)", "C"), ("D) boot", "D"), ("C. coat", "C"),
    ("The answer is D.", "D"), ("Answer: A", "A"),
    ("bag", "B"), ("A bag", "B"),             # option text; the leading "A" is an article
    ("I think it is the coat.", "C"),
    ("It could be B or C", None),             # two letters: undecided
    ("a bag and a coat", None),               # two option texts
    ("", None), ("E", None),
])
def test_extract_option(text, letter):
    assert extract_option(text, OPTS) == letter


def test_sqa_reading_is_strict():
    assert sqa_option("B", 3) == "B"
    assert sqa_option("B. duck", 3) == "B"
    assert sqa_option("The answer is A.", 3) == "A"
    assert sqa_option("(B)", 3) is None
    assert sqa_option("duck", 3) is None
    assert sqa_option("C", 2) is None                        # only as many letters as choices


def test_option_and_circular_accuracy_by_hand():
    # question g1 right in all 4 shifts, g2 right in its first 2 of 3 -> circular 50, vanilla 100
    picked = ["C", "B", "A", "D", "A", "C", "A"]
    answers = ["C", "B", "A", "D", "A", "C", "B"]
    groups = ["g1"] * 4 + ["g2"] * 3
    out = circular_accuracy(picked, answers, groups, ["x"] * 4 + ["y"] * 3)
    assert out["circular_accuracy"] == 50.0
    assert out["vanilla_accuracy"] == 100.0
    assert out["per_category"] == {"x": 100.0, "y": 0.0}
    acc = option_accuracy([None, "A", "B"], ["A", "A", "A"])
    assert acc["accuracy"] == pytest.approx(100 / 3) and acc["unparsed"] == 1
