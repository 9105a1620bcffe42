"""Checkpoints: a run killed with SIGKILL mid-way resumes to the same final weights as an uninterrupted run
(model, optimiser, scheduler, RNG and data position restored); NaN stops with the last good checkpoint kept;
checkpoint writes are atomic."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from compactvlm.errors import CompactVLMError
from compactvlm.model.checkpoint import save_pretrained
from compactvlm.testing import tiny_vlm
from compactvlm.train import train
from compactvlm.train.config import to_plain
from compactvlm.train.fixtures import tiny_train_config
from compactvlm.train.state import latest_checkpoint, list_checkpoints

# LoRA dropout draws from the global RNG every step, and 2 epochs cross an epoch boundary of the data order
RUN = ["optim.epochs=2", "optim.batch_size=4", "optim.per_device_batch_size=2", "optim.lr=1e-2",
       "stage.modules={encoder: frozen, compressor: full, llm: lora}", "stage.lora.r=2", "stage.lora.dropout=0.3",
       "stage.lora.target_modules=[q_proj, v_proj, up_proj]", "checkpoint.every_steps=2", "checkpoint.keep_last=3",
       "eval.every_steps=2", "threads=1"]

KILLER = """
import os, signal, sys
from compactvlm.train import load_train_config, train

class Kill:
    def on_step_end(self, trainer, step, metrics):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

