"""Named model shapes: the one ``Preset`` (vision encoder + LLM configs, no weights) used by ``compactvlm info``'s
parameter table, the bench (FLOPs on ``meta``, timings on random weights) and anything else that needs a model's
shape without loading it.

Presets (shapes from the models' published configs):
- ``llava-1.5-7b``: CLIP ViT-L/14-336 (1024 wide, 24 blocks, 16 heads, MLP 4096, patch 14, 336 px: 24x24 = 576
  patches) + Vicuna-7B (Llama: 4096 wide, 32 layers, 32 heads, MLP 11008, vocab 32000);
- ``default``: DINOv2-S/14 at 224 px (384 wide, 12 blocks, 6 heads, 16x16 = 256 patches) + SmolLM2-135M (576
  wide, 30 layers, 9 heads, 3 KV heads, MLP 1536, vocab 49152, tied embeddings).
``efficiency.presets.resolve_model`` also makes a ``Preset`` from a compactvlm checkpoint or an HF llava-style
folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..encoders.base import EncoderInfo
from ..encoders.preprocessing import CLIP_MEAN, CLIP_STD, DEFAULT_ASPECT, IMAGENET_MEAN, IMAGENET_STD
from ..errors import CompactVLMError


@dataclass
class Preset:
    name: str
    description: str
    vision_config: Any  # a transformers vision config (CLIPVisionConfig, Dinov2Config, SiglipVisionConfig)
    llm_config: Any  # a transformers causal-LM config (LlamaConfig, ...)
    image_size: int
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    #: how an image becomes square (``encoders.preprocessing.ASPECTS``; LLaVA-1.5 pads)
    image_aspect: str = DEFAULT_ASPECT
    #: where real weights come from: "packaged" (build_model's default), a checkpoint folder, or None (none offline)
    weights: str | None = None
    system_prompt: str | None = None

    @property
    def encoder_info(self) -> EncoderInfo:
        """What a compressor sizes itself by (``HFVisionEncoder.info`` of this shape, without building it)."""
        v = self.vision_config
        return EncoderInfo(hidden_size=int(v.hidden_size), num_layers=int(v.num_hidden_layers),
                           patch_size=int(v.patch_size), image_size=int(self.image_size),
                           has_cls="siglip" not in str(v.model_type), num_heads=int(v.num_attention_heads))

    @property
    def llm_dim(self) -> int:
        return int(self.llm_config.hidden_size)

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder_info.grid

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
                  default_vision_config(), default_llm_config(), 224, IMAGENET_MEAN, IMAGENET_STD,
                  weights="packaged")


def default_vision_config():
    """The packaged DINOv2-S/14's config (``zoo.dinov2_onnx``)."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=518, layerscale_value=1.0)


def default_llm_config():
    """The packaged SmolLM2-135M-Instruct's config (``zoo.smollm2``)."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


#: name -> builder (configs are built on demand: importing this module does not import transformers)
PRESETS: dict[str, Callable[[], Preset]] = {"llava-1.5-7b": _llava_15_7b, "default": _default}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CompactVLMError(f"unknown model preset {name!r}", f"use one of {', '.join(preset_names())}")
    return PRESETS[name]()
