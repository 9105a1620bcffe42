"""Frozen-encoder features kept for reuse: on disk (``FeatureStore``, one file per image named by its pixels), by
training (``FeatureCache``, by sample index: later epochs, validation, the grounding stage and the stage after it) and
by evaluation (``ImageFeatureCache``, by pixels, for ``evaluate.answer.Answerer``: the real-image pass, its blind
controls and the learning-curve checkpoints of a row all encode each test image once). Both run one lookup
(memory, then disk, then the encoder for what is still missing): ``_BlockLookup``.

Caching is valid only when the encoder is frozen, the compressor adds no tokens inside the encoder that the image
tokens attend to (VisToG's full-attention ablation) and does not read the image itself (``cacheable_features = False``
on the compressor class opts out), and no reduction runs except one that reads only the encoder's blocks
(``cacheable_features = True`` on the reduction class: random, avgpool, dart, divprune), whether set at test time or
active in training (``train.config.ReduceConfig``);
``check_cacheable`` says why not. Isolated extra tokens (VisToG) are cacheable: the image tokens' blocks are the plain
encoder's, so the caches keep every block input up to the last block read (``cached_layers``) and the extra tokens
run beside them from the cache (``HFVisionEncoder.extra_stream``). That is 12 blocks of DINOv2-S per image (4.7 MB in
fp32, 2.4 MB in bf16): training keeps them on disk only (``FeatureCache(memory=False)``, in the autocast dtype).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
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
    if comp.extra_tokens() is not None and comp.extra_attention != "isolated":
        return f"compressor {comp.registry_name!r} adds tokens inside the encoder that the image tokens attend to"
    if comp.extra_tokens() is not None and not vlm.encoder.splits_extra_tokens:
        return (f"compressor {comp.registry_name!r} adds tokens inside the encoder, whose blocks cannot run them "
                "beside cached image tokens")
    if not comp.cacheable_features:
        return f"compressor {comp.registry_name!r} reads the image, not only encoder features"
    red = vlm.reduction  # a training-free reduction: at test time, or active in training (train.config.ReduceConfig)
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


def cached_layers(vlm: nn.Module) -> list[int]:
    """The encoder blocks a cache keeps for ``vlm``: those its compressor and reduction read; with isolated extra
    tokens (VisToG) every block input up to the last of them as well (the extra tokens' keys and values)."""
    enc = vlm.encoder
    layers = sorted({enc.info.normalize_layer(l) for l in vlm.feature_layers()})
    if vlm.compressor.extra_tokens() is not None:
        return list(range(max(layers) + 1))
    return layers


def encode_from_features(vlm: nn.Module, hidden: dict[int, torch.Tensor], extra_state: dict | None = None) -> torch.Tensor:
    """Cached encoder blocks (``cached_layers``) -> compressor (or the model's cacheable reduction) -> (B, M, D_llm),
    as ``CompactVLM.encode_images`` after the encoder; isolated extra tokens run beside the cached blocks."""
    enc = vlm.encoder
    extra = vlm.compressor.extra_tokens()
    num_extra = 0
    if extra is not None:
        wanted = {enc.info.normalize_layer(l) for l in vlm.feature_layers()}
        hidden = enc.extra_stream(hidden, extra, wanted)  # {block: (B, P + H*W + X, C)}
        num_extra = extra.shape[-2]
    feats = VisionFeatures(hidden=hidden, grid=vlm.grid, num_prefix=enc.num_prefix, num_extra=num_extra, info=enc.info)
    feats.extra_state.update(encoder=enc)
    if extra_state:
        feats.extra_state.update(extra_state)
    return vlm.tokens_from_features(feats)  # the reduction's tokens when one is set (check_cacheable: only cacheable ones)


class _BlockLookup:
    """The lookup both caches run for a batch of images: memory first, then the disk store (a hit is kept in memory),
    then one encoder call for the images still missing, each distinct image once (kept in memory and written to the
    store). Subclasses say how memory is keyed and held (``_recall``, ``_keep``)."""

    #: the dtype features are kept in (None: the encoder's output dtype)
    dtype: torch.dtype | None = None

    def __init__(self):
        self.hits = self.encoded = 0  # images served from memory or disk / images encoded

    def _recall(self, key) -> dict[int, torch.Tensor] | None:
        raise NotImplementedError

    def _keep(self, key, feats: dict[int, torch.Tensor]) -> None:
        raise NotImplementedError

    def _gather(self, vlm: nn.Module, keys: list, pixel_values: torch.Tensor, layers: list[int],
                store: FeatureStore | None, store_key: Callable[[int], str],
                device: torch.device | None = None) -> list[dict[int, torch.Tensor]]:
        """{block: (S_tok, C)} on the CPU for each of the batch's images; ``keys[j]``: image j's memory key,
        ``store_key(j)``: its file name in ``store`` (asked only when the store is)."""
        first: dict = {}  # distinct key -> its first position in the batch
        for j, k in enumerate(keys):
            first.setdefault(k, j)
        got: dict = {}
        for k, j in first.items():
            f = self._recall(k)
            if f is None and store is not None:
                f = store.get(store_key(j), layers)
                if f is not None:
                    self._keep(k, f)
            if f is not None:
                got[k] = f
        self.hits += sum(k in got for k in keys)
        missing = [k for k in first if k not in got]
        if missing:
            pix = pixel_values[[first[k] for k in missing]]
            hidden = vlm.encoder(pix if device is None else pix.to(device), layers=layers).hidden  # {l: (n, S_tok, C)}
            for n, k in enumerate(missing):
                one = {l: hidden[l][n].detach().to("cpu", self.dtype).clone() for l in layers}  # (S_tok, C) each
                self._keep(k, one)
                got[k] = one
                if store is not None:
                    store.put(store_key(first[k]), one)
            self.encoded += len(missing)
        return [got[k] for k in keys]


class FeatureCache(_BlockLookup):
    """Training's cache: encoder blocks per sample index (CPU tensors), filled on first use, optionally backed by a
    :class:`FeatureStore` (``train.feature_cache_dir``), so later epochs, validation passes, the grounding stage and
    the stage after it run only compressor + LLM.

    Features are copied into preallocated blocks of ``CHUNK`` samples (one large allocation per block) instead of
    one small tensor per sample: thousands of small long-lived tensors interleaved with each step's large transient
    activations fragment the C heap, and a process caching 5,800 DINOv2-S images grew by ~2.9 MB per image instead
    of the 0.4 MB the features take.

    ``memory=False`` keeps nothing in memory (each batch's features come from ``store``, which it then needs): for
    features too large to hold for every sample, such as the 12 blocks VisToG's extra tokens read. ``dtype``: the
    dtype features are kept and stored in (None: the encoder's)."""

    CHUNK = 256

    def __init__(self, layers: list[int], store: FeatureStore | None = None, memory: bool = True,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if not memory and store is None:
            raise ValueError("a FeatureCache without memory needs a FeatureStore")
        self.layers = sorted(layers)
        self.store = store
        self.memory = memory
        self.dtype = dtype
        self.slot: dict[int, int] = {}  # sample index -> row in the blocks
        self.blocks: dict[int, list[torch.Tensor]] = {}  # layer -> blocks of (CHUNK, S, C)

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, i: int) -> bool:
        return i in self.slot

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for bs in self.blocks.values() for b in bs)

    def _keep(self, i: int, feats: dict[int, torch.Tensor]) -> None:
        if not self.memory:
            return
        row = len(self.slot)
        k, r = divmod(row, self.CHUNK)
        for l, t in feats.items():
            bs = self.blocks.setdefault(l, [])
            if k == len(bs):
                bs.append(torch.empty((self.CHUNK, *t.shape), dtype=t.dtype))  # (CHUNK, S, C)
            bs[k][r].copy_(t)
        self.slot[i] = row

    def _recall(self, i: int) -> dict[int, torch.Tensor] | None:
        if i not in self.slot:
            return None
        k, r = divmod(self.slot[i], self.CHUNK)
        return {l: self.blocks[l][k][r] for l in self.layers}

    @torch.no_grad()
    def features(self, vlm: nn.Module, index: torch.Tensor, pixel_values: torch.Tensor,
                 device: torch.device) -> dict[int, torch.Tensor]:
        """Sample indices (B,) + their pixels (B, 3, S, S) -> {block: (B, S_tok, C)} on ``device``."""
        store_key = functools.cache(lambda j: FeatureStore.key(pixel_values[j]))
        feats = self._gather(vlm, [int(i) for i in index], pixel_values, self.layers, self.store, store_key, device)
        return {l: torch.stack([f[l] for f in feats]).to(device) for l in self.layers}  # (B, S_tok, C)


