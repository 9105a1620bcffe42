"""The lmms-eval plugin through lmms-eval's own command line, on SceneQA exported as local tasks (no hub):
lmms-eval's answers are compactvlm eval's answers, and its POPE / VQA numbers are compactvlm's with
``rules="lmms-eval"``.

Needs lmms-eval's code (``make test-lmms-eval`` puts it on PYTHONPATH) and the part of its dependencies its CLI
imports, in a side folder named by ``LMMS_EVAL_DEPS`` (``make test-lmms-eval`` installs them there; the shared venv
keeps its own versions, e.g. filelock 4, which lmms-eval 0.7.3 cannot use). Skipped otherwise.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not importable: `make test-lmms-eval` runs this file")
DEPS = os.environ.get("LMMS_EVAL_DEPS")
if not DEPS or not (Path(DEPS) / "datasets").is_dir():
    pytest.skip("LMMS_EVAL_DEPS (a folder with lmms-eval's CLI dependencies: datasets, pandas, sacrebleu, ...) is not "
                "set; `make test-lmms-eval` installs and sets it", allow_module_level=True)

from compactvlm.evaluate.harness import evaluate  # noqa: E402
from compactvlm.interop.lmms_eval_tasks import write_sceneqa_tasks  # noqa: E402
from compactvlm.testing import tiny_vlm  # noqa: E402
from tiny_sceneqa import write_tiny_sceneqa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _one_word_model():
    """A tiny model whose LM head can only say yes / no / 4 / 5 (other rows zero): one-token answers that are
    right about half the time, so the numbers compared below are not all zero."""
    model = tiny_vlm("mlp2x_gelu", seed=7)
    llm, tok = model.llm, model.tokenizer
    hidden = llm.config.hidden_size
    g = torch.Generator().manual_seed(1)
    v, w = torch.randn(2, hidden, generator=g)
    head = torch.zeros(llm.config.vocab_size, hidden)
    for word, vec in (("yes", v), ("no", -v), ("4", w), ("5", -w)):
        head[tok.convert_tokens_to_ids(word)] = vec
    llm.config.tie_word_embeddings = False
    llm.lm_head = torch.nn.Linear(hidden, llm.config.vocab_size, bias=False)
    with torch.no_grad():
        llm.lm_head.weight.copy_(head)
    return model


def test_lmms_eval_cli_on_local_sceneqa_tasks(tmp_path):
    from compactvlm.data.images import load_image

    data = write_tiny_sceneqa(tmp_path / "sceneqa")
    tasks = write_sceneqa_tasks(data, tmp_path / "tasks", max_new_tokens=1)
    model = _one_word_model()
    folder = model.save_pretrained(tmp_path / "tiny")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path[1:], DEPS]),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    # lmms-eval 0.7.3 needs filelock 3 (filelock._api): the deps folder's copy must win over the venv's
    env["PYTHONPATH"] = os.pathsep.join([DEPS, env["PYTHONPATH"]])
    cmd = [sys.executable, "-m", "lmms_eval", "eval", "--model", "compactvlm", "--model_args",
           f"pretrained={folder},device=cpu", "--tasks", ",".join(tasks), "--include_path", str(tmp_path / "tasks"),
           "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())["results"]

    def answer(items):
        return model.generate([load_image(it.image_path) for it in items], [it.prompt for it in items],
                              max_new_tokens=1).texts

    ours = evaluate("sceneqa", data, answer, tmp_path / "ours", progress=False, rules="lmms-eval")
    assert ours["rules"] == "lmms-eval"
    mine = {json.loads(l)["question_id"]: json.loads(l)["text"]
            for l in (tmp_path / "ours" / "predictions.jsonl").read_text().splitlines()}
    for task in tasks:
        samples = [json.loads(l) for l in next((tmp_path / "out").rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()]
        assert samples
        for s in samples:
            key = "pope_accuracy" if task == "sceneqa_pope" else "submission"
            qid = s[key]["question_id"]
            assert s["filtered_resps"].strip() == mine[qid].strip(), qid   # the same answers through both paths

    pope = ours["families"]["existence"]["all"]
    got = results["sceneqa_pope"]
    for name, key in (("accuracy", "pope_accuracy"), ("precision", "pope_precision"), ("recall", "pope_recall"),
                      ("f1", "pope_f1_score"), ("yes_ratio", "pope_yes_ratio")):
        assert pope[name] == pytest.approx(100.0 * got[f"{key},none"], abs=1e-9), name
    assert ours["families"]["counting"]["accuracy"] == pytest.approx(100.0 * results["sceneqa_vqa"]["exact_match,none"],
                                                                     abs=1e-9)
    assert set(mine.values()) <= {"yes", "no", "4", "5"}
    assert 0 < pope["accuracy"] < 100 or ours["families"]["counting"]["accuracy"] > 0  # not a vacuous comparison