train(load_train_config(sys.argv[1]), callbacks=[Kill()])
"""


def final_weights(run_dir):
    out = {}
    for name in ("compressor", "llm"):
        out.update({f"{name}.{k}": v for k, v in load_file(str(run_dir / "final" / f"{name}.safetensors")).items()})
    return out


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    ref = train(tiny_train_config(tmp_path, RUN + [f"output_dir={tmp_path / 'ref'}"], n_train=12))
    assert ref.step == 6

    cfg = tiny_train_config(tmp_path, RUN + [f"output_dir={tmp_path / 'killed'}"], n_train=12)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(to_plain(cfg)))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(cfg_file), "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # died by SIGKILL after step 5
    assert [s for s, _ in list_checkpoints(tmp_path / "killed")] == [2, 4]
    assert not (tmp_path / "killed" / "final").exists()

    res = train(cfg)  # resume=auto picks step 4: epoch 2, second global batch
    assert res.step == 6
    events = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e["event"] == "start"][-1]["resumed_from"].endswith("step-000004")
    assert max_diff(final_weights(res.output_dir), final_weights(ref.output_dir)) <= 1e-6
    assert [s for s, _ in res.val_losses] == [s for s, _ in ref.val_losses] == [0, 2, 4, 6]
    assert [v for _, v in res.val_losses] == pytest.approx([v for _, v in ref.val_losses], abs=1e-6)

    # without restoring the RNG (LoRA dropout) the resumed weights differ: the check above is sensitive
    import compactvlm.train.state as state

    monkeypatch.setattr(state, "set_rng_state", lambda d: None)
    other = tmp_path / "norng"
    (other / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(tmp_path / "killed" / "checkpoints" / "step-000004", other / "checkpoints" / "step-000004")
    cfg.output_dir = str(other)
    res2 = train(cfg)
    assert max_diff(final_weights(res2.output_dir), final_weights(ref.output_dir)) > 1e-6


def test_resume_refuses_a_changed_config(tmp_path):
    base = RUN + ["optim.max_steps=2"]
    train(tiny_train_config(tmp_path, base))
    with pytest.raises(CompactVLMError, match="different config.*optim.lr"):
        train(tiny_train_config(tmp_path, base + ["optim.lr=5e-3"]))
    with pytest.raises(CompactVLMError, match="resume=never"):
        train(tiny_train_config(tmp_path, base + ["resume=never"]))


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    class Poison:
        def on_step_end(self, trainer, step, metrics):
            if step == 2:
                with torch.no_grad():
                    next(trainer.vlm.compressor.parameters()).fill_(float("nan"))

    cfg = tiny_train_config(tmp_path, ["optim.max_steps=4", "checkpoint.every_steps=1", "checkpoint.keep_last=5",
                                       "eval.at_start=false"])
    with pytest.raises(CompactVLMError, match="non-finite at step 3.*step-000002"):
        train(cfg, callbacks=[Poison()])
    assert latest_checkpoint(cfg.output_dir).name == "step-000002"
    w = load_file(str(latest_checkpoint(cfg.output_dir) / "compressor.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())
    events = [json.loads(l) for l in open(f"{cfg.output_dir}/metrics.jsonl")]
    assert events[-1]["event"] == "nan" and events[-1]["step"] == 3


def test_checkpoint_write_is_atomic(tmp_path):
    model = tiny_vlm("mlp2x_gelu")
    out = save_pretrained(model, tmp_path / "ck")
    before = load_file(str(out / "compressor.safetensors"))

    def crash(tmp):
        raise OSError("disk full")

    with torch.no_grad():
        for p in model.compressor.parameters():
            p.add_(1.0)
    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "ck", write_extra=crash)
    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "new", write_extra=crash)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp folders left behind
    after = load_file(str(tmp_path / "ck" / "compressor.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the old checkpoint is intact


def test_resume_compares_keys_a_checkpoint_predates_with_what_that_code_did():
    from compactvlm.train.config import TrainConfig, to_plain
    from compactvlm.train.trainer import config_differences

    cfg = TrainConfig()
    old = to_plain(cfg)
    del old["objective"], old["grounding_background"], old["model"]["image_aspect"]  # written before they existed
    cfg.model.image_aspect = "resize"  # what that code did
    assert config_differences(old, to_plain(cfg)) == []
    cfg.model.image_aspect = "pad"  # today's default for new models: a real change for that checkpoint
    assert config_differences(old, to_plain(cfg)) == ["model.image_aspect"]
    cfg.model.image_aspect, cfg.objective = "resize", "grounding"
    assert config_differences(old, to_plain(cfg)) == ["objective"]
    new = to_plain(cfg)
    new["objective"] = "lm"
    assert config_differences(new, to_plain(cfg)) == ["objective"]  # a key both have is compared as before


def test_checkpoints_by_wall_clock_time(tmp_path, monkeypatch):
    """``checkpoint.every_minutes``: a save once that many minutes have passed since the last save (or the start),
    whatever the steps. The trainer's clock is replaced by one that moves only when a callback says (25 s per step),
    so with every_minutes=1 the saves are at step 4 (75 s), step 6 (the last), and none between."""
    import compactvlm.train.trainer as trainer_mod

    clock = {"t": 0.0}

    class Clock:  # the trainer's `time` module, with a clock under the test's control
        def perf_counter(self):  # + a microsecond a call: step times stay > 0
            clock["t"] += 1e-6
            return clock["t"]

        def __getattr__(self, name):
            import time

            return getattr(time, name)

    class Tick:
        def on_step_end(self, trainer, step, metrics):
            clock["t"] += 25.0

    monkeypatch.setattr(trainer_mod, "time", Clock())
    over = ["optim.max_steps=6", "checkpoint.every_steps=0", "checkpoint.every_minutes=1", "checkpoint.keep_last=10",
            "eval.at_start=false", "eval.at_end=false", "threads=1"]
    res = train(tiny_train_config(tmp_path, over), callbacks=[Tick()])
    events = [json.loads(l) for l in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [4, 6]
    assert [s for s, _ in list_checkpoints(res.output_dir)] == [4, 6]

    # a clock that moves 70 s a step: every step after the first is due (step 1 ends before the first tick)
    clock["t"] = 0.0
    Tick.on_step_end = lambda self, trainer, step, metrics: clock.__setitem__("t", clock["t"] + 70.0)
    res2 = train(tiny_train_config(tmp_path / "b", over), callbacks=[Tick()])
    assert [s for s, _ in list_checkpoints(res2.output_dir)] == [2, 3, 4, 5, 6]
    # both triggers on: either saves
    clock["t"] = 0.0
    Tick.on_step_end = lambda self, trainer, step, metrics: clock.__setitem__("t", clock["t"] + 25.0)
    both = over[:1] + ["checkpoint.every_steps=5"] + over[2:]
    res3 = train(tiny_train_config(tmp_path / "c", both), callbacks=[Tick()])
    assert [s for s, _ in list_checkpoints(res3.output_dir)] == [4, 5, 6]
    # off (the default): no resumable checkpoint, only the final model
    res4 = train(tiny_train_config(tmp_path / "d", over[:2] + over[3:]), callbacks=[Tick()])
    assert list_checkpoints(res4.output_dir) == [] and (res4.output_dir / "final").is_dir()


def test_every_minutes_must_not_be_negative(tmp_path):
    with pytest.raises(CompactVLMError, match="every_minutes must be >= 0"):
        tiny_train_config(tmp_path, ["checkpoint.every_minutes=-1"]).validate()


class _StopAt:
    """Ends a run with an error after ``step`` (its checkpoints up to then stay, as after a kill)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            raise RuntimeError("stopped by the test")


