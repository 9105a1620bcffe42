"""Scoring rule sets (llava | lmms-eval): the case table's shape and recorded departures, the issue's cases,
and the rules' plumbing through the readers. The comparison with lmms-eval's own code on every case is in
test_metric_references.py (run by `make test-lmms-eval`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compactvlm.errors import CompactVLMError
from compactvlm.evaluate.benchmarks import get_benchmark
from compactvlm.evaluate.metrics import (check_rules, mme_yes_no, normalize_answer, pope_metrics, pope_yes_no,
                                         sqa_option, vqa_accuracy, vqa_eval_normalize)
from metric_cases import KINDS, WHY, load_cases, ours

FIX = Path(__file__).parent / "fixtures"
DOCS = Path(__file__).parent.parent / "docs" / "metrics.md"


def test_case_table_has_300_cases_per_rule_set_and_every_kind():
    cases = load_cases()
    assert set(cases) == set(KINDS)
    assert all(len(cases[k]) >= 40 for k in KINDS)
    # every case is scored under both rule sets
    assert sum(len(v) for v in cases.values()) >= 300
    assert sum(len(v) for k, v in cases.items() if k != "evalai") >= 300


def test_recorded_llava_departures_are_what_the_llava_rules_give():
    cases = load_cases()
    departures = 0
    for kind in KINDS[1:]:
        for c in cases[kind]:
            if "llava" in c:
                departures += 1
                assert c["why"] in WHY, c
                assert ours(kind, c, "llava") == c["llava"], c
    assert departures > 0


def test_every_departure_reason_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    for why in WHY:
        assert f"`{why}`" in text, f"docs/metrics.md does not explain {why}"


@pytest.mark.parametrize("raw, norm", [
    ("im fine", "im fine"),          # EvalAI's key is "Im": never matches a lower-cased word
    ("ive", "ive"), ("shes", "shes"), ("lets", "lets"), ("heres", "heres"), ("whore", "whore"),
    ("itd", "it'd"), ("twas", "'twas"), ("wholl", "who'll"), ("whyre", "why're"), ("notve", "not've"),
    ("whatve", "what've"), ("whens", "when's"), ("theyd've", "they'd've"), ("couldn'tve", "couldn't've"),
    ("couldntve", "couldntve"),      # two apostrophes dropped: not in the table
    ("somebody'd", "somebodyd"),     # the table's one reversed entry
    ("a" + "." * 40, "a" + "." * 8),  # only 32 periods go (re.UNICODE passed as re.sub's count)
    ("1,,000", "1000"),
])
def test_evalai_cases_from_the_issue(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqav2_script_normaliser_keeps_what_evalai_tokenises():
    assert normalize_answer("dog's") == "dog 's"
    assert vqa_eval_normalize("dog's") == "dog's"
    assert vqa_eval_normalize("What?") == "what"


def test_one_human_answer_scores_zero_in_both_rule_sets():
    for rules in ("llava", "lmms-eval"):
        assert vqa_accuracy("cat", ["cat"], rules) == 0.0
        assert vqa_accuracy("cat", ["cat", "cat"], rules) == pytest.approx(1 / 3)


def test_pope_and_mme_readings_per_rule_set():
    assert pope_yes_no("NO", "llava") == "yes"       # LLaVA's eval_pope only knows No / no / not
    assert pope_yes_no("NO", "lmms-eval") == "no"
    assert pope_yes_no("No, there is none.", "lmms-eval") == "other"
    m = pope_metrics(["yes", "maybe", "no", "yes"], ["yes", "yes", "no", "no"], "lmms-eval")
    assert (m["tp"], m["fn"], m["other"]) == (1, 0, 1)
    assert m["recall"] == 100.0                        # "other" is in neither denominator
    assert m["yes_ratio"] == 50.0                      # lmms-eval's yes_ratio is the labels' share of yes
    assert mme_yes_no("y", "llava") == "other" and mme_yes_no("y.", "lmms-eval") == "yes"
    assert sqa_option("B.", 3, "llava") is None and sqa_option("B.", 3, "lmms-eval") == "B"


def test_unknown_rules_are_refused():
    with pytest.raises(CompactVLMError, match="unknown scoring rules"):
        check_rules("vlmevalkit")
    with pytest.raises(CompactVLMError, match="unknown scoring rules"):
        get_benchmark("pope", FIX / "pope", rules="nope")


def test_readers_score_and_record_their_rules():
    preds = {}
    for rules in ("llava", "lmms-eval"):
        reader = get_benchmark("pope", FIX / "pope", rules=rules)
        items = reader.items()
        answers = {it.key: "NO" for it in items}
        out = reader.score(items, answers)
        assert out["rules"] == rules
        preds[rules] = out
    # "NO" everywhere: all "yes" with llava rules, all "no" with lmms-eval's
    assert preds["llava"]["mean_yes_ratio"] == 100.0
    assert preds["lmms-eval"]["all"]["tn"] + preds["lmms-eval"]["all"]["fn"] == preds["lmms-eval"]["n"]
    gqa = get_benchmark("gqa", FIX / "gqa", rules="lmms-eval")
    assert gqa.score(gqa.items(), {it.key: "x" for it in gqa.items()})["rules"] == "lmms-eval"
    assert get_benchmark("gqa", FIX / "gqa").rules == "llava"


def test_eval_command_scores_with_the_chosen_rules(tmp_path, capsys):
    import warnings

    from compactvlm.cli import main
    from compactvlm.testing import tiny_vlm
    from tiny_sceneqa import write_tiny_sceneqa

    data = write_tiny_sceneqa(tmp_path / "sceneqa")
    ckpt = tiny_vlm("mlp2x_gelu", seed=7).save_pretrained(tmp_path / "tiny")
    for rules in ("lmms-eval", "llava"):  # the second run rescores the saved answers (resume) with other rules
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["eval", "--benchmark", "sceneqa", "--data", str(data), "--checkpoint", str(ckpt),
                         "--out", str(tmp_path / "ev"), "--max-new-tokens", "2", "--rules", rules, "--quiet"]) == 0
        out = capsys.readouterr().out  # chance beside the scores (no manifest here: from the answer choices)
        assert "chance / majority per family" in out and "existence 50.0 / –, counting 50.0 / –" in out
        assert "no blind control in this run" in out and "--with-controls" in out
        metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert metrics["rules"] == rules
        assert ("all" in metrics["families"]["existence"]) == (rules == "lmms-eval")
    # a build's manifest: its recorded baselines for the split (majority from the training split) win
    (data / "manifest.json").write_text(json.dumps({"baselines": {"test": {"existence": {"chance": 50.0,
                                                                                       "majority": 50.0}}}}))
    assert main(["eval", "--benchmark", "sceneqa", "--data", str(data), "--checkpoint", str(ckpt),
                 "--out", str(tmp_path / "ev"), "--max-new-tokens", "2", "--quiet"]) == 0
    assert "existence 50.0 / 50.0, counting 50.0 / –" in capsys.readouterr().out
    # a hand-made folder whose counting questions carry no answer choices: that family's chance is left out
    from compactvlm.evaluate.benchmarks.base import get_benchmark

    rows = [json.loads(line) for line in (data / "test_answers.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("n_choices")
    (data / "test_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "manifest.json").unlink()
    reader = get_benchmark("sceneqa", str(data))
    assert reader.baselines(reader.items()) == {"existence": (50.0, None)}
