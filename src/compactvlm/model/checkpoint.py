"""Compact-model folders: ``compactvlm.json`` (model config) + ``compressor.safetensors`` (+ ``llm.safetensors``
when the LLM was tuned). Weights only through safetensors; writes are atomic (temp folder + rename), and
``manifest.json`` (size + SHA-256 of every file, ``model.manifest``) is written last and verified on load.

``llm.safetensors`` holds, as ``compactvlm.json``'s ``llm_weights.kind`` says: ``full`` (every LLM weight; the
default when the key is absent), ``partial`` (only the weights that were trained; the rest come from the
config's LLM) or ``lora`` (peft adapter weights with their LoRA settings; loading merges them unless asked not
to). ``encoder.safetensors`` (``encoder_weights.kind: partial``) appears only when encoder weights were trained.
Training checkpoints add their optimiser/scheduler/RNG state through ``write_extra`` (see ``train.state``).

Every folder written here carries the ``checkpoint`` marker (``model.manifest.MARKER_NAME``, written first into
the temp folder). ``save_pretrained`` replaces an existing folder only when it is a checkpoint (marked, or an
older folder with this format's ``compactvlm.json``) holding only the files its manifest lists; anything else
is refused (``check_replaceable``). ``clean_stale_writes`` removes the marked temp folders a killed write left.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..config import from_dict
from ..errors import CompactVLMError
from .adapters import is_peft
from .build import ModelConfig, build_model
from .shipped import resolve_checkpoint
from .manifest import MANIFEST_NAME, MARKER_NAME, marker_kind, refuse_foreign, verify_manifest, write_manifest, write_marker

CONFIG_NAME = "compactvlm.json"
COMPRESSOR_WEIGHTS = "compressor.safetensors"
LLM_WEIGHTS = "llm.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"
FORMAT_VERSION = 1


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _sub(state_dict: dict | None, prefix: str) -> dict | None:
    if state_dict is None:
        return None
    return {k[len(prefix) + 1:]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}


def _llm_payload(model, save_llm: bool, trainable_only: bool, full_sd: dict | None = None):
    """(state dict, meta) for llm.safetensors, or (None, None) when nothing is to be stored."""
    llm = model.llm
    if is_peft(llm):
        from peft import get_peft_model_state_dict

        pc = llm.peft_config[llm.active_adapter]
        meta = {"kind": "lora", "r": pc.r, "alpha": pc.lora_alpha, "dropout": pc.lora_dropout,
                "target_modules": sorted(pc.target_modules)}
        return get_peft_model_state_dict(llm, state_dict=full_sd), meta
    sd = full_sd if full_sd is not None else llm.state_dict()
    # tied embeddings share storage; store the input embedding once
    if getattr(llm.config, "tie_word_embeddings", False):
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    if save_llm:
        return sd, {"kind": "full"}
    if trainable_only:
        names = {n for n, p in llm.named_parameters() if p.requires_grad}
        if names:
            part = {k: v for k, v in sd.items() if k in names}
            return part, {"kind": "full" if len(part) == len(sd) else "partial"}
    return None, None


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a clear error for a file that is not valid safetensors (damaged,
    or another format under a .safetensors name: it is never unpickled)."""
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, or OSError / header errors from a damaged file
        raise CompactVLMError(f"{path} is not a valid safetensors file ({type(e).__name__}: {e})",
                              "the checkpoint is damaged: re-save it, or use an earlier checkpoint") from None


def _disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, as an OSError or as safetensors' SafetensorError("... (os error 28)")."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if isinstance(e, OSError) and e.errno in codes:
        return True
    text = str(e)
    return any(f"os error {c})" in text for c in codes) or "No space left on device" in text


