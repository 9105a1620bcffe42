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
               {"question_id": 4, "image": "b.jpg", "family": "existence", "answer": "yes"}]
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
