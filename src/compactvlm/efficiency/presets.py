"""Model shapes to benchmark: named presets, local folders, and the backbones the bench's rows share.

A ``Preset`` (``model.presets``, the one class for model shapes) holds transformers *configs* (no weights) for the
vision encoder and the LLM plus the image size, so the same shapes can be built three ways (``build_backbone``):

- ``weights="meta"``: on the ``meta`` device, for FLOP counting (no memory, seconds even for 7B);
- ``weights="random"``: random initialisation on a real device, for timings (no trained weights needed);
- ``weights="real"``: the real weights (``default``: the packaged DINOv2-S + SmolLM2 via ``build_model``;
  a compactvlm checkpoint folder: ``load_pretrained``).

Named presets: ``model.presets`` (``llava-1.5-7b``, ``default``).
A path may name a compactvlm checkpoint folder (``compactvlm.json``) or an HF folder whose ``config.json`` has a
``vision_config`` and a ``text_config`` (e.g. a llava-hf checkpoint; shapes only, so random weights).

A benchmark row is a spec of ``compactvlm.spec`` (``COMPRESSOR[:k=v,...][+REDUCTION[:k=v,...]]`` or a named
variant), e.g. ``stf:k=2,E=1``, ``stf_k2e1`` or ``mlp2x_gelu+fastv:budget=144,k=2``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..encoders.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, aspect_of_hf_processor, norm_stats,
                                      read_preprocessor_config)
from ..errors import CompactVLMError
from .memory import available_bytes
from ..model.presets import (PRESETS, Preset, default_llm_config, default_vision_config,  # noqa: F401 (re-exported)
                             get_preset, preset_names)

DTYPES = ("float32", "bfloat16", "float16")


def resolve_model(spec: str) -> Preset:
    """A preset name, a compactvlm checkpoint folder, or an HF folder with vision_config + text_config."""
    if spec in PRESETS:
        return get_preset(spec)
    path = Path(spec)
    if not path.is_dir():
        raise CompactVLMError(f"--model {spec!r} is neither a preset nor a folder",
                              f"use one of {', '.join(preset_names())}, or the path of a compactvlm checkpoint or a "
                              "local HF folder whose config.json has vision_config and text_config")
    if (path / "compactvlm.json").exists():
        return _from_checkpoint(path)
    if (path / "config.json").exists():
        return _from_hf_folder(path)
    raise CompactVLMError(f"{path} has neither compactvlm.json nor config.json",
                          "point --model at a compactvlm checkpoint or an HF (llava-style) model folder")


def _from_checkpoint(path: Path) -> Preset:
    from ..model.build import DEFAULT_ENCODER, DEFAULT_LLM
    from ..model.checkpoint import read_config
    from transformers import AutoConfig

    cfg, _ = read_config(path)
    if cfg.encoder == DEFAULT_ENCODER:
        vision, mean, std = default_vision_config(), IMAGENET_MEAN, IMAGENET_STD
    else:
        vision = AutoConfig.from_pretrained(cfg.encoder)
        vision = getattr(vision, "vision_config", vision)
        mean, std = norm_stats(cfg.encoder)
    llm = default_llm_config() if cfg.llm == DEFAULT_LLM else AutoConfig.from_pretrained(cfg.llm)
    return Preset(str(path), f"compactvlm checkpoint {path.name} ({cfg.encoder} + {cfg.llm}, {cfg.compressor})",
                  vision, llm, cfg.image_size, mean, std, image_aspect=cfg.image_aspect, weights=str(path),
                  system_prompt=cfg.system_prompt)


def _from_hf_folder(path: Path) -> Preset:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (ValueError, OSError) as e:
        raise CompactVLMError(f"cannot read {path / 'config.json'}: {e}", "give a transformers model folder") from None
    vision, text = getattr(cfg, "vision_config", None), getattr(cfg, "text_config", None)
    if vision is None or text is None:
        raise CompactVLMError(f"{path} holds a {cfg.model_type!r} config without vision_config and text_config",
                              "give a vision-language (llava-style) folder, a compactvlm checkpoint, or a preset")
    mean, std = norm_stats(path)
    return Preset(str(path), f"{cfg.model_type} shapes from {path.name} (configs only: random weights)",
                  vision, text, int(vision.image_size), mean, std,
                  image_aspect=aspect_of_hf_processor(read_preprocessor_config(path)), weights=None)


# ---- one benchmark row -----------------------------------------------------------------------------------
from ..spec import MethodSpec as BenchSpec  # noqa: E402 - one bench row: the library's one spec syntax


# ---- building --------------------------------------------------------------------------------------------
@dataclass
class Backbone:
    """The frozen parts shared by every row: encoder, LLM, tokenizer, processor (one copy in memory)."""

    encoder: Any
    llm: Any
    tokenizer: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    weights: str  # "meta" | "random" | "real"
    system_prompt: str | None = None
    #: (compressor name, params, module) of a loaded checkpoint, reused by a matching row
    loaded_compressor: tuple[str, dict, Any] | None = None


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise CompactVLMError(f"dtype {name!r} is not supported", f"use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def _vision_class(cfg):
    from transformers import CLIPVisionModel, Dinov2Model, SiglipVisionModel

    kinds = {"clip_vision_model": CLIPVisionModel, "dinov2": Dinov2Model, "siglip_vision_model": SiglipVisionModel}
    if cfg.model_type not in kinds:
        raise CompactVLMError(f"vision config of type {cfg.model_type!r} is not supported by the bench",
                              "use a CLIP, SigLIP or DINOv2 vision encoder")
    return kinds[cfg.model_type]


def _from_configs(preset: Preset, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    vcfg, lcfg = copy.deepcopy(preset.vision_config), copy.deepcopy(preset.llm_config)
    vcfg._attn_implementation = "sdpa"
    with torch.device(device):
        vision = _vision_class(vcfg)._from_config(vcfg, dtype=dtype, attn_implementation="sdpa")
        llm = AutoModelForCausalLM.from_config(lcfg, dtype=dtype, attn_implementation="sdpa")
    return vision.eval(), llm.eval()


def parameter_bytes(preset: Preset, dtype: torch.dtype) -> int:
    """Bytes of the encoder + LLM weights in ``dtype`` (counted on the meta device)."""
    vision, llm = _from_configs(preset, torch.device("meta"), dtype)
    return sum(p.numel() * p.element_size() for m in (vision, llm) for p in m.parameters())


def build_backbone(preset: Preset, device: str | torch.device = "meta", dtype: str = "float32",
                   weights: str = "meta", progress: bool = False) -> Backbone:
    from ..data.images import ImageProcessor
    from ..encoders.hf import HFVisionEncoder

    dt = torch_dtype(dtype)
    from ..runtime import check_device

    dev = torch.device("meta") if weights == "meta" else check_device(device, allow_meta=True)
    if weights == "real":
        return _real_backbone(preset, dev, dtype, progress)
    if weights not in ("meta", "random"):
        raise CompactVLMError(f"weights={weights!r}", "use meta, random or real")
    if weights == "random":
        need, have = parameter_bytes(preset, dt), available_bytes(dev)
        if have is not None and need > 0.8 * have:
            raise CompactVLMError(
                f"the {preset.name} shapes need {need / 2**30:.1f} GiB of weights in {dtype} but only "
                f"{have / 2**30:.1f} GiB are free on {dev}",
                "use --flops-only (FLOPs on the meta device, no memory), bfloat16, or a larger device (--device cuda)")
    vision, llm = _from_configs(preset, dev, dt)
    enc = HFVisionEncoder(vision, image_size=preset.image_size, image_mean=preset.image_mean, image_std=preset.image_std)
    return Backbone(enc, llm, None, ImageProcessor(preset.image_size, preset.image_mean, preset.image_std,
                                                   preset.image_aspect), dev, dt,
                    weights, preset.system_prompt)


def _real_backbone(preset: Preset, dev: torch.device, dtype: str, progress: bool) -> Backbone:
    from ..model.build import ModelConfig, build_model

    if preset.weights is None:
        raise CompactVLMError(f"no real weights are available offline for {preset.name!r}",
                              "add --random-weights (timings need no trained weights) or --flops-only")
    if preset.weights == "packaged":
        model = build_model(ModelConfig(dtype=dtype), progress=progress)
        loaded = None
    else:
        from ..model.checkpoint import load_pretrained

        model = load_pretrained(preset.weights, progress=progress, dtype=dtype)
        loaded = (model.compressor.registry_name, dict(model.compressor.params), model.compressor)
    model.to(dev)
    return Backbone(model.encoder, model.llm, model.tokenizer, model.processor, dev, torch_dtype(dtype), "real",
                    model.system_prompt, loaded)


def build_vlm(backbone: Backbone, spec: BenchSpec):
    """A CompactVLM for one row over the shared backbone (fresh random compressor unless a loaded one matches)."""
    from ..compressors.base import create_compressor
    from ..model.vlm import CompactVLM
    from ..registry import REDUCTIONS

    lc = backbone.loaded_compressor
    if lc is not None and lc[0] == spec.compressor and (not spec.compressor_params or spec.compressor_params == lc[1]):
        comp = lc[2]
    else:
        with torch.device(backbone.device):
            comp = create_compressor(spec.compressor, enc=backbone.encoder.info,
                                     llm_dim=backbone.llm.get_input_embeddings().embedding_dim, **spec.compressor_params)
        comp = comp.to(backbone.dtype)
    model = CompactVLM(backbone.encoder, comp, backbone.llm, backbone.tokenizer, backbone.processor,
                       system_prompt=backbone.system_prompt)
    if spec.reduction:
        cls = REDUCTIONS.get(spec.reduction)
        try:
            model.reduction = cls(model=model, **spec.reduction_params)
        except TypeError as e:
            raise CompactVLMError(f"bad option for reduction {spec.reduction!r}: {e}",
                                  "give its options as NAME:key=value, e.g. visionzip:budget=64") from None
    model.num_image_tokens()  # validates the budget against the grid
    return model.eval()