def save_pretrained(model, out_dir: str | os.PathLike, save_llm: bool = False, extra: dict | None = None, *,
                    trainable_only: bool = False, write_extra: Callable[[Path], None] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None, embed: bool = False) -> Path:
    """Write a compact-model folder atomically.

    Always writes ``tokenizer/`` and ``preprocessor_config.json`` (see ``model.assets``); ``embed``: also
    write the encoder and LLM as HF folders ``encoder/`` and ``llm/`` (a self-contained folder).

    ``save_llm``: store every LLM weight. ``trainable_only``: store the LLM / encoder weights that have
    ``requires_grad`` (LoRA adapters when the LLM is wrapped by peft). ``write_extra(tmp_dir)`` adds files to
    the folder before it is renamed into place. ``state_dict``: the model's full state dict gathered by the
    caller (sharded training: FSDP / DeepSpeed ZeRO-3), used instead of the modules' own tensors.
    """
    out = Path(out_dir)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_marker(tmp, "checkpoint")  # first: a killed write leaves a temp folder provably ours (cleaned later)
        cfg = dict(model.config_dict)
        cfg["compressor"] = model.compressor.registry_name
        cfg["compressor_params"] = dict(model.compressor.params)
        cfg["image_aspect"] = model.processor.aspect  # what the weights were trained / converted with
        from .assets import write_assets

        write_assets(model, tmp, cfg, embed=embed)  # tokenizer/, preprocessor_config.json (+ encoder/, llm/)
        meta = {"format_version": FORMAT_VERSION, "model": cfg, **(extra or {})}
        comp_sd = _sub(state_dict, "compressor")
        save_file(_contiguous(comp_sd if comp_sd is not None else model.compressor.state_dict()), tmp / COMPRESSOR_WEIGHTS)
        sd, llm_meta = (None, None) if embed else _llm_payload(model, save_llm, trainable_only, _sub(state_dict, "llm"))
        if sd is not None:
            save_file(_contiguous(sd), tmp / LLM_WEIGHTS)
            meta["llm_weights"] = llm_meta
        if trainable_only:
            enc_sd = _sub(state_dict, "encoder")
            enc = {n: (enc_sd[n] if enc_sd is not None else p) for n, p in model.encoder.named_parameters()
                   if p.requires_grad}
            if enc:
                save_file(_contiguous(enc), tmp / ENCODER_WEIGHTS)
                meta["encoder_weights"] = {"kind": "partial"}
        if write_extra is not None:
            write_extra(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        write_manifest(tmp)  # last: sizes + SHA-256 of every file, checked on load
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                if not _is_checkpoint(old):
                    raise refuse_foreign(old, "checkpoint", "the output folder")
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except Exception as e:  # noqa: BLE001 - only a full disk is translated; everything else propagates
        if _disk_full(e):
            raise CompactVLMError(
                f"no space left on the device while writing {out} ({getattr(e, 'strerror', None) or e}); nothing was written there"
                + (" and the previous folder is intact" if out.exists() else ""),
                "free disk space (or pick another output folder), then save again / resume=auto") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# files a checkpoint folder may hold (folders written before manifests and markers existed)
_CHECKPOINT_NAMES = {CONFIG_NAME, COMPRESSOR_WEIGHTS, LLM_WEIGHTS, ENCODER_WEIGHTS, MANIFEST_NAME, MARKER_NAME,
                     "preprocessor_config.json", "tokenizer", "encoder", "llm", "optimizer.safetensors",
                     "training_state.json", "provenance.json"}


def _is_checkpoint(folder: Path) -> bool:
    kind = marker_kind(folder)
    if kind is not None:
        return kind == "checkpoint"
    try:  # written before markers existed: a compactvlm.json of this format
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and isinstance(meta.get("model"), dict)


def _foreign_files(folder: Path) -> list[str]:
    """Files of a checkpoint folder that it did not write: not in its manifest (or, without a manifest, not
    among the names a checkpoint has)."""
    try:
        listed = set(json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(p.name for p in folder.iterdir() if p.name not in _CHECKPOINT_NAMES)
    listed |= {MANIFEST_NAME, MARKER_NAME}
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in listed)


def check_replaceable(out: Path, option: str = "the output folder") -> None:
    """Refuse to replace ``out`` unless it is missing, empty, or a compactvlm checkpoint holding only its own
    files (a photo folder, a notes file, another model's folder are never deleted)."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise CompactVLMError(f"{out} exists and is {'a symlink' if out.is_symlink() else 'a file'}, not a "
                              "checkpoint folder; nothing was changed", f"choose a new folder for {option}")
    if not any(out.iterdir()):
        return
    if not _is_checkpoint(out):
        raise refuse_foreign(out, "checkpoint", option)
    foreign = _foreign_files(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise CompactVLMError(f"checkpoint {out} holds files compactvlm did not write ({shown}); replacing it "
                              "would delete them, so nothing was changed",
                              f"move those files out of {out}, or choose a new folder for {option}")


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>old|[a-z0-9_]{8})$")


def clean_stale_writes(parent: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """Remove the temp folders a killed ``save_pretrained`` left in ``parent`` (``.NAME.xxxxxxxx``, marked as
    compactvlm checkpoints; only for ``names`` if given). A ``.NAME.old`` whose ``NAME`` is gone (killed between
    the two renames) is the previous folder and is renamed back instead. Returns the folders removed."""
    root = Path(parent)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        m = _TEMP.match(p.name)
        if not m or (names is not None and m["name"] not in names) or not p.is_dir() or p.is_symlink():
            continue
        empty = m["tag"] != "old" and not any(p.iterdir())  # killed before the marker: holds nothing
        if not empty and marker_kind(p) != "checkpoint" and not (m["tag"] == "old" and _is_checkpoint(p)):
            continue  # not provably ours: left alone
        target = root / m["name"]
        if m["tag"] == "old" and not target.exists():
            os.replace(p, target)
            continue
        shutil.rmtree(p)
        removed.append(p)
    return removed


def read_config(ckpt: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole compactvlm.json) of a checkpoint folder (or shipped short name ``demo:NAME``)."""
    d = resolve_checkpoint(ckpt)
    f = d / CONFIG_NAME
    if not d.is_dir() or not f.exists():
        raise CompactVLMError(f"{d} is not a compactvlm checkpoint (no {CONFIG_NAME})",
                              "pass a folder written by `compactvlm train` or save_pretrained()")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CompactVLMError(f"{f} is not valid JSON: {e}", "the checkpoint is damaged; re-save it") from None
    saved = meta.get("model", {})
    cfg = from_dict(ModelConfig, saved, prefix="model.")
    if isinstance(saved, dict) and "image_aspect" not in saved:
        from ..encoders.preprocessing import LEGACY_ASPECT

        cfg.image_aspect = LEGACY_ASPECT  # written before the mode existed: its processor resized the whole image
    from .assets import resolve_paths

    resolve_paths(cfg, d)  # encoder/ and llm/ of a self-contained folder
    return cfg, meta


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _key_problems(own: dict, sd: dict, new_modules: Sequence[str] = (), allow_missing: bool = False) -> str:
    missing = [] if allow_missing else sorted(k for k in set(own) - set(sd) if not _under(k, new_modules))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    return "; ".join(filter(None, [
        f"missing {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "") if missing else "",
        f"unexpected {unexpected[:5]}" + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "") if unexpected else "",
        "shape mismatch " + ", ".join(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5]) if shapes else "",
    ]))


