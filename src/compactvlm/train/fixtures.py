"""Tiny offline stand-ins for training tests and smoke runs: HF model folders and a LLaVA JSON.

    enc_dir, llm_dir = write_tiny_models(tmp / "models")        # tiny DINOv2 + tiny Llama (+ tokenizer)
    train_json = write_llava_json(tmp / "data", n=16)           # random PNGs, questions about colours
    cfg.model = ModelConfig(encoder=str(enc_dir), llm=str(llm_dir), image_size=32)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_tiny_models(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    from ..testing import tiny_dinov2, tiny_llama, tiny_tokenizer

    root = Path(root)
    enc, llm = root / "encoder", root / "llm"
    if not (enc / "config.json").exists():
        tiny_dinov2(seed=seed).save_pretrained(enc)
    if not (llm / "config.json").exists():
        tok = tiny_tokenizer()
        tiny_llama(vocab_size=len(tok), seed=seed).save_pretrained(llm)
        tok.save_pretrained(llm)
    return enc, llm


_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def write_llava_json(root: str | Path, n: int = 16, seed: int = 0, size: int = 32, name: str = "train.json") -> Path:
    """``n`` samples: a noisy square of one colour; "what colour is in the image ?" -> the colour (LLaVA format,
    image paths relative to the JSON's folder)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(_COLOURS)
    records = []
    stem = Path(name).stem
    for i in range(n):
        c = names[int(rng.integers(len(names)))]
        arr = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        a, b = sorted(rng.integers(0, size, 2))
        arr[a : b + 4, a : b + 4] = _COLOURS[c]
        rel = f"images/{stem}_{i:04d}.png"
        Image.fromarray(arr).save(root / rel)
        records.append({"id": f"{stem}-{i}", "image": rel, "conversations": [
            {"from": "human", "value": "<image>\nwhat colour is in the image ?"},
            {"from": "gpt", "value": f"{c} ."}]})
    path = root / name
    path.write_text(json.dumps(records))
    return path


def tiny_train_config(root: str | Path, overrides: list[str] | tuple[str, ...] = (), n_train: int = 16, n_val: int = 8):
    """A ``TrainConfig`` for a seconds-long run on tiny random models and tiny colour data under ``root``."""
    from .config import load_train_config

    root = Path(root)
    enc, llm = write_tiny_models(root / "models")
    data = root / "data"
    train = data / "train.json"
    if not train.exists():
        write_llava_json(data, n_train, seed=0, name="train.json")
    val = data / "val.json"
    if not val.exists():
        write_llava_json(data, n_val, seed=1, name="val.json")
    base = [f"model.encoder={enc}", f"model.llm={llm}", "model.image_size=32", f"data.train={train}",
            f"data.val={val}", "optim.batch_size=4", "optim.per_device_batch_size=2", "optim.epochs=1",
            f"output_dir={root / 'run'}", "logging.progress=false", "device=cpu"]
    return load_train_config(None, base + list(overrides))
