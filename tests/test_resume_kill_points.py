"""SIGKILL at several points of a training run, and in the middle of an evaluation: resuming reproduces the
uninterrupted run exactly (training: the same final weights and validation losses; evaluation: the same
predictions and metrics).

Training kill points (6 optimiser steps, a checkpoint every 2): before the first checkpoint (step 1), between
checkpoints (step 3), while a checkpoint folder is being written (inside step 4's save: a stale temp folder is
left behind and must be ignored), and after the last checkpoint but before ``final/`` (step 6).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from compactvlm.evaluate.harness import read_predictions
from compactvlm.train import train
from compactvlm.train.config import to_plain
from compactvlm.train.fixtures import tiny_train_config
from compactvlm.train.state import list_checkpoints


FIX = Path(__file__).parent / "fixtures"

# LoRA dropout draws from the global RNG every step, and 2 epochs cross an epoch boundary of the data order
RUN = ["optim.epochs=2", "optim.batch_size=4", "optim.per_device_batch_size=2", "optim.lr=1e-2",
       "stage.modules={encoder: frozen, compressor: full, llm: lora}", "stage.lora.r=2", "stage.lora.dropout=0.3",
       "stage.lora.target_modules=[q_proj, v_proj]", "checkpoint.every_steps=2", "checkpoint.keep_last=5",
       "eval.every_steps=2", "threads=1"]

KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import compactvlm.train.state as state
from compactvlm.train import load_train_config, train

where, step = sys.argv[2], int(sys.argv[3])

class Kill:
    def on_step_end(self, trainer, s, metrics):
        if where == "after_step" and s == step:
            os.kill(os.getpid(), signal.SIGKILL)

if where == "in_save":  # die half-way through writing checkpoint `step` (weights written, optimiser not)
    real = state.save_checkpoint
    def save_checkpoint(vlm, path, *, step: int, **kw):
        if step == int(sys.argv[3]):
            def die(*a, **k):
                os.kill(os.getpid(), signal.SIGKILL)
            state.save_file = die
        return real(vlm, path, step=step, **kw)
    state.save_checkpoint = save_checkpoint

train(load_train_config(sys.argv[1]), callbacks=[Kill()])
"""


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("compressor", "llm"):
        out.update({f"{name}.{k}": v for k, v in load_file(str(run_dir / "final" / f"{name}.safetensors")).items()})
    return out


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    ref = train(tiny_train_config(root, RUN + [f"output_dir={root / 'ref'}"], n_train=12))
    assert ref.step == 6
    return root, ref


# (where, step, checkpoints on disk after the kill)
KILLS = [("after_step", 1, []), ("after_step", 3, [2]), ("in_save", 4, [2]), ("after_step", 6, [2, 4, 6])]


@pytest.mark.parametrize("where,step,left", KILLS, ids=[f"{w}-{s}" for w, s, _ in KILLS])
def test_sigkill_then_resume_gives_identical_weights(reference, where, step, left):
    root, ref = reference
    out = root / f"{where}-{step}"
    cfg = tiny_train_config(root, RUN + [f"output_dir={out}"], n_train=12)
    cfg_file = root / f"{where}-{step}.yaml"
    cfg_file.write_text(yaml.safe_dump(to_plain(cfg)))
    script = root / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(cfg_file), where, str(step)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # died by SIGKILL
    assert [s for s, _ in list_checkpoints(out)] == left
    assert not (out / "final").exists()
    stale = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] if left else []
    if where == "in_save":
        assert stale and stale[0].startswith(".step-000004."), stale  # the half-written folder, never renamed

    res = train(cfg)  # resume=auto: the latest complete checkpoint (or the start)
    assert res.step == 6
    starts = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    resumed = [e for e in starts if e["event"] == "start"][-1]["resumed_from"]
    assert (resumed is None) if not left else resumed.endswith(f"step-{left[-1]:06d}")
    assert max_diff(final_weights(out), final_weights(ref.output_dir)) <= 1e-6
    assert [s for s, _ in res.val_losses] == [s for s, _ in ref.val_losses]
    assert [v for _, v in res.val_losses] == pytest.approx([v for _, v in ref.val_losses], abs=1e-6)


def test_reference_differs_from_a_shorter_run(reference, tmp_path):
    """The comparison above is sensitive: a run of 4 steps (one checkpoint fewer) ends with other weights."""
    root, ref = reference
    short = train(tiny_train_config(root, RUN + [f"output_dir={tmp_path / 'short'}", "optim.max_steps=4"], n_train=12))
    assert max_diff(final_weights(short.output_dir), final_weights(ref.output_dir)) > 1e-4


