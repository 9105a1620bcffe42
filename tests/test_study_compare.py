"""`study compare`: one paired comparison from result files (no model), against another row, a row of another plan,
or the row's own blind control; bad input named before any work."""

import json

import pytest
import yaml

from compactvlm.cli import main
from compactvlm.errors import CompactVLMError
from compactvlm.study import load_plan
from compactvlm.study.pairwise import compare_pair, parse_side


def _setup(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    answers = []
    for i in range(20):
        lab = "yes" if i % 2 else "no"
        answers.append({"question_id": f"q{i}", "image": f"images/test/{i:06d}.jpg", "family": "existence",
                        "subset": "random", "answer": lab, "answers": [lab]})
    (data / "test_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    right = {a["question_id"]: a["answer"] for a in answers}
    yes = {q: "yes" for q in right}  # right on half
    plan = {"name": "p", "runs_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
            "reference": "full", "seeds": [1], "train_configs": ["s1.yaml"], "groups": {"1": "all"}, "bootstrap": 50,
            "data": {"dir": str(data), "caption": 10, "train": 10, "val": 4, "test": 20},
            "rows": [{"name": "full", "group": "1", "compressor": "mlp2x_gelu"},
                     {"name": "stf", "group": "1", "compressor": "stf"}]}
    f = tmp_path / "plan.yaml"
    f.write_text(yaml.safe_dump(plan))
    for row, preds in (("full", right), ("stf", yes)):
        d = tmp_path / "results" / row
        d.mkdir(parents=True)
        (d / "seed1.json").write_text(json.dumps({"predictions": preds,
                                                   "control_predictions": {"shuffled": yes}}))
    return f, right


def test_compare_rows_and_blind_control(tmp_path, capsys):
    f, _ = _setup(tmp_path)
    plan = load_plan(f)
    res = compare_pair(plan, str(f), "full", 1, "stf", 1)
    assert res["family_mean"]["a"] == 100.0 and res["family_mean"]["b"] == 50.0
    assert res["family_mean"]["delta"][0] == 50.0 and res["family_mean"]["delta"][1] > 0  # CI above 0
    assert res["a"] == "full@1" and res["b"] == "stf@1"
    ctl = compare_pair(plan, str(f), "full", 1, "shuffled", 1)  # A against its own shuffled-image answers
    assert ctl["family_mean"]["delta"][0] == 50.0 and "shuffled images" in ctl["b"]
    same = compare_pair(plan, str(f), "stf", 1, "shuffled", 1)
    assert same["family_mean"]["delta"] == [0.0, 0.0, 0.0]
    # the command: a Markdown table, seeds from --seed or ROW@SEED; JSON on request
    assert main(["study", "compare", "--plan", str(f), "full@1", "stf", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    # each side beside its own blind control (both answer "yes" to every shuffled image: 50); no baselines on disk
    assert res["controls"]["a"]["family_mean"] == 50.0 and res["controls"]["b"]["existence"] == 50.0
    assert res["baselines"] is None and ctl["controls"] == {"a": None, "b": None}  # B is A's control: its column
    assert "| family | full@1 | shuffled | stf@1 | shuffled | a − b [95% CI] |" in out
    assert "| family mean | 100.0 | 50.0 | 50.0 | 50.0 | +50.0 [" in out and "chance / majority" not in out
    assert main(["study", "compare", "--plan", str(f), "full", "stf", "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family_mean"]["delta"][0] == 50.0
    # the build's chance and majority baselines, where the data build records them (MME's total rescaled: 37.5%)
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"seed": 0, "sizes": {"test": 20}, "baselines": {
        "test": {"existence": {"chance": 50.0, "majority": 60.0}, "mme": {"chance": 375.0, "majority": 250.0}}}}))
    with_base = compare_pair(plan, str(f), "full", 1, "stf", 1)
    assert with_base["baselines"] == {"existence": [50.0, 60.0], "mme": [37.5, 25.0], "family_mean": [43.75, 42.5]}
    assert main(["study", "compare", "--plan", str(f), "full@1", "stf@1"]) == 0
    out = capsys.readouterr().out
    assert "| chance / majority |" in out and "| existence | 100.0 | 50.0 | 50.0 | 50.0 | +50.0" in out
    assert "| 50.0 / 60.0 |" in out and "| family mean |" in out and "| 43.8 / 42.5 |" in out
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"seed": 0, "sizes": {"test": 20}, "baselines": {
        "test": {"existence": {"chance": 50.0}}}}))  # an older build: chance only
    assert compare_pair(plan, str(f), "full", 1, "stf", 1)["baselines"]["family_mean"] == [50.0, None]
    assert main(["study", "compare", "--plan", str(f), "full@1", "stf@1"]) == 0
    assert "| 50.0 / – |" in capsys.readouterr().out
    # a result without its control's answers: that column left out, not made up
    r = json.loads((tmp_path / "results" / "stf" / "seed1.json").read_text())
    (tmp_path / "results" / "stf" / "seed1.json").write_text(json.dumps({"predictions": r["predictions"]}))
    assert compare_pair(plan, str(f), "full", 1, "stf", 1)["controls"]["b"] is None
    (tmp_path / "results" / "stf" / "seed1.json").write_text(json.dumps(r))
    # several B at once: one table each, in the order given (a JSON list)
    assert main(["study", "compare", "--plan", str(f), "full@1", "stf@1", "shuffled"]) == 0
    out = capsys.readouterr().out
    assert out.index("| full@1 | shuffled | stf@1 |") < out.index("shuffled images")
    assert out.count("| family mean |") == 2
    assert main(["study", "compare", "--plan", str(f), "full@1", "stf@1", "shuffled", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [r["family_mean"]["delta"][0] for r in both] == [50.0, 50.0] and both[0]["b"] == "stf@1"
    # another plan sharing the build: the same row at another "length"
    other = yaml.safe_load(f.read_text())
    other["results_dir"] = str(tmp_path / "results_b")
    (tmp_path / "results_b" / "full").mkdir(parents=True)
    (tmp_path / "results_b" / "full" / "seed1.json").write_text(
        (tmp_path / "results" / "stf" / "seed1.json").read_text())
    fb = tmp_path / "plan_b.yaml"
    fb.write_text(yaml.safe_dump(other))
    assert main(["study", "compare", "--plan", str(f), "full@1", "full@1", "--plan-b", str(fb)]) == 0
    assert "| family mean | 100.0 | 50.0 | 50.0 | 50.0 | +50.0" in capsys.readouterr().out  # each plan's own control


def test_compare_names_bad_input(tmp_path, capsys):
    f, _ = _setup(tmp_path)
    plan = load_plan(f)
    with pytest.raises(CompactVLMError, match=r"no result for `stf` seed 2.*\n?.*") as e:
        compare_pair(plan, str(f), "full", 1, "stf", 2)
    assert "--rows stf --seeds 2" in str(e.value.fix)
    with pytest.raises(CompactVLMError):
        compare_pair(plan, str(f), "nope", 1, "stf", 1)  # not a row of the plan
    with pytest.raises(CompactVLMError, match="must be an integer"):
        parse_side("stf@x", 1)
    # a bad B among several: named before any table is printed
    assert main(["study", "compare", "--plan", str(f), "full@1", "stf@1", "stf@x"]) == 2
    err = capsys.readouterr()
    assert "must be an integer" in err.err and "family mean" not in err.out
    (tmp_path / "results" / "stf" / "seed1.json").write_text('{"predictions": {')  # cut off
    with pytest.raises(CompactVLMError, match="not valid JSON"):
        compare_pair(plan, str(f), "full", 1, "stf", 1)
    other = yaml.safe_load(f.read_text())
    other["data"]["test"] = 30  # another build
    fb = tmp_path / "plan_b.yaml"
    fb.write_text(yaml.safe_dump(other))
    assert main(["study", "compare", "--plan", str(f), "full@1", "full@1", "--plan-b", str(fb)]) == 2
    assert "different SceneQA builds" in capsys.readouterr().err
    (tmp_path / "data" / "test_answers.jsonl").unlink()
    with pytest.raises(CompactVLMError, match="not on disk"):
        compare_pair(plan, str(f), "full", 1, "shuffled", 1)