def _interrupted(tmp_path, name, native, monkeypatch):
    """A precision=auto run stopped after step 3 (checkpoint at step 2) on a device with / without native bf16."""
    from compactvlm.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "bf16_is_fast", lambda device="cpu": native)
    cfg = tiny_train_config(tmp_path, RUN + ["optim.epochs=1", "precision=auto", f"output_dir={tmp_path / name}"])
    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(cfg, callbacks=[_StopAt(3)])
    assert [s for s, _ in list_checkpoints(tmp_path / name)] == [2]
    return cfg


def _starts(run_dir):
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["event"] == "start"]


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(tmp_path, monkeypatch, capsys):
    """precision=auto picks bf16 only where it is native; a run started in fp32 (an AVX2 CPU) and resumed where bf16
    is native goes on in fp32 (one precision per run, said in the log), unless switched on purpose; a bf16 run is
    not resumed where bf16 is only emulated (tens of times slower) but refused, naming both ways out."""
    from compactvlm.train import trainer as trainer_mod

    cfg = _interrupted(tmp_path, "fp32-run", False, monkeypatch)
    assert json.loads((tmp_path / "fp32-run" / "checkpoints" / "step-000002" / "training_state.json").read_text())[
        "precision"] == "fp32"
    monkeypatch.setattr(trainer_mod, "bf16_is_fast", lambda device="cpu": True)
    res = train(cfg)
    assert res.step == 4  # one epoch of 16 samples at batch 4
    assert [e["precision"] for e in _starts(tmp_path / "fp32-run")] == ["fp32", "fp32"]
    assert "precision auto -> fp32: the run being resumed trained in fp32" in capsys.readouterr().err

    cfg = _interrupted(tmp_path, "bf16-run", True, monkeypatch)
    monkeypatch.setattr(trainer_mod, "bf16_is_fast", lambda device="cpu": False)
    with pytest.raises(CompactVLMError, match="trained in bf16, which this CPU only emulates") as e:
        train(cfg)
    assert "precision=fp32 allow_config_change=precision" in str(e.value)
    # finished in fp32 on purpose: the explicit switch is allowed and logged
    cfg = tiny_train_config(tmp_path, RUN + ["optim.epochs=1", "precision=fp32", "allow_config_change=[precision]",
                                             f"output_dir={tmp_path / 'bf16-run'}"])
    train(cfg)
    assert [e["precision"] for e in _starts(tmp_path / "bf16-run")] == ["bf16", "fp32"]


def test_recorded_precision_reads_old_checkpoints_from_the_run_log(tmp_path):
    """Checkpoints written before the precision was recorded: the last start event at or before their step."""
    from compactvlm.train.trainer import recorded_precision

    run = tmp_path / "run"
    for step, rec in ((2, None), (6, None), (8, "fp32")):
        d = run / "checkpoints" / f"step-{step:06d}"
        d.mkdir(parents=True)
        (d / "training_state.json").write_text(json.dumps({"step": step, **({"precision": rec} if rec else {})}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in (
        {"event": "start", "step": 0, "precision": "fp32"}, {"event": "train", "step": 1},
        {"event": "start", "step": 4, "precision": "bf16"})) + "\n")
    assert recorded_precision(run, None) is None
    assert recorded_precision(run, run / "checkpoints" / "step-000002") == "fp32"
    assert recorded_precision(run, run / "checkpoints" / "step-000006") == "bf16"
    assert recorded_precision(run, run / "checkpoints" / "step-000008") == "fp32"  # its own record first
    (run / "metrics.jsonl").unlink()
    assert recorded_precision(run, run / "checkpoints" / "step-000002") is None
    # resume=<a folder that is no training checkpoint> with precision=auto: the resume's own clear error, no traceback
    (tmp_path / "not-a-checkpoint").mkdir()
    assert recorded_precision(run, tmp_path / "not-a-checkpoint") is None
    with pytest.raises(CompactVLMError, match="is not a resumable training checkpoint"):
        train(tiny_train_config(tmp_path, ["optim.max_steps=1", "precision=auto", "threads=1",
                                           f"resume={tmp_path / 'not-a-checkpoint'}", f"output_dir={tmp_path / 'o'}"]))
