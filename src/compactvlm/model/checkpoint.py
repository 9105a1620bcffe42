"""Compact-model folders: ``compactvlm.json`` (model config) + ``compressor.safetensors`` (+ ``llm.safetensors``
when the LLM was tuned). Weights only through safetensors; writes are atomic (temp folder + rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import from_dict
from ..errors import CompactVLMError
from .build import ModelConfig, build_model

CONFIG_NAME = "compactvlm.json"
COMPRESSOR_WEIGHTS = "compressor.safetensors"
LLM_WEIGHTS = "llm.safetensors"
FORMAT_VERSION = 1


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_pretrained(model, out_dir: str | os.PathLike, save_llm: bool = False, extra: dict | None = None) -> Path:
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg = dict(model.config_dict)
        cfg["compressor"] = model.compressor.registry_name
        cfg["compressor_params"] = dict(model.compressor.params)
        meta = {"format_version": FORMAT_VERSION, "model": cfg, **(extra or {})}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        save_file(_contiguous(model.compressor.state_dict()), tmp / COMPRESSOR_WEIGHTS)
        if save_llm:
            sd = model.llm.state_dict()
            # tied embeddings share storage; store the input embedding once
            if getattr(model.llm.config, "tie_word_embeddings", False):
                sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
            save_file(_contiguous(sd), tmp / LLM_WEIGHTS)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_config(ckpt: str | os.PathLike) -> tuple[ModelConfig, dict]:
    d = Path(ckpt)
    f = d / CONFIG_NAME
    if not d.is_dir() or not f.exists():
        raise CompactVLMError(f"{d} is not a compactvlm checkpoint (no {CONFIG_NAME})",
                              "pass a folder written by `compactvlm train` or save_pretrained()")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CompactVLMError(f"{f} is not valid JSON: {e}", "the checkpoint is damaged; re-save it") from None
    return from_dict(ModelConfig, meta.get("model", {}), prefix="model."), meta


def load_compressor_weights(compressor: torch.nn.Module, path: Path) -> None:
    if not path.exists():
        raise CompactVLMError(f"checkpoint weights missing: {path}", "the checkpoint is incomplete; re-save it")
    sd = load_file(str(path))
    own = compressor.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(filter(None, [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
            "shape mismatch " + ", ".join(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5]) if shapes else "",
        ]))
        raise CompactVLMError(
            f"checkpoint weights in {path} do not match compressor {compressor.registry_name!r} "
            f"with options {getattr(compressor, 'params', {})}: {detail}",
            "use the compressor and options the checkpoint was trained with (see its compactvlm.json)",
        )
    compressor.load_state_dict(sd, strict=True)


def load_pretrained(ckpt: str | os.PathLike, compressor: str | None = None,
                    compressor_params: dict[str, Any] | None = None, progress: bool = True, **overrides):
    cfg, meta = read_config(ckpt)
    if compressor and compressor != cfg.compressor:
        raise CompactVLMError(
            f"checkpoint {ckpt} holds a {cfg.compressor!r} compressor, not {compressor!r}",
            f"drop --compressor or pass --compressor {cfg.compressor}",
        )
    if compressor_params:
        # only test-time options may differ (they are checked against the weights below)
        cfg.compressor_params = {**cfg.compressor_params, **compressor_params}
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = build_model(cfg, progress=progress)
    load_compressor_weights(model.compressor, Path(ckpt) / COMPRESSOR_WEIGHTS)
    llm_w = Path(ckpt) / LLM_WEIGHTS
    if llm_w.exists():
        sd = load_file(str(llm_w))
        missing, unexpected = model.llm.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise CompactVLMError(f"LLM weights in {llm_w} do not match the LLM {cfg.llm!r}: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}", "load it with the LLM it was trained with")
        if getattr(model.llm.config, "tie_word_embeddings", False):
            model.llm.tie_weights()
    model.eval()
    return model
