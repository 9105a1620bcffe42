"""The non-weight files of a compact-model folder, and self-contained folders.

Every folder written by ``save_pretrained`` carries (besides ``compactvlm.json`` and the safetensors weights):

- ``tokenizer/``: the model's tokenizer (``tokenizer.save_pretrained``), chat template included; loading
  uses it instead of the LLM's own tokenizer, so a pad token or template set on the model survives;
- ``preprocessor_config.json``: the image processor (made square by its ``aspect``: pad / resize / crop, see
  ``encoders.preprocessing``, at ``size`` with bicubic resampling; rescale to [0, 1], normalise with
  ``image_mean`` / ``image_std``), written with the field names of HF's image processors (``do_pad`` for pad,
  shortest-edge resize + centre crop for crop, a height/width resize otherwise) plus compactvlm's own
  ``compactvlm_processor`` (size, mean, std, aspect). A ``compactvlm_processor`` without ``aspect`` (written
  before the mode existed) reads as ``resize``, what those models were trained with.

With ``embed=True`` the folder is self-contained: the vision encoder and the LLM are written as HF folders
``encoder/`` and ``llm/`` (safetensors; ``llm/`` holds the tokenizer as well so it stands alone), and
``compactvlm.json`` names them by these relative paths. ``read_config`` resolves a relative ``encoder`` /
``llm`` against the checkpoint folder when that sub-folder exists there, so the folder can be moved or copied
and loads without the training config or the original model locations.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..encoders.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, LEGACY_ASPECT, PREPROCESSOR_CONFIG,
                                      aspect_of_hf_processor, read_preprocessor_config)
from ..errors import CompactVLMError
from .adapters import is_peft

TOKENIZER_DIR = "tokenizer"
ENCODER_DIR = "encoder"
LLM_DIR = "llm"


def processor_dict(processor) -> dict:
    size = int(processor.size)
    mean, std = [float(v) for v in processor.mean], [float(v) for v in processor.std]
    aspect = getattr(processor, "aspect", LEGACY_ASPECT)
    d = {
        "image_processor_type": "LlavaImageProcessor" if aspect == "pad" else "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": size} if aspect == "crop" else {"height": size, "width": size},
        "resample": 3,  # PIL bicubic
        "do_center_crop": aspect == "crop",
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "compactvlm_processor": {"size": size, "mean": mean, "std": std, "aspect": aspect},
    }
    if aspect == "crop":
        d["crop_size"] = {"height": size, "width": size}
    if aspect == "pad":
        d["do_pad"] = True
    return d


def read_processor(path: Path):
    """The ImageProcessor of a ``preprocessor_config.json``: compactvlm's own block when present (no ``aspect``
    in it: ``resize``, as such folders were written before the mode existed), else HF's fields."""
    from ..data.images import ImageProcessor

    d = read_preprocessor_config(path)
    if d is None:
        raise CompactVLMError(f"{path} not found", "re-save the checkpoint with save_pretrained()")
    own = d.get("compactvlm_processor")
    if own:
        return ImageProcessor(int(own["size"]), tuple(own["mean"]), tuple(own["std"]),
                              aspect=own.get("aspect", LEGACY_ASPECT))
    size = d.get("size", {})
    side = (size.get("height") or size.get("shortest_edge")) if isinstance(size, dict) else size
    if not side:
        raise CompactVLMError(f"{path} has no image size", "re-save the checkpoint with save_pretrained()")
    return ImageProcessor(int(side), tuple(d.get("image_mean", IMAGENET_MEAN)), tuple(d.get("image_std", IMAGENET_STD)),
                          aspect=aspect_of_hf_processor(d))


def write_assets(model, folder: Path, cfg: dict, embed: bool = False) -> None:
    """Write tokenizer/ and preprocessor_config.json (and encoder/, llm/ with ``embed``) into ``folder``;
    with ``embed`` point ``cfg``'s encoder/llm at them."""
    folder = Path(folder)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    proc = processor_dict(model.processor)
    (folder / PREPROCESSOR_CONFIG).write_text(json.dumps(proc, indent=2))
    if not embed:
        return
    llm = model.llm
    if is_peft(llm):
        raise CompactVLMError("cannot embed an LLM that still carries LoRA adapters",
                              "merge them first (model.llm = model.llm.merge_and_unload()) or save with embed=False")
    enc_dir = folder / ENCODER_DIR
    model.encoder.model.save_pretrained(enc_dir, safe_serialization=True)
    enc_proc = {**proc, "image_mean": list(model.encoder.image_mean), "image_std": list(model.encoder.image_std)}
    (enc_dir / PREPROCESSOR_CONFIG).write_text(json.dumps(enc_proc, indent=2))
    llm.save_pretrained(folder / LLM_DIR, safe_serialization=True)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder / LLM_DIR)
    cfg["encoder"], cfg["llm"] = ENCODER_DIR, LLM_DIR
    cfg["image_size"] = int(model.encoder.info.image_size)


def resolve_paths(cfg, ckpt: Path) -> None:
    """Point a relative ``encoder`` / ``llm`` of a ModelConfig at the checkpoint's own sub-folder, if present."""
    root = Path(ckpt).resolve()
    for name in ("encoder", "llm"):
        value = getattr(cfg, name)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (root / value / "config.json").exists():
            setattr(cfg, name, str(root / value))


def apply_assets(model, ckpt: Path) -> None:
    """Use the checkpoint's saved tokenizer and image processor, when it has them."""
    d = Path(ckpt)
    if (d / TOKENIZER_DIR).is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d / TOKENIZER_DIR)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.tokenizer = tok
    if (d / PREPROCESSOR_CONFIG).exists():
        model.processor = read_processor(d / PREPROCESSOR_CONFIG)
