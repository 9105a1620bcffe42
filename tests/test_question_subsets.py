"""Question-family subsets of SceneQA conversations (scripts/select_questions.py) and evaluation splits made from
held-out conversations (scripts/split_from_conversations.py): the tools of the recipe's focused-question runs."""

import importlib.util
import json
import sys
from pathlib import Path

from compactvlm.evaluate.benchmarks.sceneqa import SceneQA

ROOT = Path(__file__).resolve().parents[1]
COLOUR = r"^What color is the [a-z-]+\?\nAnswer"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _conv(i, turns):
    conv = []
    for j, (q, a) in enumerate(turns):
        conv += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a}]
    return {"id": f"train-{i:06d}", "image": f"images/train/{i:06d}.jpg", "conversations": conv}


SUFFIX = "\nAnswer the question using a single word or phrase."
RECORDS = [
    _conv(0, [("Is there a bag in the image?" + SUFFIX, "yes"), ("What color is the star?" + SUFFIX, "red")]),
    _conv(1, [("How many bags are there in the image?" + SUFFIX, "2")]),
    _conv(2, [("What color is the circle?" + SUFFIX, "blue"), ("What color is the star?" + SUFFIX, "green"),
              ("What color is the dress?\nWhen the provided information is insufficient, respond with "
               "'Unanswerable'." + SUFFIX, "Unanswerable")]),
]


def test_select_keeps_matching_turns_moves_the_image_and_drops_empty_conversations():
    out, turns = _script("select_questions").select(RECORDS, COLOUR)
    assert [r["id"] for r in out] == ["train-000000", "train-000002"] and turns == 3
    first = out[0]["conversations"]
    assert first[0]["value"] == "<image>\nWhat color is the star?" + SUFFIX and first[1]["value"] == "red"
    assert [t["value"] for t in out[1]["conversations"][1::2]] == ["blue", "green"]  # the unanswerable one is not
    assert sum(t["value"].count("<image>") for r in out for t in r["conversations"]) == len(out)
    assert _script("select_questions").select(RECORDS, COLOUR, start=1)[0][0]["id"] == "train-000002"


def test_select_refuses_to_overwrite(tmp_path, capsys):
    src, dst = tmp_path / "t.json", tmp_path / "out.json"
    src.write_text(json.dumps(RECORDS))
    dst.write_text("mine")
    assert _script("select_questions").main(["--data", str(src), "--pattern", COLOUR, "--out", str(dst)]) == 2
    assert dst.read_text() == "mine" and "nothing was overwritten" in capsys.readouterr().err


def test_split_from_conversations_is_read_by_the_sceneqa_reader(tmp_path):
    colour, _ = _script("select_questions").select(RECORDS, COLOUR)
    (tmp_path / "c.json").write_text(json.dumps(colour))
    for i in (0, 2):
        (tmp_path / "images" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / "train" / f"{i:06d}.jpg").write_bytes(b"")
    mod = _script("split_from_conversations")
    args = ["--data", str(tmp_path / "c.json"), "--family", "attribute", "--n-choices", "8", "--dir", str(tmp_path),
            "--split", "colourval"]
    assert mod.main(args) == 0
    items = SceneQA(tmp_path, split="colourval").items()
    answers = [json.loads(l) for l in (tmp_path / "colourval_answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == ["red", "blue", "green"]
    assert answers[0]["question"] == "What color is the star?" and answers[0]["family"] == "attribute"
    assert len(items) == 3 and all(it.prompt.endswith(SUFFIX) for it in items)
    assert mod.main(args) == 2  # refuses to overwrite its own earlier split