def load_compressor_weights(compressor: torch.nn.Module, path: Path, new_modules: Sequence[str] = ()) -> list[str]:
    """Load compressor weights; every weight must be in the file except those under ``new_modules`` (prefixes
    relative to the compressor, e.g. ``grouping``), which keep their initial values. Returns the keys kept new."""
    if not path.exists():
        raise CompactVLMError(f"checkpoint weights missing: {path}", "the checkpoint is incomplete; re-save it")
    sd = read_safetensors(path)
    own = compressor.state_dict()
    detail = _key_problems(own, sd, new_modules)
    if detail:
        fix = "use the compressor and options the checkpoint was trained with (see its compactvlm.json)"
        if new_modules or any(k not in sd for k in own):
            fix += "; parameters the new model adds on purpose go in init.new_modules (e.g. compressor.grouping)"
        raise CompactVLMError(
            f"checkpoint weights in {path} do not match compressor {compressor.registry_name!r} "
            f"with options {getattr(compressor, 'params', {})}: {detail}", fix)
    kept = sorted(k for k in own if k not in sd)
    compressor.load_state_dict({**{k: own[k] for k in kept}, **sd}, strict=True)
    from .init_state import mark_random

    mark_random(compressor, False)
    return kept


def load_weights(model, ckpt: str | os.PathLike, new_modules: Sequence[str] = (), merge_lora: bool = True) -> list[str]:
    """Load a checkpoint's weights into a built model (compressor, then LLM and encoder parts if stored).

    ``new_modules`` are model-level prefixes (``compressor.grouping``, ``compressor.semantic_tokens``) whose
    weights may be absent from the checkpoint. LoRA adapters load into an LLM that already has adapters, or
    are added and (``merge_lora``) merged into the weights. Returns the model-level keys that stayed new.
    """
    d = resolve_checkpoint(ckpt)
    _, meta = read_config(d)
    verify_manifest(d)
    comp_new = [p[len("compressor."):] for p in new_modules if p.startswith("compressor.")]
    kept = ["compressor." + k for k in load_compressor_weights(model.compressor, d / COMPRESSOR_WEIGHTS, comp_new)]
    llm_w = d / LLM_WEIGHTS
    if llm_w.exists():
        info = meta.get("llm_weights") or {"kind": "full"}
        sd = read_safetensors(llm_w)
        if info.get("kind") == "lora":
            _load_lora(model, sd, info, llm_w, merge_lora)
        else:
            if is_peft(model.llm):
                raise CompactVLMError(f"{llm_w} holds plain LLM weights but the LLM already has LoRA adapters",
                                      "load the checkpoint before adding adapters (init.from does this)")
            own = model.llm.state_dict()
            tied = getattr(model.llm.config, "tie_word_embeddings", False)
            if tied:
                own = {k: v for k, v in own.items() if k != "lm_head.weight"}
            llm_new = [p[len("llm."):] for p in new_modules if p.startswith("llm.")]
            detail = _key_problems(own, sd, llm_new, allow_missing=info.get("kind") == "partial")
            if detail:
                raise CompactVLMError(f"LLM weights in {llm_w} do not match the LLM {meta['model'].get('llm')!r}: {detail}",
                                      "load it with the LLM it was trained with")
            model.llm.load_state_dict(sd, strict=False)
            if tied:
                model.llm.tie_weights()
    enc_w = d / ENCODER_WEIGHTS
    if enc_w.exists():
        sd = read_safetensors(enc_w)
        own = dict(model.encoder.named_parameters())
        detail = _key_problems(own, sd, allow_missing=True)
        if detail:
            raise CompactVLMError(f"encoder weights in {enc_w} do not match the encoder: {detail}",
                                  "load it with the encoder it was trained with")
        model.encoder.load_state_dict(sd, strict=False)
    return kept


