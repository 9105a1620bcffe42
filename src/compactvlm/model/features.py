"""Frozen-encoder features kept for reuse: on disk (``FeatureStore``, one file per image named by its pixels), by
training (``train.objective.FeatureCache``: later epochs, validation, the grounding stage and the stage after it) and
by evaluation (``evaluate.answer.Answerer``: the real-image pass, its blind controls and the learning-curve
checkpoints of a row all encode each test image once).

Caching is valid only when the encoder is frozen, the compressor adds no tokens inside the encoder (VisToG) and
does not read the image itself (``cacheable_features = False`` on the compressor class opts out), and no test-time
reduction runs, except at inference one that reads only the encoder's blocks (``cacheable_features = True`` on the
reduction class: random, avgpool, dart, divprune); ``check_cacheable`` says why not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..encoders.base import VisionFeatures


def check_cacheable(vlm: nn.Module, training: bool = True) -> str | None:
    """None if frozen-encoder features can be cached for this model, else the reason they cannot. ``training``:
    the encoder must also be frozen in this stage (at inference nothing is trained)."""
    if training and any(p.requires_grad for p in vlm.encoder.parameters()):
        return "the encoder is trained in this stage"
    comp = vlm.compressor
    if comp.extra_tokens() is not None:
        return f"compressor {comp.registry_name!r} adds tokens inside the encoder"
    if not comp.cacheable_features:
        return f"compressor {comp.registry_name!r} reads the image, not only encoder features"
    red = getattr(vlm, "reduction", None)
    if red is not None and training:
        return "a test-time reduction is set"
    if red is not None and (red.in_llm or not red.cacheable_features):
        return f"reduction {red.registry_name!r} reads more than the encoder's blocks"
    return None


class FeatureStore:
    """Frozen-encoder features on disk, shared by runs: one safetensors file per image, named by the SHA-1 of its
    preprocessed pixels (so the image's content, size, aspect handling and normalisation are all in the name), in a
    folder named by ``tag`` (the encoder, a fingerprint of its weights, the layers and the autocast precision).
    A grounding stage and the stage 2 after it, and every row of a study with the same encoder, encode each image
    once. Writes go to a temporary file renamed into place, so concurrent runs never read a partial file."""

    def __init__(self, root: str | Path, tag: str):
        self.dir = Path(root) / tag
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.written = 0

    @staticmethod
    def key(pixels: torch.Tensor) -> str:
        return hashlib.sha1(pixels.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()

    def get(self, key: str, layers: list[int]) -> dict[int, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.dir / f"{key}.safetensors"
        if not path.is_file():
            return None
        sd = load_file(str(path))
        if any(f"layer{l}" not in sd for l in layers):
            return None
        self.hits += 1
        return {l: sd[f"layer{l}"] for l in layers}

    def put(self, key: str, feats: dict[int, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.dir / f"{key}.safetensors"
        if path.exists():
            return
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        save_file({f"layer{l}": t.contiguous() for l, t in feats.items()}, str(tmp))
        os.replace(tmp, path)
        self.written += 1


def store_tag(vlm: nn.Module, layers: list[int], precision: str) -> str:
    """The folder name of a :class:`FeatureStore`: what, besides the pixels, decides the features — the encoder's
    class and a fingerprint of its weights (its first and last two tensors; the name or path it was loaded from
    does not matter), the layers and the precision."""
    h = hashlib.sha1()
    h.update(json.dumps({"layers": sorted(layers), "precision": precision}).encode())
    params = list(vlm.encoder.named_parameters())
    for name, prm in (params[:2] + params[-2:]) if params else []:
        h.update(name.encode())
        h.update(prm.detach().float().contiguous().cpu().numpy().tobytes())
    return f"{type(vlm.encoder).__name__}-{h.hexdigest()[:16]}"


def encode_from_features(vlm: nn.Module, hidden: dict[int, torch.Tensor], extra_state: dict | None = None) -> torch.Tensor:
    """Cached encoder blocks -> compressor (or the model's cacheable reduction) -> (B, M, D_llm), as
    ``CompactVLM.encode_images`` after the encoder."""
    enc = vlm.encoder
    feats = VisionFeatures(hidden=hidden, grid=vlm.grid, num_prefix=enc.num_prefix, num_extra=0, info=enc.info)
    feats.extra_state.update(encoder=enc)
    if extra_state:
        feats.extra_state.update(extra_state)
    return vlm.tokens_from_features(feats)  # a reduction only at inference (check_cacheable refuses it in training)


class ImageFeatureCache:
    """Encoder blocks per image for inference, keyed by the image's preprocessed pixels and the encoder's
    ``store_tag``: in memory (least recently used dropped first beyond ``max_bytes``) and, with ``root``, on disk
    (a ``FeatureStore`` per tag, shared by processes: a study's curve checkpoints and the evaluation-only rows of a
    trained row read what its own evaluation wrote). Only for models ``check_cacheable(vlm, training=False)``
    accepts; the caller checks."""

    def __init__(self, root: str | Path | None = None, max_bytes: int = 1 << 30):
        self.root = Path(root) if root is not None else None
        self.max_bytes = max_bytes
        self.mem: OrderedDict[tuple[str, str], dict[int, torch.Tensor]] = OrderedDict()
        self.nbytes = 0
        self.hits = self.encoded = 0
        self._tags: dict[tuple[int, torch.dtype], tuple[str, list[int]]] = {}
        self._stores: dict[str, FeatureStore] = {}

    def _tag(self, vlm: nn.Module) -> tuple[str, list[int]]:
        enc = vlm.encoder
        dtype = next(enc.parameters()).dtype
        if (id(vlm), dtype) not in self._tags:
            layers = sorted({enc.info.normalize_layer(l) for l in vlm.feature_layers()})  # as encoder_features
            self._tags[(id(vlm), dtype)] = (store_tag(vlm, layers, f"inference-{str(dtype).replace('torch.', '')}"),
                                            layers)
        return self._tags[(id(vlm), dtype)]

    def _remember(self, key: tuple[str, str], feats: dict[int, torch.Tensor]) -> None:
        self.mem[key] = feats
        self.nbytes += sum(t.numel() * t.element_size() for t in feats.values())
        while self.nbytes > self.max_bytes and len(self.mem) > 1:
            _, old = self.mem.popitem(last=False)
            self.nbytes -= sum(t.numel() * t.element_size() for t in old.values())

    @torch.no_grad()
    def hidden(self, vlm: nn.Module, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """pixels (B, 3, S, S) -> {block: (B, S_tok, C)} on the pixels' device; encodes only the images not cached."""
        tag, layers = self._tag(vlm)
        store = None
        if self.root is not None:
            store = self._stores.get(tag) or self._stores.setdefault(tag, FeatureStore(self.root, tag))
        keys = [FeatureStore.key(p) for p in pixel_values]
        got: dict[int, dict[int, torch.Tensor]] = {}
        for j, k in enumerate(keys):
            f = self.mem.get((tag, k))
            if f is None and store is not None:
                f = store.get(k, layers)
                if f is not None:
                    self._remember((tag, k), f)
            if f is not None:
                self.mem.move_to_end((tag, k))
                got[j] = f
                self.hits += 1
        missing = [j for j in range(len(keys)) if j not in got]
        if missing:
            feats = vlm.encoder(pixel_values[missing], layers=layers)  # only the images not cached
            for n, j in enumerate(missing):
                one = {l: feats.hidden[l][n].detach().cpu().clone() for l in layers}  # (S_tok, C) each
                got[j] = one
                self._remember((tag, keys[j]), one)
                if store is not None:
                    store.put(keys[j], one)
            self.encoded += len(missing)
        dev = pixel_values.device
        return {l: torch.stack([got[j][l] for j in range(len(keys))]).to(dev) for l in layers}  # (B, S_tok, C)
