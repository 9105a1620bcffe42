"""Issue 22: a command deletes or replaces only what it can prove it wrote, resumable outputs record what
produced them, a second process fails at once, and images load the way a photo viewer shows them.

The catalogue of refusals is in ``test_bad_inputs.py``; here: the end-to-end checks (every foreign file
survives byte for byte, interrupted work is cleaned up at the next start, a real second process is locked out,
the NaN advice works) and the image modes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compactvlm.errors import CompactVLMError
from compactvlm.model.checkpoint import save_pretrained
from compactvlm.model.manifest import MARKER_NAME, marker_kind, write_marker, write_manifest
from compactvlm.train.fixtures import write_llava_json, write_tiny_models

FIX = Path(__file__).parent / "fixtures"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def fingerprint(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = ("link:" + os.readlink(p)) if p.is_symlink() else (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
    return out


def rgb(path: Path, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def foreign_folder(root: Path) -> Path:
    """A user's folder: photos, notes, a manifest.json of its own, a nested folder, a hidden file."""
    (root / "images" / "train").mkdir(parents=True)
    rgb(root / "images" / "holiday.jpg")
    rgb(root / "images" / "train" / "000000.jpg", seed=1)  # even a name SceneQA would use
    (root / "manifest.json").write_text(json.dumps({"name": "sceneqa", "files": {}, "counts": {}}))
    (root / "notes.txt").write_text("my notes\n")
    (root / ".hidden").write_bytes(os.urandom(100))
    (root / "masks").mkdir()
    (root / "masks" / "m.png").write_bytes(b"\x89PNG fake")
    return root


def mini_sceneqa(d: Path, n: int = 2) -> Path:
    """A hand-made SceneQA test split: n attribute questions about n images."""
    for i in range(n):
        rgb(d / "images" / "test" / f"{i:06d}.jpg", seed=i)
    rows = [{"question_id": f"test-{i:06d}-0", "image": f"images/test/{i:06d}.jpg"} for i in range(n)]
    (d / "test_questions.jsonl").write_text("".join(json.dumps({**r, "text": "What colour is it?",
                                                                 "category": "attribute"}) + "\n" for r in rows))
    (d / "test_answers.jsonl").write_text("".join(json.dumps({**r, "family": "attribute", "answer": "red",
                                                               "answers": ["red"] * 10}) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    enc, llm = write_tiny_models(root)
    return enc, llm


def run_cli(argv, capsys) -> tuple[int, str]:
    from compactvlm.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# ---- every command pointed at foreign files: exit 2, every file byte for byte -------------------------------
def test_commands_never_touch_foreign_files(tmp_path, models, capsys):
    enc, llm = models
    user = tmp_path / "user"
    folders = {name: foreign_folder(user / name) for name in ("build", "convert", "train", "eval")}
    # convert's source lives inside a user's folder: --out its parent must not delete it (nor the neighbours)
    src = user / "models" / "llava-src"
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"architectures": ["LlavaForConditionalGeneration"]}))
    (user / "models" / "notes.md").write_text("other model notes\n")
    rgb(user / "models" / "other" / "x.png")
    train_json = write_llava_json(tmp_path / "data", 4)
    sq = mini_sceneqa(tmp_path / "sq")
    before = fingerprint(user)
    m = [f"--encoder={enc}", f"--llm={llm}"]
    calls = [
        (["data", "build", "sceneqa", "--out", folders["build"], "--caption", "0", "--train", "0", "--val", "0",
          "--test", "1", "--quiet"], "was not written by compactvlm as a SceneQA build"),
        (["convert", src, "--from", "llava-hf", "--out", folders["convert"]], "was not written by compactvlm"),
        (["convert", src, "--from", "llava-hf", "--out", user / "models"], "is a parent folder of the source"),
        (["convert", src, "--from", "llava-hf", "--out", user], "is a parent folder of the source"),
        (["train", "--config", FIX.parent.parent / "configs" / "train" / "cpu_stage1.yaml", f"model.encoder={enc}",
          f"model.llm={llm}", "model.image_size=32", f"data.train={train_json}", "data.val=null",
          f"output_dir={folders['train']}", "logging.progress=false", "device=cpu", "optim.max_steps=1",
          "optim.batch_size=2", "optim.per_device_batch_size=2"],
         "was not written by compactvlm as a training output folder"),
        (["eval", "--benchmark", "sceneqa", "--data", sq, "--out", folders["eval"], "--quiet", *m],
         "was not written by compactvlm as an evaluation output folder"),
    ]
    for argv, want in calls:
        rc, err = run_cli(argv, capsys)
        assert rc == 2 and want in err and "Traceback" not in err, (argv[0], err)
        assert fingerprint(user) == before, argv[0]


