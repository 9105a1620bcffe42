"""Model shapes to benchmark: named presets, local folders, and the spec syntax of one benchmark row.

A ``Preset`` holds transformers *configs* (no weights) for the vision encoder and the LLM plus the image size,
so the same shapes can be built three ways (``build_backbone``):

- ``weights="meta"``: on the ``meta`` device, for FLOP counting (no memory, seconds even for 7B);
- ``weights="random"``: random initialisation on a real device, for timings (no trained weights needed);
- ``weights="real"``: the real weights (``default``: the packaged DINOv2-S + SmolLM2 via ``build_model``;
  a compactvlm checkpoint folder: ``load_pretrained``).

Presets (shapes from the models' published configs):
- ``llava-1.5-7b``: CLIP ViT-L/14-336 (1024 wide, 24 blocks, 16 heads, MLP 4096, patch 14, 336 px: 24x24 = 576
  patches) + Vicuna-7B (Llama: 4096 wide, 32 layers, 32 heads, MLP 11008, vocab 32000);
- ``default``: DINOv2-S/14 at 224 px (384 wide, 12 blocks, 6 heads, 16x16 = 256 patches) + SmolLM2-135M (576
  wide, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocab 49152, tied embeddings).
A path may name a compactvlm checkpoint folder (``compactvlm.json``) or an HF folder whose ``config.json`` has a
``vision_config`` and a ``text_config`` (e.g. a llava-hf checkpoint; shapes only, so random weights).

A benchmark row is ``COMPRESSOR[:k=v,...][+REDUCTION[:k=v,...]]``, e.g. ``stf:k=2,E=1`` or
``mlp2x_gelu+fastv:budget=144,k=2``; option values are Python literals (``parse_spec`` of the compressors).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CompactVLMError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Preset:
    name: str
    description: str
    vision_config: Any  # a transformers vision config (CLIPVisionConfig, Dinov2Config, SiglipVisionConfig)
    llm_config: Any  # a transformers causal-LM config (LlamaConfig, ...)
    image_size: int
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    #: where real weights come from: "packaged" (build_model's default), a checkpoint folder, or None (none offline)
    weights: str | None = None
    system_prompt: str | None = None

    def summary(self) -> dict[str, Any]:
        v, l = self.vision_config, self.llm_config
        return {
            "name": self.name,
            "description": self.description,
            "image_size": self.image_size,
            "vision": {"model_type": v.model_type, "hidden_size": v.hidden_size, "layers": v.num_hidden_layers,
                       "heads": v.num_attention_heads, "patch_size": v.patch_size},
            "llm": {"model_type": l.model_type, "hidden_size": l.hidden_size, "layers": l.num_hidden_layers,
                    "heads": l.num_attention_heads,
                    "kv_heads": getattr(l, "num_key_value_heads", None) or l.num_attention_heads,
                    "intermediate_size": getattr(l, "intermediate_size", None), "vocab_size": l.vocab_size,
                    "tie_word_embeddings": bool(getattr(l, "tie_word_embeddings", False))},
        }


def _llava_15_7b() -> Preset:
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              patch_size=14, image_size=336, hidden_act="quick_gelu", projection_dim=768)
    llm = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Preset("llava-1.5-7b", "CLIP ViT-L/14-336 + Vicuna-7B (LLaVA-1.5-7B shapes, 576 patch tokens)",
                  vision, llm, 336, CLIP_MEAN, CLIP_STD, weights=None)


def _default() -> Preset:
    return Preset("default", "DINOv2-S/14 at 224 px + SmolLM2-135M (the packaged offline default, 256 patch tokens)",
                  _default_vision_config(), _default_llm_config(), 224, IMAGENET_MEAN, IMAGENET_STD,
                  weights="packaged")


def _default_vision_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=518, layerscale_value=1.0)


def _default_llm_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


PRESETS = {"llava-1.5-7b": _llava_15_7b, "default": _default}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def resolve_model(spec: str) -> Preset:
    """A preset name, a compactvlm checkpoint folder, or an HF folder with vision_config + text_config."""
    if spec in PRESETS:
        return PRESETS[spec]()
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
        vision, mean, std = _default_vision_config(), IMAGENET_MEAN, IMAGENET_STD
    else:
        vision = AutoConfig.from_pretrained(cfg.encoder)
        vision = getattr(vision, "vision_config", vision)
        mean, std = _norm_stats(Path(cfg.encoder))
    llm = _default_llm_config() if cfg.llm == DEFAULT_LLM else AutoConfig.from_pretrained(cfg.llm)
    return Preset(str(path), f"compactvlm checkpoint {path.name} ({cfg.encoder} + {cfg.llm}, {cfg.compressor})",
                  vision, llm, cfg.image_size, mean, std, weights=str(path), system_prompt=cfg.system_prompt)


def _norm_stats(folder: Path) -> tuple[tuple, tuple]:
    pp = folder / "preprocessor_config.json"
    if pp.exists():
        d = json.loads(pp.read_text())
        return tuple(d.get("image_mean", IMAGENET_MEAN)), tuple(d.get("image_std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD


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
    mean, std = _norm_stats(path)
    return Preset(str(path), f"{cfg.model_type} shapes from {path.name} (configs only: random weights)",
                  vision, text, int(vision.image_size), mean, std, weights=None)


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


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CompactVLMError(f"device {device!r} is not a torch device", "use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompactVLMError("--device cuda was asked for but CUDA is not available here",
                              "run on a machine with a GPU, or use --device cpu (or --flops-only)")
    if dev.type not in ("cpu", "cuda", "meta"):
        raise CompactVLMError(f"device {device!r} is not supported by the bench", "use cpu or cuda")
    return dev


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


def available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def build_backbone(preset: Preset, device: str | torch.device = "meta", dtype: str = "float32",
                   weights: str = "meta", progress: bool = False) -> Backbone:
    from ..data.images import ImageProcessor
    from ..encoders.hf import HFVisionEncoder

    dt = torch_dtype(dtype)
    dev = torch.device("meta") if weights == "meta" else check_device(str(device))
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
    return Backbone(enc, llm, None, ImageProcessor(preset.image_size, preset.image_mean, preset.image_std), dev, dt,
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
