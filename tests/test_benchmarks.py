"""Benchmark readers on tiny fixture files in the real layouts (tests/fixtures/), the resumable harness,
PRT and the report. Expected scores were worked out by hand from the fixture files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compactvlm.errors import CompactVLMError
from compactvlm.evaluate import (collect_runs, evaluate, get_benchmark, list_benchmarks, plot_accuracy_vs_tokens, prt,
                                 prt_table, results_table)

FIX = Path(__file__).parent / "fixtures"


def test_all_readers_registered():
    names = list_benchmarks()
    for n in ("gqa", "pope", "textvqa", "scienceqa", "mme", "mmbench", "mmbench_cn", "vqav2", "vizwiz", "sceneqa"):
        assert n in names
    with pytest.raises(CompactVLMError, match="did you mean"):
        get_benchmark("gqaa", FIX / "gqa")


def test_gqa():
    b = get_benchmark("gqa", FIX / "gqa")
    items = b.items()
    assert [it.answers for it in items] == [["yes"], ["no"], ["left"], ["table"]]
    assert items[0].image_path.endswith("gqa/data/images/n161313.jpg")
    assert items[0].prompt.startswith("Is it overcast?\nAnswer")
    preds = {"201307251": "Yes.", "201640614": "no", "202225914": "Left", "20968379": "the table"}
    out = b.score(items, preds)
    assert out["accuracy"] == 75.0 and out["headline"] == 75.0
    assert out["per_group"] == {"choose": 100.0, "query": 0.0, "verify": 100.0}


def test_gqa_export(tmp_path):
    b = get_benchmark("gqa", FIX / "gqa")
    (p,) = b.export(b.items(), ["Yes.", "no", "Left", "Table."], tmp_path)
    rows = json.loads(p.read_text())
    assert rows[0] == {"questionId": "201307251", "prediction": "yes"} and rows[3]["prediction"] == "table"


def test_pope():
    b = get_benchmark("pope", FIX / "pope")
    items = b.items()
    # random labels are listed in another order in coco_pope_random.json: matched by image + question
    assert [(it.category, it.answers[0]) for it in items] == [
        ("random", "yes"), ("random", "no"), ("random", "yes"), ("random", "no"),
        ("popular", "yes"), ("popular", "no"), ("adversarial", "yes"), ("adversarial", "no")]
    preds = ["Yes, there is a snowboard.", "No.", "I don't see one", "There is not a kite.",  # all right
             "no", "yes",                                                                   # both wrong
             "yes", "yes"]                                                                  # TP 1, FP 1
    out = b.score(items, preds)
    assert out["random"]["f1"] == 100.0 and out["random"]["yes_ratio"] == 50.0
    assert out["popular"]["accuracy"] == 0.0 and out["popular"]["f1"] == 0.0
    assert out["adversarial"]["precision"] == 50.0 and out["adversarial"]["recall"] == 100.0
    assert out["adversarial"]["f1"] == pytest.approx(200 / 3)
    assert out["headline"] == pytest.approx((100 + 0 + 200 / 3) / 3)


def test_textvqa_matches_by_id_or_by_image_and_question():
    b = get_benchmark("textvqa", FIX / "textvqa")
    items = b.items()
    assert len(items[0].answers) == 10 and len(items[1].answers) == 10
    assert items[1].answers[-1] == "4"
    # "Nokia." -> 2 of 10 said nokia -> 0.6; "three" -> 7 of 10 say 3 after normalisation -> 1.0
    out = b.score(items, ["Nokia.", "three"])
    assert out["accuracy"] == pytest.approx(80.0) and out["unmatched"] == 0


def test_scienceqa_img_only_and_strict_reading():
    b = get_benchmark("scienceqa", FIX / "scienceqa")
    items = b.items()
    assert [it.question_id for it in items] == ["1", "3"]     # "2" has no image, "4" is in val
    assert "<image>" not in items[0].prompt
    assert items[0].prompt.endswith("Answer with the option's letter from the given choices directly.")
    assert items[0].image_path.endswith("images/test/1/image.png")
    assert b.score(items, ["B", "The answer is B."])["accuracy"] == 50.0
    assert b.score(items, ["(B)", "A"])["accuracy"] == 50.0   # "(B)" is not read by LLaVA's parser


def test_mme_folders():
    b = get_benchmark("mme", FIX / "MME")
    items = b.items()
    assert len(items) == 6
    assert {it.category for it in items} == {"artwork", "existence"}
    art = [it for it in items if it.category == "artwork"]
    assert art[0].image_path.endswith("artwork/images/10002.jpg")
    assert art[0].answers == ["yes"] and art[1].answers == ["no"]
    preds = {}
    for it in items:
        if it.category == "artwork":
            preds[it.key] = "maybe" if it.answers[0] == "yes" else "no"
        elif it.meta["image_key"].endswith("6040"):
            preds[it.key] = it.answers[0].capitalize()
        else:
            preds[it.key] = "yes" if it.answers[0] == "yes" else "Yes, there is"
    out = b.score(items, preds)
    # existence: acc 3/4, acc+ 1/2 -> 125; artwork: acc 1/2, acc+ 0 -> 50
    assert out["categories"]["existence"]["score"] == 125.0
    assert out["categories"]["artwork"]["score"] == 50.0
    assert out["headline"] == 175.0


def test_mmbench_circular(tmp_path):
    b = get_benchmark("mmbench", FIX / "mmbench", image_dir=tmp_path)
    items = b.items()
    assert [it.question_id for it in items] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001, 2_000_001]
    # options rotate: q0 (answer "bird", C) -> C, B, A, D ; q1 (answer "red", A) -> A, C, B
    assert [it.answers[0] for it in items] == ["C", "B", "A", "D", "A", "C", "B"]
    assert items[1].prompt.split("\n")[1:5] == ["A. dog", "B. bird", "C. fish", "D. cat"]
    assert items[4].prompt.startswith("Look at the square in the middle.\nWhat color is the square?\nA. red")
    assert (tmp_path / "0.jpg").exists() and Path(items[0].image_path).read_bytes()[:4] == b"\x89PNG"
    preds = {0: "C", 1_000_000: "B. bird", 2_000_000: "bird", 3_000_000: "The answer is D",
             1: "A", 1_000_001: "C", 2_000_001: "A"}
    out = b.score(items, {str(k): v for k, v in preds.items()})
    assert out["circular_accuracy"] == 50.0 and out["vanilla_accuracy"] == 100.0
    assert out["per_category"] == {"attribute_recognition": 0.0, "object_localization": 100.0}


def test_vqav2_without_answers_exports_upload(tmp_path):
    b = get_benchmark("vqav2", FIX / "vqav2")
    items = b.items()
    out = b.score(items, ["Yes", "Two"])
    assert out["headline"] is None and out["scored"] is False
    (p,) = b.export(items, ["Yes", "Two"], tmp_path)
    assert json.loads(p.read_text()) == [{"question_id": 262144000, "answer": "yes"},
                                         {"question_id": 262144001, "answer": "2"}]


def test_vizwiz_with_val_annotations():
    b = get_benchmark("vizwiz", FIX / "vizwiz", annotations="val.json")
    items = b.items()
    # "Unanswerable" vs 10 x unanswerable -> 1; "coffee" vs 3 coffee / 7 tea -> (3 * 2/3 + 7) / 10 = 0.9
    assert b.score(items, ["Unanswerable", "coffee"])["accuracy"] == pytest.approx(95.0)
    assert get_benchmark("vizwiz", FIX / "vizwiz").score(items[:0], [])["scored"] is False


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(CompactVLMError, match="llava_gqa_testdev_balanced.jsonl"):
        get_benchmark("gqa", tmp_path).items()
    with pytest.raises(CompactVLMError, match="not found"):
        get_benchmark("pope", tmp_path / "nope")


# ------------------------------------------------------------------------------------------ harness
GQA_TRUTH = {"201307251": "yes", "201640614": "no", "202225914": "left", "20968379": "wrong"}


def _answer(items):
    return [GQA_TRUTH[it.key] for it in items]


def test_harness_resumes_after_a_crash(tmp_path):
    full = evaluate("gqa", FIX / "gqa", _answer, tmp_path / "full", batch_size=1, progress=False)
    assert full["accuracy"] == 75.0
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["accuracy"] == 75.0

    calls: list[str] = []

    def crashing(items):
        if len(calls) == 2:
            raise RuntimeError("killed")
        calls.extend(it.key for it in items)
        return _answer(items)

    with pytest.raises(RuntimeError):
        evaluate("gqa", FIX / "gqa", crashing, tmp_path / "run", batch_size=1, progress=False)
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2                                     # the two finished batches were kept
    with open(tmp_path / "run" / "predictions.jsonl", "a") as f:
        f.write('{"question_id": "20968379", "te')           # a torn line, as if killed mid-write
    resumed_calls: list[str] = []

    def rest(items):
        resumed_calls.extend(it.key for it in items)
        return _answer(items)

    out = evaluate("gqa", FIX / "gqa", rest, tmp_path / "run", batch_size=1, progress=False)
    assert resumed_calls == ["202225914", "20968379"]           # only what was missing
    assert out["accuracy"] == full["accuracy"] and out["per_group"] == full["per_group"]
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == 4


def test_harness_checks(tmp_path):
    with pytest.raises(CompactVLMError, match="answers for"):
        evaluate("gqa", FIX / "gqa", lambda items: ["x"], tmp_path / "a", batch_size=2, progress=False)
    evaluate("gqa", FIX / "gqa", _answer, tmp_path / "b", limit=2, progress=False)
    with pytest.raises(CompactVLMError, match="another run"):
        evaluate("pope", FIX / "pope", lambda items: ["yes"] * len(items), tmp_path / "b", progress=False)
    out = evaluate("gqa", FIX / "gqa", _answer, tmp_path / "b", limit=2, resume=False, progress=False,
                   run_info={"name": "r", "vision_tokens": 64})
    assert out["n_items"] == 2 and out["accuracy"] == 100.0 and out["run"]["vision_tokens"] == 64
    evaluate("vqav2", FIX / "vqav2", lambda items: ["Two"] * len(items), tmp_path / "v", progress=False)
    assert (tmp_path / "v" / "answers_upload.json").exists()


# --------------------------------------------------------------------------------------- PRT, report
def _result(name, method, tokens, bench, value):
    return {"benchmark": bench, "headline": value, "run": {"name": name, "method": method, "vision_tokens": tokens}}


RESULTS = [
    _result("full", "mlp", 256, "gqa", 60.0), _result("full", "mlp", 256, "pope", 80.0),
    _result("stf-64", "stf", 64, "gqa", 30.0), _result("stf-64", "stf", 64, "pope", 80.0),
    _result("stf-16", "stf", 16, "gqa", 15.0), _result("stf-16", "stf", 16, "pope", 40.0),
]


def test_prt_by_hand():
    # stf-64: 30/60 = 50 %, 80/80 = 100 % -> PRT 75 ; stf-16: 25 % and 50 % -> 37.5
    assert prt({"gqa": 30.0, "pope": 80.0}, {"gqa": 60.0, "pope": 80.0})["prt"] == 75.0
    table = prt_table(collect_runs(RESULTS), "full")
    assert table["stf-64"]["prt"] == 75.0 and table["stf-16"]["prt"] == 37.5 and table["full"]["prt"] == 100.0
    out = prt({"gqa": 30.0}, {"gqa": 60.0, "pope": 0.0, "mme": 1500.0})
    assert out["datasets"] == ["gqa"] and out["left_out"] == ["pope", "mme"]
    scene = {"benchmark": "sceneqa", "components": {"sceneqa/ocr": 20.0, "sceneqa/counting": 50.0}}
    ref = {"sceneqa/ocr": 40.0, "sceneqa/counting": 50.0}
    assert prt(collect_runs([scene])["sceneqa"]["scores"], ref)["prt"] == 75.0
    with pytest.raises(CompactVLMError):
        prt({"gqa": 1.0}, {"pope": 1.0})


def test_results_table_and_plot(tmp_path):
    md = results_table(RESULTS, reference="full")
    lines = md.strip().splitlines()
    assert lines[0] == "| Run | Method | Vision tokens | gqa | pope | PRT vs full (%) |"
    assert "| stf-16 | stf | 16 | 15.0 | 40.0 | 37.5 |" in lines
    assert "| stf-64 | stf | 64 | 30.0 | 80.0 | 75.0 |" in lines
    png = plot_accuracy_vs_tokens(RESULTS, tmp_path / "plot.png", reference="full")
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    png2 = plot_accuracy_vs_tokens(RESULTS, tmp_path / "gqa.png", dataset="gqa")
    assert png2.stat().st_size > 1000