def test_config_for_the_train_call_exists():
    assert (FIX.parent.parent / "configs" / "train" / "cpu_stage1.yaml").is_file()


# ---- SceneQA builds -------------------------------------------------------------------------------------------
SIZES = {"caption": 1, "train": 1, "val": 1, "test": 2}


def test_build_is_marked_and_a_killed_build_is_cleaned_at_the_next_start(tmp_path):
    from compactvlm.data.sceneqa import build_sceneqa

    fresh = tmp_path / "fresh"
    build_sceneqa(fresh, sizes=SIZES, progress=False)
    assert marker_kind(fresh) == "sceneqa-build"
    # kill a real build process while it writes images
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "compactvlm.cli", "data", "build", "sceneqa", "--out", str(out),
                             "--caption", "400", "--train", "400", "--val", "0", "--test", "0", "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "images").rglob("*.jpg")) if (out / "images").is_dir() else []) < 20:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert marker_kind(out) == "sceneqa-build" and not (out / "manifest.json").exists()  # half-written, marked
    build_sceneqa(out, sizes=SIZES, progress=False)  # the rerun replaces it instead of refusing the folder
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))  # noqa: E731
    assert names(out) == names(fresh)
    for f in ("train.json", "test_questions.jsonl", "test_answers.jsonl"):
        assert (out / f).read_bytes() == (fresh / f).read_bytes()


def test_unmarked_build_of_an_older_version_is_still_rebuilt(tmp_path):
    from compactvlm.data.sceneqa import build_sceneqa

    out = tmp_path / "old"
    build_sceneqa(out, sizes=SIZES, progress=False)
    (out / MARKER_NAME).unlink()  # as written before markers existed
    build_sceneqa(out, sizes={**SIZES, "test": 1}, progress=False)
    assert marker_kind(out) == "sceneqa-build"
    assert sorted(p.name for p in (out / "images" / "test").iterdir()) == ["000000.jpg"]


# ---- checkpoints ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stf():
    from compactvlm.testing import tiny_vlm

    return tiny_vlm("stf", k=2, E=1)


def test_checkpoints_are_marked_and_replaced_only_when_ours(tmp_path, stf):
    ck = save_pretrained(stf, tmp_path / "ck")
    assert marker_kind(ck) == "checkpoint"
    assert MARKER_NAME in json.loads((ck / "manifest.json").read_text())["files"]
    save_pretrained(stf, ck)  # its own folder: replaced
    # a folder written before markers existed is recognised by its compactvlm.json and replaced too
    (ck / MARKER_NAME).unlink()
    write_manifest(ck)
    save_pretrained(stf, ck)
    assert marker_kind(ck) == "checkpoint"
    (ck / "my_notes.txt").write_text("notes\n")
    with pytest.raises(CompactVLMError, match=r"holds files compactvlm did not write \(my_notes.txt\)"):
        save_pretrained(stf, ck)
    assert (ck / "my_notes.txt").read_text() == "notes\n"


def test_temp_folders_of_a_killed_write_are_removed_and_only_those(tmp_path, stf):
    from compactvlm.model.checkpoint import clean_stale_writes

    parent = tmp_path / "models"
    ck = save_pretrained(stf, parent / "ck")
    stale = Path(tempfile.mkdtemp(prefix=".ck.", dir=parent))  # what a kill during save_pretrained leaves
    write_marker(stale, "checkpoint")
    (stale / "compressor.safetensors").write_bytes(b"\0" * 1000)
    users = parent / ".ck.abcd1234"  # the same name shape, but not marked: not provably ours
    users.mkdir()
    (users / "keep.txt").write_text("keep\n")
    other = Path(tempfile.mkdtemp(prefix=".other.", dir=parent))
    write_marker(other, "checkpoint")
    empty = Path(tempfile.mkdtemp(prefix=".ck.", dir=parent))  # killed before its marker was written
    removed = clean_stale_writes(parent, ["ck"])
    assert sorted(removed) == sorted([stale, empty]) and not stale.exists() and not empty.exists()
    assert (users / "keep.txt").exists() and other.exists() and (ck / "compactvlm.json").exists()
    # killed between the two renames: NAME is gone, .NAME.old is the previous folder and comes back
    os.replace(ck, parent / ".ck.old")
    clean_stale_writes(parent, ["ck"])
    assert (parent / "ck" / "compactvlm.json").exists() and not (parent / ".ck.old").exists()


