"""Any HF ViT (DINOv2, CLIP, SigLIP) as a VisionEncoder that returns chosen blocks and accepts extra tokens.

The blocks are HF's own modules, called one by one (no fork of transformers' modeling code), so an
attention mask can be handed to every block through HF's attention interface; SDPA stays in use.
Extra tokens (VisToG's semantic tokens) are appended after the patch embedding; with
``extra_attention="isolated"`` the image tokens (prefix + patches) cannot attend to them (VisToG Eq. 5).

Isolated extra tokens run as two streams (``extra_stream``): the image tokens through the plain blocks — exactly
the encoder without extra tokens, so with a frozen encoder autograd keeps none of it — and the extra tokens through
the same blocks' weights as queries over the image tokens' keys and values plus their own. Equal to one masked run
of the concatenation (tested), at a fraction of its cost in training: the masked run's backward goes through every
image token of every block, since the extra tokens' gradients reach the image tokens' keys and values. In
``forward`` the image tokens' keys and values are the image run's own (taken from the key and value projections
as they run), so the extra stream adds only the extra tokens' FLOPs: fewer than the masked run, whose image tokens
also score the masked extra keys (tested); from a cache of block inputs they are computed again. The extra
stream reads the blocks' parts (``BlockParts``) for DINOv2, CLIP and SigLIP layers as transformers names them;
layers it does not know (or with dropout in training mode) run the masked concatenation as before.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CompactVLMError
from ..hf_compat import UPGRADE, takes_attention_mask, version
from .base import EncoderInfo, VisionFeatures
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD

ExtraAttention = Literal["isolated", "full"]


def _stochastic(block: nn.Module, attn: nn.Module | None) -> bool:
    """Whether ``block`` in training mode drops anything: a dropout module, drop-path or attention dropout above 0."""
    for m in block.modules():
        if isinstance(m, nn.Dropout) and m.p > 0 or float(getattr(m, "drop_prob", 0.0) or 0.0) > 0:
            return True
    rates = (getattr(attn, n, 0.0) for n in ("attention_dropout", "dropout"))
    return any(isinstance(r, float) and r > 0 for r in rates)


@dataclass(frozen=True)
class BlockParts:
    """A pre-norm ViT block's pieces, for running queries over keys and values of other tokens:
    ``x + ls1(o(attn(q(norm1 x), k(norm1 kv), v(norm1 kv))))``, then ``x + ls2(mlp(norm2 x))``."""

    norm1: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    heads: int
    scale: float
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module

    @staticmethod
    def of(block: nn.Module) -> "BlockParts | None":
        """The parts of a DINOv2 / CLIP / SigLIP layer of the installed transformers, or None for another layout
        (or one in training mode with dropout or drop-path, which this does not reproduce)."""
        attn = getattr(block, "attention", None) or getattr(block, "self_attn", None)
        if block.training and _stochastic(block, attn):
            return None
        names = ("q_proj", "k_proj", "v_proj")
        if attn is None or not all(isinstance(getattr(attn, n, None), nn.Linear) for n in names):
            return None
        heads = getattr(attn, "num_attention_heads", None) or getattr(attn, "num_heads", None)
        scale = getattr(attn, "scaling", None) or getattr(attn, "scale", None)
        o = getattr(attn, "o_proj", None) or getattr(attn, "out_proj", None)
        if hasattr(block, "norm1"):  # DINOv2: layer scales, drop-path (identity in eval)
            norm1, norm2, ls1, ls2 = block.norm1, block.norm2, block.layer_scale1, block.layer_scale2
        elif hasattr(block, "layer_norm1"):  # CLIP, SigLIP
            norm1, norm2, ls1, ls2 = block.layer_norm1, block.layer_norm2, nn.Identity(), nn.Identity()
        else:
            return None
        if not heads or not scale or o is None or not hasattr(block, "mlp"):
            return None
        return BlockParts(norm1, attn.q_proj, attn.k_proj, attn.v_proj, o, int(heads), float(scale), ls1, norm2,
                          block.mlp, ls2)

    def extra_step(self, img: torch.Tensor, extra: torch.Tensor,
                   img_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One block for the extra tokens: image tokens' block input (B, S, C), extra tokens' (B, X, C) ->
        extra tokens' block output (B, X, C). The image tokens do not see the extra tokens (isolated).
        ``img_kv``: the image tokens' keys and values of this block, each (B, S, C_kv), where the image run
        computed them already (``forward``); else they are computed here from ``img`` (a cache holds block inputs)."""
        b, x, c = extra.shape
        n_ext = self.norm1(extra)  # (B, X, C)
        if img_kv is None:
            kv_in = torch.cat([self.norm1(img), n_ext], dim=1)  # (B, S + X, C)
            k, v = self.k(kv_in), self.v(kv_in)  # (B, S + X, C_kv)
        else:
            k_ext, v_ext = self.k(n_ext), self.v(n_ext)  # (B, X, C_kv)
            k = torch.cat([img_kv[0].to(k_ext.dtype), k_ext], dim=1)  # (B, S + X, C_kv)
            v = torch.cat([img_kv[1].to(v_ext.dtype), v_ext], dim=1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, H*d) -> (B, H, T, d)
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(n_ext)), heads(k), heads(v)
        att = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=self.scale)  # (B, H, X, d)
        att = att.transpose(1, 2).reshape(b, x, -1)  # (B, X, H*d)
        extra = extra + self.ls1(self.o(att))
        return extra + self.ls2(self.mlp(self.norm2(extra)))  # (B, X, C)