class ImageFeatureCache(_BlockLookup):
    """Encoder blocks per image for inference, keyed by the image's preprocessed pixels and the encoder's
    ``store_tag``: in memory (least recently used dropped first beyond ``max_bytes``) and, with ``root``, on disk
    (a ``FeatureStore`` per tag, shared by processes: a study's curve checkpoints and the evaluation-only rows of a
    trained row read what its own evaluation wrote). Only for models ``check_cacheable(vlm, training=False)``
    accepts; the caller checks."""

    def __init__(self, root: str | Path | None = None, max_bytes: int = 1 << 30):
        super().__init__()
        self.root = Path(root) if root is not None else None
        self.max_bytes = max_bytes
        self.mem: OrderedDict[tuple[str, str], dict[int, torch.Tensor]] = OrderedDict()
        self.nbytes = 0
        self._tags: dict[tuple[int, torch.dtype], tuple[str, list[int]]] = {}
        self._stores: dict[str, FeatureStore] = {}

    def _tag(self, vlm: nn.Module) -> tuple[str, list[int]]:
        enc = vlm.encoder
        dtype = next(enc.parameters()).dtype
        if (id(vlm), dtype) not in self._tags:
            layers = cached_layers(vlm)
            self._tags[(id(vlm), dtype)] = (store_tag(vlm, layers, f"inference-{str(dtype).replace('torch.', '')}"),
                                            layers)
        return self._tags[(id(vlm), dtype)]

    def _recall(self, key: tuple[str, str]) -> dict[int, torch.Tensor] | None:
        f = self.mem.get(key)
        if f is not None:
            self.mem.move_to_end(key)
        return f

    def _keep(self, key: tuple[str, str], feats: dict[int, torch.Tensor]) -> None:
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
        hashes = [FeatureStore.key(p) for p in pixel_values]
        feats = self._gather(vlm, [(tag, h) for h in hashes], pixel_values, layers, store, hashes.__getitem__)
        return {l: torch.stack([f[l] for f in feats]).to(pixel_values.device) for l in layers}  # (B, S_tok, C)
