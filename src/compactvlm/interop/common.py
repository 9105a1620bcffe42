"""Pieces the LLaVA-family readers share: weight files read without running code, key surgery, the LLaVA-1.5
prompt format, and assembling a CompactVLM from parts.

Weights: ``*.safetensors`` files are preferred; ``pytorch_model*.bin`` / ``mm_projector.bin`` (torch pickles,
as the original LLaVA code writes them) are read with ``torch.load(..., weights_only=True)`` only, PyTorch's
restricted unpickler that accepts tensors and plain containers and refuses any other object. Nothing is ever
loaded with ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

from ..encoders.preprocessing import CLIP_MEAN, CLIP_STD  # LLaVA's CLIP tower's defaults
from ..errors import CompactVLMError

#: LLaVA-1.5's conversation format (``conv_vicuna_v1`` / ``conv_llava_v1`` of the LLaVA code: SeparatorStyle.TWO,
#: sep " ", sep2 "</s>"), as a chat template over string contents, BOS first:
#: ``<s>{system} USER: <image>\n{question} ASSISTANT: {answer}</s>USER: ... ASSISTANT:``.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAVA_V1_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + "' %}"
    "{% set turns = messages %}{% endif %}"
    "{{ system }} "
    "{% for m in turns %}{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
DTYPES = ("float32", "float16", "bfloat16")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompactVLMError(f"{path} not found", "pass the folder that holds the checkpoint's config.json") from None
    except json.JSONDecodeError as e:
        raise CompactVLMError(f"{path} is not valid JSON: {e}", "re-download the checkpoint") from None


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict through PyTorch's restricted unpickler (tensors and plain containers only)."""
    import pickle

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as e:
        raise CompactVLMError(
            f"{path} cannot be read as plain tensors with torch.load(weights_only=True): {str(e).splitlines()[0]}",
            "compactvlm never unpickles arbitrary objects; re-save the file as safetensors from a source you trust",
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CompactVLMError(f"{path} does not hold a flat state dict of tensors", "pass a weights file")
    return sd


def weight_files(folder: Path) -> list[Path]:
    """The model weight files of a HF-style folder: safetensors (index or files) first, else .bin shards."""
    folder = Path(folder)
    for index, suffix in (("model.safetensors.index.json", ".safetensors"), ("pytorch_model.bin.index.json", ".bin")):
        if (folder / index).exists():
            names = sorted(set(read_json(folder / index).get("weight_map", {}).values()))
            missing = [n for n in names if not (folder / n).exists()]
            if missing:
                raise CompactVLMError(f"{folder} lacks shard(s) {missing[:3]} named in {index}",
                                      "download every shard of the checkpoint")
            return [folder / n for n in names]
    st = sorted(p for p in folder.glob("*.safetensors"))
    if st:
        return st
    return sorted(p for p in folder.glob("pytorch_model*.bin"))


def read_weights(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)) if f.suffix == ".safetensors" else load_torch_file(f))
    return sd


def weight_keys(folder: Path) -> set[str]:
    """Tensor names of a folder's weights, without reading the tensors where an index or safetensors allows."""
    from safetensors import safe_open

    folder = Path(folder)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            return set(read_json(folder / index).get("weight_map", {}))
    keys: set[str] = set()
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as h:
                keys |= set(h.keys())
        else:
            keys |= set(load_torch_file(f))
    return keys


def sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def fit_prefix(sd: dict[str, torch.Tensor], own: Iterable[str], prefix: str) -> dict[str, torch.Tensor]:
    """Add or strip an optional key prefix (``vision_model.``: CLIPVisionModel keys differ across transformers
    versions) so that ``sd`` uses the same convention as the module's own keys."""
    own_has = any(k.startswith(prefix) for k in own)
    has = any(k.startswith(prefix) for k in sd)
    if own_has and not has:
        return {prefix + k: v for k, v in sd.items()}
    if has and not own_has:
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd


def load_exact(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, source: str,
               optional: Iterable[str] = ()) -> None:
    """load_state_dict that names every missing / unexpected / mis-shaped key in a CompactVLMError."""
    from ..model.checkpoint import _key_problems

    own = module.state_dict()
    optional = set(optional)
    problems = _key_problems({k: v for k, v in own.items() if k not in optional or k in sd}, sd)
    if problems:
        raise CompactVLMError(f"{what} weights in {source} do not fit: {problems}",
                              "is this checkpoint of the layout you named (--from)? see `compactvlm convert --help`")
    module.load_state_dict({**{k: own[k] for k in optional if k not in sd}, **sd}, strict=True)


def dtype_name(value: Any, default: str = "float32") -> str:
    if value is None:
        return default
    name = str(value).replace("torch.", "")
    if name not in DTYPES:
        raise CompactVLMError(f"dtype {value!r} is not supported", f"use one of {', '.join(DTYPES)}")
    return name


def source_dtype(cfg: dict) -> str:
    """The dtype a HF config says its weights are stored in (``torch_dtype``, or ``dtype`` since transformers 5)."""
    raw = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return raw if raw in DTYPES else "float32"