def test_training_removes_an_interrupted_checkpoint_write_at_its_next_start(tmp_path):
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    over = ["optim.max_steps=2", "checkpoint.every_steps=1", "eval.at_start=false", "eval.at_end=false", "threads=1"]
    cfg = tiny_train_config(tmp_path, over)
    train(cfg)
    run = Path(cfg.output_dir)
    shutil.rmtree(run / "checkpoints" / "step-000002")  # as if killed after step 1's checkpoint
    shutil.rmtree(run / "final")
    assert marker_kind(run) == "training-run"
    stale = Path(tempfile.mkdtemp(prefix=".step-000002.", dir=run / "checkpoints"))
    write_marker(stale, "checkpoint")
    (stale / "compressor.safetensors").write_bytes(b"\0" * 4096)
    stale_final = Path(tempfile.mkdtemp(prefix=".final.", dir=run))
    write_marker(stale_final, "checkpoint")
    train(tiny_train_config(tmp_path, over))  # resumes from step 1
    assert not stale.exists() and not stale_final.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_an_unmarked_run_of_an_older_version_still_resumes(tmp_path):
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    over = ["optim.max_steps=2", "checkpoint.every_steps=1", "eval.at_start=false", "eval.at_end=false", "threads=1"]
    train(tiny_train_config(tmp_path, over))
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step-000002")
    shutil.rmtree(run / "final")
    (run / MARKER_NAME).unlink()
    (run / ".compactvlm.lock").unlink()
    res = train(tiny_train_config(tmp_path, over))
    starts = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == "start"]
    assert res.step == 2 and starts[-1]["resumed_from"].endswith("step-000001") and marker_kind(run) == "training-run"


# ---- the NaN advice: lower the lr and resume from the last good checkpoint ---------------------------------------
def test_nan_advice_resumes_from_the_last_good_checkpoint_with_a_lower_lr(tmp_path):
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config
    from compactvlm.train.trainer import NonFiniteLoss, Trainer

    over = ["optim.max_grad_norm=0", "optim.max_steps=4", "checkpoint.every_steps=1", "checkpoint.keep_last=5",
            "eval.at_start=false", "eval.at_end=false", "threads=1", "data.val=null", "optim.schedule=constant",
            "optim.warmup_ratio=0"]
    real = Trainer.train_step

    def spikes_at_step_3(self, micro):  # a loss spike at step 3, as a too-high lr gives
        if self.step == 2:
            return {"loss": float("nan"), "grad_norm": float("nan"), "finite": 0.0}
        return real(self, micro)

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, "train_step", spikes_at_step_3)
    try:
        with pytest.raises(NonFiniteLoss) as info:
            train(tiny_train_config(tmp_path, ["optim.lr=0.5", *over]))
    finally:
        mp.undo()
    advice = info.value.fix
    from compactvlm.train.state import list_checkpoints

    good = list_checkpoints(tmp_path / "run")[-1][0]
    assert good >= 1 and f"step-{good:06d}" in info.value.problem
    assert "allow_config_change=optim.lr" in advice and "resume=auto" in advice
    assert good == 2
    with pytest.raises(CompactVLMError, match=r"different config \(optim.lr\)"):  # without asking: refused
        train(tiny_train_config(tmp_path, ["optim.lr=1e-3", *over]))
    t = Trainer(tiny_train_config(tmp_path, ["optim.lr=1e-3", "resume=auto", "allow_config_change=optim.lr", *over]))
    t.setup()
    try:
        assert t.step == good  # the last good checkpoint
        assert [g["lr"] for g in t.optimizer.param_groups] == [1e-3]
        assert t.scheduler.get_last_lr() == [1e-3]
    finally:
        t.logger.close()
        t._release_output()
    res = train(tiny_train_config(tmp_path, ["optim.lr=1e-3", "allow_config_change=optim.lr", *over]))
    assert res.step == 4 and np.isfinite(res.last["loss"])
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["lr"] for e in events if e["event"] == "train"][-1] == {"compressor": 1e-3}
    saved = json.loads((tmp_path / "run" / "final" / "compactvlm.json").read_text())["train"]
    assert saved["optim"]["lr"] == 1e-3  # the run's record says which lr it continued with


