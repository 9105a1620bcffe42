"""Any HF ViT (DINOv2, CLIP, SigLIP) as a VisionEncoder that returns chosen blocks and accepts extra tokens.

The blocks are HF's own modules, called one by one (no fork of transformers' modeling code), so an
attention mask can be handed to every block through HF's attention interface; SDPA stays in use.
Extra tokens (VisToG's semantic tokens) are appended after the patch embedding; with
``extra_attention="isolated"`` the image tokens (prefix + patches) cannot attend to them (VisToG Eq. 5).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from ..errors import CompactVLMError
from ..hf_compat import UPGRADE, takes_attention_mask, version
from .base import EncoderInfo, VisionFeatures
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD

ExtraAttention = Literal["isolated", "full"]


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
        h = self.embed(pixel_values.to(self.dtype))  # (B, P + H*W, C)
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
            elif extra_attention != "full":
                raise CompactVLMError(f"unknown extra_attention {extra_attention!r}", "use 'isolated' or 'full'")
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
        return VisionFeatures(
            hidden=hidden,
            grid=self.grid_of(pixel_values),
            num_prefix=self.num_prefix,
            num_extra=num_extra,
            info=self.info,
        )