# ---- evaluation ----------------------------------------------------------------------------------------
def tiny_answer_fn(data: str, seed: int):
    """Greedy answers of a tiny random VLM; its LLM weights are scaled up so that the answers differ from
    question to question (at the default scale a random tiny LLM repeats one word). Same code as EVAL_SCRIPT."""
    from compactvlm.commands.eval import make_answer_fn
    from compactvlm.testing import tiny_vlm

    model = tiny_vlm("stf", k=2, E=1, seed=seed)
    with torch.no_grad():
        for p in model.llm.parameters():
            p.mul_(8.0)
    return make_answer_fn(model, data, max_new_tokens=4)


EVAL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from compactvlm.commands.eval import make_answer_fn
from compactvlm.evaluate.harness import evaluate
from compactvlm.testing import tiny_vlm

data, out, kill_after, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = tiny_vlm("stf", k=2, E=1, seed=seed)
with torch.no_grad():
    for p in model.llm.parameters():
        p.mul_(8.0)
fn = make_answer_fn(model, data, max_new_tokens=4)
calls = [0]

def answer(items):
    if calls[0] == kill_after:  # killed while answering this batch: the batches before it are on disk
        os.kill(os.getpid(), signal.SIGKILL)
    calls[0] += 1
    return fn(items)

evaluate("gqa", data, answer, out, batch_size=1, progress=False, run_info={"name": "tiny"})
"""

TIMING = ("answer_seconds", "answer_seconds_earlier", "answered_now")


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """The GQA fixture with a random image for every question."""
    d = tmp_path_factory.mktemp("gqa") / "gqa"
    shutil.copytree(FIX / "gqa", d)
    (d / "data" / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for line in (d / "llava_gqa_testdev_balanced.jsonl").read_text().splitlines():
        img = json.loads(line)["image"]
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / "data" / "images" / img)
    return d


def _killed_eval(tmp: Path, gqa: Path, out: Path, kill_after: int) -> None:
    script = tmp / "eval_kill.py"
    script.write_text(EVAL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(gqa), str(out), str(kill_after), "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # died by SIGKILL


def _preds(out: Path) -> list[dict]:
    """The answers written, without their timing (``seconds``: how long each took, which differs run to run)."""
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r.pop("seconds") >= 0 for r in rows)
    return rows


def _run(gqa: Path, out: Path, seed: int = 0) -> dict:
    from compactvlm.evaluate.harness import evaluate

    return evaluate("gqa", gqa, tiny_answer_fn(str(gqa), seed), out, batch_size=1, progress=False,
                    run_info={"name": "tiny"})


def test_eval_killed_mid_run_resumes_to_identical_metrics(gqa, tmp_path):
    ref = _run(gqa, tmp_path / "ref")
    assert ref["n_items"] == 4 and ref["answered_now"] == 4
    ref_preds = _preds(tmp_path / "ref")
    assert len({p["text"] for p in ref_preds}) > 1  # the model's answers depend on the question

    out = tmp_path / "run"
    for kill_after, done in ((1, 1), (2, 3)):  # killed after 1 answer; resumed, 2 more, killed again
        _killed_eval(tmp_path, gqa, out, kill_after)
        assert not (out / "metrics.json").exists()
        assert len(_preds(out)) == done
        assert _preds(out) == ref_preds[:done]  # what was written before the kill is kept as it was
    metrics = _run(gqa, out)
    assert metrics["answered_now"] == 1  # only the question still missing was answered
    # the killed processes' answering time is kept: the lines they wrote carry it
    assert metrics["answer_seconds_earlier"] == pytest.approx(read_predictions(out / "predictions.jsonl")[1]
                                                              - json.loads((out / "predictions.jsonl").read_text()
                                                                           .splitlines()[-1])["seconds"], abs=2e-3)
    assert metrics["answer_seconds_earlier"] > 0
    assert {k: v for k, v in metrics.items() if k not in TIMING} == {k: v for k, v in ref.items() if k not in TIMING}
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == ref["accuracy"]
    assert _preds(out) == ref_preds  # same answers, same order, nothing twice

    # sensitivity: another model answers differently, so equal predictions above are not a coincidence
    _run(gqa, tmp_path / "other", seed=1)
    assert [p["text"] for p in _preds(tmp_path / "other")] != [p["text"] for p in ref_preds]
