"""Blind controls in the harness (compactvlm.evaluate.controls): each question's image replaced by another
question's image (shuffled) or a blank one. The control must never leak the real image: a model whose answer
depends only on (image, question) scores perfectly with real images and near chance with the controls, and a
model that ignores the image scores the same with both."""

import json

import pytest

from compactvlm.data.sceneqa import build_sceneqa
from compactvlm.errors import CompactVLMError
from compactvlm.evaluate.benchmarks.base import EvalItem, read_jsonl
from compactvlm.evaluate.controls import BLANK_FILE, apply_control, blind_gap, format_blind_table, shuffled_images
from compactvlm.evaluate.harness import PREDICTIONS, evaluate, evaluate_with_controls, load_predictions


@pytest.fixture(scope="module")
def sceneqa(tmp_path_factory):
    d = tmp_path_factory.mktemp("sq")
    build_sceneqa(d, seed=0, sizes={"caption": 0, "train": 0, "val": 0, "test": 40}, progress=False)
    return d


def _oracle(data_dir):
    """Answers from the image's file content and the question: the truth for the image it is shown, 'none'
    for a question that image does not answer."""
    truth = {}
    for r in read_jsonl(data_dir / "test_answers.jsonl"):
        q = next(q for q in read_jsonl(data_dir / "test_questions.jsonl") if q["question_id"] == r["question_id"])
        truth[((data_dir / r["image"]).read_bytes(), q["text"])] = r["answer"]

    def answer(items):
        from pathlib import Path

        return [truth.get((Path(it.image_path).read_bytes(), it.prompt), "none") for it in items]

    return answer


def test_shuffle_is_a_permutation_without_fixed_points():
    items = [EvalItem(question_id=i, image_path=f"img{i // 3}.jpg", prompt="q") for i in range(30)]
    swap = shuffled_images(items)
    assert sorted(swap) == sorted(swap.values())  # a permutation of the distinct images
    assert all(a != b for a, b in swap.items())
    out = apply_control(items, "shuffled", "/nonexistent")
    assert [it.question_id for it in out] == [it.question_id for it in items]
    assert all(o.image_path != i.image_path for o, i in zip(out, items))
    with pytest.raises(CompactVLMError, match="at least 2 distinct images"):
        shuffled_images(items[:3])
    with pytest.raises(CompactVLMError, match="unknown control"):
        apply_control(items, "shufled", "/nonexistent")


def test_blank_control_writes_its_own_image(tmp_path):
    items = [EvalItem(question_id=i, image_path=f"img{i}.jpg", prompt="q") for i in range(3)]
    out = apply_control(items, "blank", tmp_path)
    assert {it.image_path for it in out} == {str(tmp_path / BLANK_FILE)}
    assert (tmp_path / BLANK_FILE).exists()


def test_an_image_reading_model_sees_and_a_text_only_model_does_not(sceneqa, tmp_path):
    oracle = _oracle(sceneqa)
    real = evaluate("sceneqa", sceneqa, oracle, tmp_path / "real", progress=False)
    assert real["family_mean"] > 99.0
    preds = {}
    for c in ("shuffled", "blank"):
        m = evaluate("sceneqa", sceneqa, oracle, tmp_path / c, progress=False, control=c)
        assert m["control"] == c
        assert m["family_mean"] < 60.0, f"the {c} control leaked the real image"
        preds[c] = load_predictions(tmp_path / c / PREDICTIONS)
    rows = read_jsonl(sceneqa / "test_answers.jsonl")
    gap = blind_gap(rows, load_predictions(tmp_path / "real" / PREDICTIONS), preds, n=200)
    assert gap["sees"]["family_mean"]
    assert gap["controls"]["shuffled"]["family_mean"]["delta"][1] > 20
    assert "family_mean" in format_blind_table(gap)

    blind = lambda items: ["yes" if "Is" in it.prompt else "2" for it in items]  # noqa: E731 - ignores the image
    b_real = evaluate("sceneqa", sceneqa, blind, tmp_path / "b-real", progress=False)
    b_shuf = evaluate("sceneqa", sceneqa, blind, tmp_path / "b-shuf", progress=False, control="shuffled")
    assert b_real["family_mean"] == b_shuf["family_mean"]
    gap = blind_gap(rows, load_predictions(tmp_path / "b-real" / PREDICTIONS),
                    {"shuffled": load_predictions(tmp_path / "b-shuf" / PREDICTIONS)}, n=100)
    assert not any(gap["sees"].values())
    assert gap["controls"]["shuffled"]["family_mean"]["delta"] == [0.0, 0.0, 0.0]


def test_evaluate_with_controls_is_the_real_run_and_its_controls(sceneqa, tmp_path):
    """The one function every caller uses: real answers, each control in its own folder, the paired gap; with a
    limit, only those questions on every side."""
    oracle = _oracle(sceneqa)
    ev = evaluate_with_controls("sceneqa", sceneqa, oracle, tmp_path / "real",
                                {"shuffled": tmp_path / "s", "blank": tmp_path / "b"}, run_info={"name": "oracle"},
                                boot=100, progress=False, limit=30)
    assert ev["real"]["family_mean"] > 99.0 and ev["real"]["n_items"] == 30
    assert {c: m["control"] for c, m in ev["controls"].items()} == {"shuffled": "shuffled", "blank": "blank"}
    assert ev["controls"]["shuffled"]["run"]["name"] == "oracle-control-shuffled"
    assert all(m["family_mean"] < 60.0 and m["n_items"] == 30 for m in ev["controls"].values())
    assert len(load_predictions(tmp_path / "s" / PREDICTIONS)) == 30
    assert ev["gap"]["sees"]["family_mean"] and set(ev["gap"]["controls"]) == {"shuffled", "blank"}
    d = ev["gap"]["controls"]["shuffled"]["family_mean"]
    assert d["a"] == pytest.approx(ev["real"]["family_mean"], abs=0.05)
    assert d["b"] == pytest.approx(ev["controls"]["shuffled"]["family_mean"], abs=0.05)


def test_resume_refuses_a_different_control(sceneqa, tmp_path):
    blind = lambda items: ["yes"] * len(items)  # noqa: E731
    evaluate("sceneqa", sceneqa, blind, tmp_path / "o", progress=False, limit=8)
    with pytest.raises(CompactVLMError, match="control"):
        evaluate("sceneqa", sceneqa, blind, tmp_path / "o", progress=False, limit=8, control="shuffled")
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["control"] is None


def test_untrained_compressor_warns(capsys):
    from compactvlm.commands._common import warn_untrained
    from compactvlm.testing import tiny_vlm

    warn_untrained(tiny_vlm("stf", k=2, E=1))
    assert "random (untrained) weights" in capsys.readouterr().err