@contextlib.contextmanager
def _no_init():
    """Skip random initialisation of modules whose weights are loaded right after (big LLMs)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def build_llm(text_config, sd: dict[str, torch.Tensor], dtype: str, source: str, attn: str = "sdpa"):
    """A transformers causal LM from its config, with ``sd`` (HF causal-LM keys: ``model.*``, ``lm_head.*``)."""
    from transformers import AutoModelForCausalLM

    text_config._attn_implementation = attn
    with _no_init():
        llm = AutoModelForCausalLM.from_config(text_config, dtype=getattr(torch, dtype), attn_implementation=attn)
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}  # buffers old checkpoints saved
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    load_exact(llm, sd, "LLM", source, optional=("lm_head.weight",) if tied else ())
    if tied:
        llm.tie_weights()
    return llm.eval()


def build_vision(vision_config, sd: dict[str, torch.Tensor], source: str, attn: str = "sdpa"):
    """A CLIPVisionModel from its config with ``sd`` (keys with or without the ``vision_model.`` prefix)."""
    from transformers import CLIPVisionModel

    vision_config._attn_implementation = attn
    with _no_init():
        vision = CLIPVisionModel(vision_config)
    load_exact(vision, fit_prefix(sd, vision.state_dict(), "vision_model."), "vision tower", source)
    return vision.eval()


#: files of which at least one is in a folder that holds a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "spiece.model")


def has_tokenizer(folder) -> bool:
    return folder is not None and any((Path(folder) / n).is_file() for n in TOKENIZER_FILES)


def pick_tokenizer(explicit, candidates: Iterable, source: str, chat_template: str | None = LLAVA_V1_TEMPLATE):
    """The tokenizer of ``explicit`` (``--tokenizer``: it must hold one), else of the first candidate folder that
    holds tokenizer files (the checkpoint, then e.g. its base LLM folder); with none, a warning and ``None``: the
    model then runs on token ids (``forward``) but cannot build prompts or generate."""
    if explicit is not None:
        if not has_tokenizer(explicit):
            raise CompactVLMError(f"--tokenizer {explicit} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})",
                                  "pass the folder of the LLM's tokenizer (e.g. the base LLM's folder)")
        return load_tokenizer(Path(explicit), chat_template)
    for folder in candidates:
        if has_tokenizer(folder):
            return load_tokenizer(Path(folder), chat_template)
    warnings.warn(f"{source} has no tokenizer files: the model is read without a tokenizer (forward on token ids "
                  "works; prompts, generation, ask and eval need one). Pass --tokenizer DIR (tokenizer= in Python) "
                  "with the LLM's tokenizer to include it.", stacklevel=3)
    return None


def load_tokenizer(folder: Path, chat_template: str | None = LLAVA_V1_TEMPLATE):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        detail = " ".join(str(e).split())  # the whole message on one line (transformers' spans several)
        raise CompactVLMError(f"no usable tokenizer in {folder}: {detail}",
                              "pass a folder with complete tokenizer files (--tokenizer DIR)") from None
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


def assemble(vision, image_size: int, mean, std, compressor: str, params: dict, comp_sd: dict[str, torch.Tensor],
             llm, tokenizer, dtype: str, source: str, names: tuple[str, str], aspect: str = "resize"):
    """A CompactVLM (eval mode, frozen encoder) from a HF vision model, compressor weights, LLM and tokenizer;
    ``aspect``: how the source made images square (``encoders.preprocessing``)."""
    from ..compressors.base import create_compressor
    from ..data.images import ImageProcessor
    from ..encoders.hf import HFVisionEncoder
    from ..model.vlm import CompactVLM

    dt = getattr(torch, dtype)
    enc = HFVisionEncoder(vision, image_size=image_size, image_mean=mean, image_std=std)
    comp = create_compressor(compressor, enc=enc.info, llm_dim=llm.get_input_embeddings().embedding_dim, **params)
    load_exact(comp, comp_sd, "projector", source)
    model = CompactVLM(enc.to(dt), comp.to(dt), llm.to(dt), tokenizer, ImageProcessor(image_size, mean, std, aspect))
    model.config_dict = {"encoder": names[0], "llm": names[1], "image_size": int(image_size), "image_aspect": aspect,
                         "compressor": compressor,
                         "compressor_params": dict(params), "system_prompt": None, "dtype": dtype,
                         "attn_implementation": "sdpa"}
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    return model.eval()


def processor_stats(folder: Path, default_mean=CLIP_MEAN, default_std=CLIP_STD) -> tuple[tuple, tuple]:
    """(mean, std) of ``folder``'s preprocessor_config.json, CLIP's where it has none."""
    from ..encoders.preprocessing import norm_stats

    return norm_stats(folder, default_mean, default_std)


def llava_aspect(raw: dict) -> str:
    """How the original LLaVA code makes an image square for a config.json ``raw``: ``image_aspect_ratio: pad``
    -> ``pad`` (``expand2square`` with the mean colour, LLaVA-1.5's setting); anything else -> ``crop`` (the
    CLIP image processor alone: shortest-edge resize + centre crop)."""
    return "pad" if raw.get("image_aspect_ratio") == "pad" else "crop"
