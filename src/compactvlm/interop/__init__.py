"""Interoperability: read the checkpoints of other LLaVA code bases, write compact folders, plug into lmms-eval.

    compactvlm convert --from llava-hf|llava|llava-stf SRC --out DIR     # -> a self-contained compact folder
    compactvlm export --to llava-hf COMPACT --out DIR                     # -> LlavaForConditionalGeneration
    model = load_model(path)          # a compact folder, or any of the three layouts read directly (detected)

Layouts (one module each, documented there): ``llava-hf`` (transformers' LlavaForConditionalGeneration,
``llava_hf``), ``llava`` (the original LLaVA code's folders and ``mm_projector.bin``, ``llava_orig``) and
``llava-stf`` (the LLaVA-STF fork, ``llava_stf``); ``export_llava_hf`` writes the other way. Image positions in
``input_ids``: ``image_tokens``. The lmms-eval model plugin is ``lmms_eval_plugin``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import CompactVLMError

LAYOUTS = {"llava-hf": "llava_hf", "llava": "llava_orig", "llava-stf": "llava_stf"}


def _module(layout: str):
    if layout not in LAYOUTS:
        raise CompactVLMError(f"unknown checkpoint layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")
    return importlib.import_module(f"{__name__}.{LAYOUTS[layout]}")


def detect_layout(path) -> str:
    """``compactvlm``, ``llava-hf``, ``llava`` or ``llava-stf`` for a checkpoint folder."""
    from ..model.checkpoint import CONFIG_NAME
    from ..model.shipped import resolve_checkpoint
    from . import common

    p = resolve_checkpoint(path)  # a folder, or a shipped short name (demo:stf-k2e1)
    if (p / CONFIG_NAME).exists():
        return "compactvlm"
    if not (p / "config.json").exists():
        raise CompactVLMError(f"{p} is not a checkpoint folder (no {CONFIG_NAME} or config.json)",
                              "pass a compact folder or a llava-hf / LLaVA / LLaVA-STF checkpoint folder")
    raw = common.read_json(p / "config.json")
    if raw.get("model_type") == "llava" and "vision_config" in raw:
        return "llava-hf"
    if "mm_vision_tower" in raw or "mm_projector_type" in raw:
        keys = set(common.weight_keys(p))
        for name in ("mm_projector.bin", "mm_projector.safetensors"):
            if (p / name).exists():
                keys |= set(common.read_weights([p / name]))
        return "llava-stf" if any("mm_projector_crosslayer" in k for k in keys) else "llava"
    raise CompactVLMError(f"{p} is neither a compactvlm, llava-hf, LLaVA nor LLaVA-STF checkpoint",
                          "convert other models by hand; see `compactvlm convert --help`")


def read(layout: str, src, **kwargs):
    """Read a ``layout`` checkpoint folder as an in-memory CompactVLM (options: see the layout's ``read``)."""
    return _module(layout).read(src, **kwargs)


def load_model(path, layout: str | None = None, dtype: str | None = None, vision_tower=None, projector=None,
               model_base=None, progress: bool = False, tokenizer=None, **kwargs):
    """Load any supported folder: compact folders through ``load_pretrained`` (``kwargs``: its options), the
    LLaVA layouts converted in memory (``vision_tower`` / ``projector`` / ``model_base`` / ``tokenizer``: see
    ``llava_orig``). Folders of (or converted from) llava-hf / LLaVA accept their image token in ``input_ids``
    (``image_tokens``)."""
    from ..model.shipped import resolve_checkpoint

    path = resolve_checkpoint(path)
    layout = layout or detect_layout(path)
    if layout == "compactvlm":
        from ..model.checkpoint import load_pretrained

        if dtype is not None:
            kwargs["dtype"] = dtype
        if tokenizer is not None:
            raise CompactVLMError("tokenizer= applies to llava-hf / LLaVA folders only",
                                  "a compact folder uses its own tokenizer/ (re-convert with --tokenizer to change it)")
        return load_pretrained(path, progress=progress, **kwargs)  # accepts a converted folder's image token
    if kwargs:
        raise CompactVLMError(f"options {sorted(kwargs)} apply to compact folders only",
                              f"convert the {layout} folder first (compactvlm convert) to use them")
    return read(layout, path, dtype=dtype, vision_tower=vision_tower, projector=projector, model_base=model_base,
                tokenizer=tokenizer)


def convert(layout: str, src, out, dtype: str | None = "auto", vision_tower=None, projector=None,
            model_base=None, tokenizer=None) -> Path:
    """Write ``src`` (a ``layout`` folder) as a self-contained compact folder ``out``; ``dtype="auto"`` keeps the
    dtype the source stores its weights in."""
    from ..model.checkpoint import save_pretrained
    from . import common

    mod = _module(layout)
    src = Path(src)
    stored = mod.stored_dtype(src)
    dt = stored if dtype in (None, "auto") else common.dtype_name(dtype)
    model = mod.read(src, dtype=dt, vision_tower=vision_tower, projector=projector, model_base=model_base,
                     tokenizer=tokenizer)
    extra = {"converted_from": {"layout": layout, "source": str(src.resolve()), "source_dtype": stored,
                                "vision_tower": str(vision_tower) if vision_tower else None,
                                "projector": str(projector) if projector else None,
                                "model_base": str(model_base) if model_base else None,
                                "tokenizer": str(tokenizer) if tokenizer else None,
                                "has_tokenizer": model.tokenizer is not None,
                                "image_token_index": getattr(model, "image_token_index", None)}}
    return save_pretrained(model, out, extra=extra, embed=True)
