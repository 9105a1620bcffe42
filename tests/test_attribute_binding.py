"""scripts/attribute_binding.py: splits attribute questions by the image's colours and counts colour-present errors."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("attribute_binding",
                                              Path(__file__).parents[1] / "scripts" / "attribute_binding.py")
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)


def _write(d: Path):
    scenes = [{"image": "a.jpg", "objects": [{"name": "star", "color": "red"}, {"name": "dress"}]},
              {"image": "b.jpg", "objects": [{"name": "star", "color": "red"}, {"name": "circle", "color": "blue"}]}]
    answers = [{"question_id": 1, "image": "a.jpg", "family": "attribute", "answer": "red"},
               {"question_id": 2, "image": "b.jpg", "family": "attribute", "answer": "red"},
               {"question_id": 3, "image": "b.jpg", "family": "attribute", "answer": "blue"},
               {"question_id": 4, "image": "b.jpg", "family": "existence", "answer": "yes"},
               {"question_id": 5, "image": "b.jpg", "family": "unanswerable", "subset": "answerable",
                "question": "What color is the circle?", "answer": "blue"},
               {"question_id": 6, "image": "b.jpg", "family": "unanswerable", "subset": "unanswerable",
                "question": "What color is the triangle?", "answer": "unanswerable"},
               {"question_id": 7, "image": "b.jpg", "family": "unanswerable", "subset": "unanswerable",
                "question": "What word is written on the sign?", "answer": "unanswerable"}]
    (d / "test_scenes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scenes))
    (d / "test_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


def test_binding_counts_right_and_colour_present_errors(tmp_path):
    _write(tmp_path)
    # a model that says the first colour it sees: right on the one-colour image, wrong-but-present on one of two
    res = ab.binding(tmp_path, {"1": "Red.", "2": "red", "3": "red", "4": "red"})
    assert res["single"] == {"questions": 1, "right": 1, "present_wrong": 0}
    assert res["multi"] == {"questions": 2, "right": 1, "present_wrong": 1}
    res = ab.binding(tmp_path, {"1": "green", "2": "red", "3": "blue"})
    assert res["single"]["right"] == 0 and res["single"]["present_wrong"] == 0  # green is not in the picture
    assert res["multi"] == {"questions": 2, "right": 2, "present_wrong": 0}


def test_cli_names_a_missing_folder(tmp_path, capsys):
    _write(tmp_path)
    assert ab.main(["--data", str(tmp_path), str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    assert ab.main(["--data", str(tmp_path / "nobuild"), str(tmp_path)]) == 2
    assert "not a SceneQA build" in capsys.readouterr().err


def test_named_shape_present_or_absent(tmp_path):
    _write(tmp_path)
    # a model that names a colour in the picture whatever shape is asked: right when the shape is there, wrong (a
    # colour present) when it is not; the sign's word question is not a colour question and is not counted
    res = ab.binding(tmp_path, {"5": "blue", "6": "red", "7": "east"})
    assert res["named present"] == {"questions": 1, "right": 1, "present_wrong": 0}
    assert res["named absent"] == {"questions": 1, "right": 0, "present_wrong": 1}
    res = ab.binding(tmp_path, {"5": "unanswerable", "6": "Unanswerable."})
    assert res["named present"]["right"] == 0 and res["named absent"]["right"] == 1


def test_reads_a_study_result_file_and_its_blind_control(tmp_path, capsys):
    _write(tmp_path)
    f = tmp_path / "seed1.json"
    f.write_text(json.dumps({"predictions": {"1": "red", "2": "red", "3": "blue"},
                             "control_predictions": {"shuffled": {"1": "green", "2": "blue", "3": "red"}}}))
    assert ab.read_run(str(f)) == {"1": "red", "2": "red", "3": "blue"}
    assert ab.read_run(f"{f}:shuffled")["2"] == "blue"
    assert ab.main(["--data", str(tmp_path), str(f), f"{f}:shuffled"]) == 0
    out = capsys.readouterr().out
    assert "2/2" in out and "0/2" in out  # multi: the real answers right on both, the shuffled ones on neither
    (tmp_path / "old.json").write_text(json.dumps({"metrics": {}}))
    assert ab.main(["--data", str(tmp_path), str(tmp_path / "old.json")]) == 2
    assert "no predictions" in capsys.readouterr().err
    assert ab.main(["--data", str(tmp_path), f"{tmp_path}:shuffled"]) == 2
    assert "applies to a study result file" in capsys.readouterr().err


def test_a_bad_file_is_named_before_any_run_is_scored(tmp_path, capsys):
    _write(tmp_path)
    good = tmp_path / "seed1.json"
    good.write_text(json.dumps({"predictions": {"1": "red"}}))
    bad = tmp_path / "seed2.json"
    bad.write_text('{"predictions": {"1": "red"')  # cut off mid-write
    assert ab.main(["--data", str(tmp_path), str(good), str(bad)]) == 2
    cap = capsys.readouterr()
    assert "seed2.json is not valid JSON" in cap.err
    assert cap.out == ""  # the good run was not scored and printed first
    # the questions read once give the same counts as reading the build per run
    qs = ab.colour_questions(tmp_path)
    assert ab.binding(qs, {"2": "red", "3": "red"}) == ab.binding(tmp_path, {"2": "red", "3": "red"})