# ---- locks: a second process fails at once ----------------------------------------------------------------------
HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(60)
"""


def _hold_in_another_process(lock_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_eval_process_fails_fast(tmp_path):
    from compactvlm.evaluate.harness import evaluate

    yes = lambda items: ["yes"] * len(items)  # noqa: E731
    evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False)
    proc = _hold_in_another_process(tmp_path / "out" / ".compactvlm.lock")
    try:
        before = fingerprint(tmp_path)
        t = time.perf_counter()
        with pytest.raises(CompactVLMError, match="another process is writing to"):
            evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False)
        assert time.perf_counter() - t < 5 and fingerprint(tmp_path) == before
    finally:
        proc.kill()
        proc.wait()
    m = evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False)  # free again
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert m["answered_now"] == 0 and len(lines) == len({json.loads(l)["question_id"] for l in lines})


def test_second_training_process_fails_fast(tmp_path):
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    cfg = tiny_train_config(tmp_path, ["optim.max_steps=1", "eval.at_start=false", "eval.at_end=false", "threads=1"])
    train(cfg)
    proc = _hold_in_another_process(Path(cfg.output_dir) / ".compactvlm.lock")
    try:
        before = fingerprint(tmp_path)
        with pytest.raises(CompactVLMError, match="another training process is writing to"):
            train(cfg)
        assert fingerprint(tmp_path) == before  # metrics.jsonl not interleaved, nothing rewritten
    finally:
        proc.kill()
        proc.wait()


# ---- eval records what produced its answers --------------------------------------------------------------------
def test_eval_records_the_producer_and_no_resume_starts_over(tmp_path):
    from compactvlm.evaluate.harness import evaluate

    yes = lambda items: ["yes"] * len(items)  # noqa: E731
    no = lambda items: ["no"] * len(items)  # noqa: E731
    a = {"checkpoint_digest": "aa", "compressor": "stf", "compressor_params": {"k": 2}, "reduce": None,
         "budget": None, "decoding": {"greedy": True, "max_new_tokens": 12}}
    evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False, producer=a)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["producer"] == a and marker_kind(tmp_path / "out") == "eval-run"
    assert evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False, producer=dict(a))["answered_now"] == 0
    b = {**a, "budget": 16}
    with pytest.raises(CompactVLMError, match=r"another model \(budget: None there, 16 here\)"):
        evaluate("gqa", FIX / "gqa", no, tmp_path / "out", progress=False, producer=b)
    m = evaluate("gqa", FIX / "gqa", no, tmp_path / "out", progress=False, producer=b, resume=False)
    preds = [json.loads(l)["text"] for l in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert m["answered_now"] == m["n_items"] == len(preds) and set(preds) == {"no"}
    assert json.loads((tmp_path / "out" / "run.json").read_text())["producer"]["budget"] == 16


def test_a_complete_last_line_without_newline_is_not_glued_to_the_next_answer(tmp_path):
    from compactvlm.evaluate.harness import evaluate

    yes = lambda items: ["yes"] * len(items)  # noqa: E731
    m = evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False)
    f = tmp_path / "out" / "predictions.jsonl"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:2]))  # two complete answers, the second without its newline
    m2 = evaluate("gqa", FIX / "gqa", yes, tmp_path / "out", progress=False)
    rows = [json.loads(l) for l in f.read_text().splitlines()]
    assert m2["answered_now"] == m["n_items"] - 2
    assert len(rows) == m["n_items"] == len({r["question_id"] for r in rows})


def test_eval_cli_refuses_another_models_folder_before_loading_a_model(tmp_path, models, capsys, monkeypatch):
    import compactvlm.commands._common as common

    enc, llm = models
    data = mini_sceneqa(tmp_path / "sq")
    m = [f"--encoder={enc}", f"--llm={llm}"]
    rc, err = run_cli(["eval", "--benchmark", "sceneqa", "--data", data, "--out", tmp_path / "ev", "--quiet",
                       "--compressor", "avgpool", "--param", "k=2", *m], capsys)
    assert rc == 0, err
    loads = []
    monkeypatch.setattr(common, "model_from_args", lambda *a, **k: loads.append(1) or pytest.fail("model loaded"))
    rc, err = run_cli(["eval", "--benchmark", "sceneqa", "--data", data, "--out", tmp_path / "ev", "--quiet",
                       "--compressor", "mlp2x_gelu", *m], capsys)
    assert rc == 2 and "holds predictions of another model (compressor: 'avgpool' there, 'mlp2x_gelu' here" in err
    assert not loads