def _load_lora(model, sd: dict, info: dict, path: Path, merge: bool) -> None:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    added = not is_peft(model.llm)
    if added:
        cfg = LoraConfig(r=int(info["r"]), lora_alpha=info["alpha"], lora_dropout=float(info.get("dropout", 0.0)),
                         target_modules=list(info["target_modules"]), task_type="CAUSAL_LM")
        model.llm = get_peft_model(model.llm, cfg)
    own = {k: v for k, v in _peft_adapter_state(model.llm).items()}
    detail = _key_problems(own, sd)
    if detail:
        raise CompactVLMError(f"LoRA weights in {path} do not match the LLM's adapters: {detail}",
                              "use the LoRA settings (stage.lora) and LLM the checkpoint was trained with")
    set_peft_model_state_dict(model.llm, sd)
    if added and merge:
        model.llm = model.llm.merge_and_unload()


def _peft_adapter_state(llm) -> dict:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(llm)


def load_pretrained(ckpt: str | os.PathLike, compressor: str | None = None,
                    compressor_params: dict[str, Any] | None = None, progress: bool = True, **overrides):
    """Build the model a checkpoint folder describes and load its weights. ``ckpt``: a folder, or the short name
    of a shipped checkpoint (``demo:stf-k2e1``, see ``model.shipped``). ``overrides``: ModelConfig fields."""
    ckpt = resolve_checkpoint(ckpt)
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
    cfg.validate()
    model = build_model(cfg, progress=progress)
    from .assets import apply_assets

    apply_assets(model, ckpt)  # the saved tokenizer and image processor
    model.processor.aspect = cfg.image_aspect  # the config's mode (an override included) wins over the file's
    load_weights(model, ckpt)
    model.eval()
    origin = meta.get("converted_from") or {}
    if origin.get("image_token_index") is not None:  # a folder converted from llava-hf / LLaVA
        from .image_tokens import accept_image_token

        accept_image_token(model, origin["image_token_index"])
    return model
