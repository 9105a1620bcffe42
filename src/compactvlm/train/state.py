"""Resumable training checkpoints: a compact-model folder plus the state to continue exactly.

    OUT/checkpoints/step-000040/
        compactvlm.json          model config + the train config + step (model/checkpoint.py's format)
        compressor.safetensors   the whole compressor
        llm.safetensors          trained LLM weights only (LoRA adapters, or the full LLM in a full stage)
        optimizer.safetensors    AdamW moments and step counts, one tensor each (``state.<i>.<name>``)
        training_state.json      step, data position, param-group settings, scheduler, RNG of every process

The folder is written to a temporary name and renamed into place, so a run killed while saving leaves the
previous checkpoint intact and no half-written one (its hidden temp folder, ``.step-N.xxxxxxxx``, is removed
when the run starts again). No pickle: tensors go through safetensors, the rest JSON.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..errors import CompactVLMError
from ..model.checkpoint import CONFIG_NAME, read_safetensors, save_pretrained
from ..model.manifest import LOCK_NAME, verify_manifest

TRAIN_STATE = "training_state.json"
OPTIM_STATE = "optimizer.safetensors"
CHECKPOINTS = "checkpoints"
LOCK = LOCK_NAME  # held by the training process writing an output_dir (Trainer._claim_output)
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ---- RNG ---------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states as JSON-able values."""
    v, st, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [v, list(st), gauss], "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(d: dict[str, Any]) -> None:
    v, st, gauss = d["python"]
    random.setstate((v, tuple(st), gauss))
    name, keys, pos, has_gauss, cached = d["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(d["torch"]))
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in d["cuda"]])


# ---- optimiser -----------------------------------------------------------------------------------------
def split_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimiser state dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], js: dict) -> dict:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    for idx, st in js.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in js["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- folders -------------------------------------------------------------------------------------------
def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / TRAIN_STATE).exists() and (d / CONFIG_NAME).exists():
            out.append((int(m.group(1)), d))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    cks = list_checkpoints(output_dir)
    return cks[-1][1] if cks else None


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    if keep_last < 1:
        return
    for _, d in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(d, ignore_errors=True)


def save_checkpoint(vlm, path: Path, *, step: int, train_config: dict, optimizer, scheduler,
                    param_names: list[str], rng_states: list[dict], position: dict, metrics: dict | None = None,
                    save_frozen: bool = False, precision: str | None = None) -> Path:
    """Write a resumable checkpoint folder atomically (rank 0 only; ``rng_states`` from every process).
    ``precision``: the autocast precision the run trains with (a resumed ``precision=auto`` run keeps it)."""

    def write_extra(tmp: Path) -> None:
        tensors, js = split_optimizer_state(optimizer.state_dict())
        save_file(tensors, tmp / OPTIM_STATE)
        state = {"step": step, "position": position, "optimizer": js, "param_names": param_names,
                 "scheduler": scheduler.state_dict(), "rng": rng_states, "metrics": metrics or {},
                 "precision": precision}
        (tmp / TRAIN_STATE).write_text(json.dumps(state))

    return save_pretrained(vlm, path, save_llm=save_frozen, trainable_only=True,
                           extra={"train": train_config, "step": step}, write_extra=write_extra)


def read_checkpoint_state(path: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(compactvlm.json meta, training_state.json, optimiser tensors) of a training checkpoint."""
    path = Path(path)
    if not (path / TRAIN_STATE).exists():
        raise CompactVLMError(f"{path} is not a resumable training checkpoint (no {TRAIN_STATE})",
                              "resume from OUT/checkpoints/step-N, or start it as init.from instead")
    verify_manifest(path)  # sizes + SHA-256 of every file (folders from older versions have no manifest)
    meta = json.loads((path / CONFIG_NAME).read_text())
    state = json.loads((path / TRAIN_STATE).read_text())
    tensors = read_safetensors(path / OPTIM_STATE) if (path / OPTIM_STATE).exists() else {}
    return meta, state, tensors