@contextmanager
def _capture_kv(parts: Sequence[BlockParts]) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """{block i (1-based): (keys, values)} of the next run through these blocks, each (B, S, C_kv), taken from
    the blocks' own key and value projections (forward hooks, removed on exit). A block whose projections ran
    other than once in that run (a layout this does not expect) is left out, and the extra stream computes its
    keys and values itself."""
    seen: dict[int, dict[str, list[torch.Tensor]]] = {}
    handles = []
    for i, part in enumerate(parts, start=1):
        for name, proj in (("k", part.k), ("v", part.v)):
            def keep(_m, _inp, out, i=i, name=name):
                seen.setdefault(i, {"k": [], "v": []})[name].append(out)
            handles.append(proj.register_forward_hook(keep))
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    try:
        yield kv
    finally:
        for h in handles:
            h.remove()
    for i, got in seen.items():
        if len(got["k"]) == 1 and len(got["v"]) == 1:
            kv[i] = (got["k"][0], got["v"][0])


class HFVisionEncoder(nn.Module):
    def __init__(self, model: nn.Module, image_size: int | None = None,
                 image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.model = model
        cfg = model.config
        self.family = cfg.model_type
        core = getattr(model, "vision_model", model)
        self.core = core
        if self.family in ("dinov2", "dinov2_with_registers"):
            self._embed = core.embeddings
            self._pre = nn.Identity()
            self.blocks = core.encoder.layer
            self.num_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        elif self.family in ("clip_vision_model", "clip"):
            self._embed = core.embeddings
            self._pre = core.pre_layrnorm
            self.blocks = core.encoder.layers
            self.num_prefix = 1
        elif self.family in ("siglip_vision_model", "siglip", "siglip2_vision_model"):
            self._embed = core.embeddings
            self._pre = nn.Identity()
            self.blocks = core.encoder.layers
            self.num_prefix = 0
        else:
            raise CompactVLMError(
                f"vision encoder type {self.family!r} is not supported",
                "use a DINOv2, CLIP or SigLIP vision model",
            )
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.info = EncoderInfo(
            hidden_size=cfg.hidden_size,
            num_layers=len(self.blocks),
            patch_size=cfg.patch_size,
            image_size=int(image_size or cfg.image_size),
            has_cls=self.num_prefix > 0,
            num_heads=cfg.num_attention_heads,
        )

    @property
    def blocks_take_mask(self) -> bool:
        """Whether the blocks take an attention mask (DINOv2's do only in recent transformers; hf_compat)."""
        return takes_attention_mask(self.blocks[0])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding (+ CLIP pre-norm): (B, P + H*W, C)."""
        if self.family.startswith("dinov2"):
            return self._pre(self._embed(pixel_values))
        kw = {"interpolate_pos_encoding": True} if pixel_values.shape[-1] != self.info.image_size else {}
        return self._pre(self._embed(pixel_values, **kw))

    def grid_of(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        p = self.info.patch_size
        return pixel_values.shape[-2] // p, pixel_values.shape[-1] // p

    @staticmethod
    def isolation_mask(num_image: int, num_extra: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Additive mask (1, 1, S, S): image rows may not see extra columns (VisToG Eq. 5)."""
        s = num_image + num_extra
        mask = torch.zeros(1, 1, s, s, dtype=dtype, device=device)
        mask[:, :, :num_image, num_image:] = torch.finfo(dtype).min
        return mask

    def forward(
        self,
        pixel_values: torch.Tensor,
        layers: Sequence[int] = (-2,),
        extra_tokens: torch.Tensor | None = None,
        extra_attention: ExtraAttention = "isolated",
    ) -> VisionFeatures:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise CompactVLMError(
                f"pixel_values must be (B, 3, H, W), got {tuple(pixel_values.shape)}",
                "preprocess images with the model's image processor",
            )
        p = self.info.patch_size
        if pixel_values.shape[-1] % p or pixel_values.shape[-2] % p:
            raise CompactVLMError(
                f"image size {tuple(pixel_values.shape[-2:])} is not a multiple of the patch size {p}",
                f"resize to a multiple of {p} (default {self.info.image_size})",
            )
        wanted = {self.info.normalize_layer(l) for l in layers}
        if extra_tokens is not None and extra_attention not in ("isolated", "full"):
            raise CompactVLMError(f"unknown extra_attention {extra_attention!r}", "use 'isolated' or 'full'")
        h = self.embed(pixel_values.to(self.dtype))  # (B, P + H*W, C)
        parts = self.stream_parts() if extra_tokens is not None and extra_attention == "isolated" else None
        if parts is not None:
            last = max(wanted)
            with _capture_kv(parts[:last]) as image_kv:  # the image run's keys and values, reused by the extra stream
                image = self._run(h, None, set(range(last + 1)))  # block inputs 0..last-1 and the outputs wanted
            hidden = self.extra_stream(image, extra_tokens, wanted, parts, image_kv)
            return VisionFeatures(hidden=hidden, grid=self.grid_of(pixel_values), num_prefix=self.num_prefix,
                                  num_extra=hidden[last].shape[1] - h.shape[1], info=self.info)
        num_image = h.shape[1]
        num_extra = 0
        mask = None
        if extra_tokens is not None:
            if extra_tokens.ndim == 2:
                extra_tokens = extra_tokens.unsqueeze(0).expand(h.shape[0], -1, -1)  # (B, X, C)
            num_extra = extra_tokens.shape[1]
            h = torch.cat([h, extra_tokens.to(h.dtype)], dim=1)  # (B, P + H*W + X, C)
            if extra_attention == "isolated":
                mask = self.isolation_mask(num_image, num_extra, h.dtype, h.device)
        hidden = self._run(h, mask, wanted)
        return VisionFeatures(
            hidden=hidden,
            grid=self.grid_of(pixel_values),
            num_prefix=self.num_prefix,
            num_extra=num_extra,
            info=self.info,
        )

    def stream_parts(self) -> list[BlockParts] | None:
        """Every block's parts when isolated extra tokens can run as their own stream beside the plain image blocks
        (``extra_stream``): each block's layout is known, and in training mode none drops anything; else None."""
        parts = [BlockParts.of(b) for b in self.blocks]
        return None if any(p is None for p in parts) else parts

    @property
    def splits_extra_tokens(self) -> bool:
        """Whether isolated extra tokens run as their own stream (``stream_parts`` is not None)."""
        return self.stream_parts() is not None

    def extra_stream(self, image: dict[int, torch.Tensor], extra_tokens: torch.Tensor, wanted: set[int],
                     parts: Sequence[BlockParts | None] | None = None,
                     image_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[int, torch.Tensor]:
        """Isolated extra tokens through the blocks beside the image tokens' own run: ``image`` holds the plain
        encoder's block inputs 0..L-1 and the blocks in ``wanted`` (L = the last of them), each (B, P + H*W, C)
        (from ``forward`` or a cache of them); ``parts`` the blocks' parts where the caller has them already;
        ``image_kv`` {block: (keys, values)} of the image tokens where their run kept them (``forward``), so that
        the extra stream adds only the extra tokens' own FLOPs; blocks missing from it compute them again.
        Returns {block in wanted: (B, P + H*W + X, C)}, as one masked run."""
        last = max(wanted)
        if parts is None:
            parts = [BlockParts.of(b) for b in self.blocks[:last]]
        missing = sorted((set(range(last)) | set(wanted)) - set(image))
        if missing:
            raise CompactVLMError(f"the extra stream needs the image tokens of blocks {missing}",
                                  f"pass the plain encoder's blocks 0..{last}")
        dtype = self.dtype  # the extra tokens' residual stream, whatever dtype a cache keeps the image tokens in
        n_img = image[0].shape[1]
        extra = extra_tokens if extra_tokens.ndim == 3 else extra_tokens.unsqueeze(0).expand(image[0].shape[0], -1, -1)
        extra = extra.to(dtype)  # (B, X, C)
        out: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            out[0] = torch.cat([image[0].to(dtype), extra], dim=1)
        for i, part in enumerate(parts[:last], start=1):
            img_in = image[i - 1].to(dtype)  # (B, S, C), the image tokens' input of block i
            if img_in.shape[1] != n_img:
                raise CompactVLMError("the image tokens changed in number inside the encoder (a token merge such as "
                                      "tome) in a run with extra tokens", "use tome with a full-token compressor")
            if part is None:
                raise CompactVLMError(f"block {i} of this {self.family} encoder cannot run extra tokens as their own "
                                      "stream (dropout in training mode, or a layer layout this does not know)",
                                      "put the encoder in eval mode (it is frozen), or run it with the extra tokens")
            kv = (image_kv or {}).get(i)
            if kv is not None and kv[0].shape[:2] != img_in.shape[:2]:
                kv = None  # not this block input's: compute them again
            extra = part.extra_step(img_in, extra, kv)  # (B, X, C)
            if i in wanted:
                out[i] = torch.cat([image[i].to(extra.dtype), extra], dim=1)  # (B, S + X, C)
        return out

    def _run(self, h: torch.Tensor, mask: torch.Tensor | None, wanted: set[int]) -> dict[int, torch.Tensor]:
        """The blocks up to the last wanted on ``h`` (B, T, C); returns {block in wanted: (B, T', C)}."""
        hidden: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            hidden[0] = h
        last = max(wanted)
        takes_mask = self.blocks_take_mask
        if mask is not None and not takes_mask:
            raise CompactVLMError(f"the {self.family} layers of transformers {version()} take no attention mask, which "
                                  "isolated extra tokens (VisToG) need", UPGRADE + ", or use extra_attention='full'")
        for i, block in enumerate(self.blocks[:last], start=1):
            h = block(h, mask) if takes_mask else block(h)  # (B, P + H*W + X, C)
            if isinstance(h, tuple):  # older transformers return tuples
                h = h[0]
            if i in wanted:
                hidden[i] = h
        return hidden
