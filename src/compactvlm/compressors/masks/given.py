"""``given`` mask source: the masks supplied with each sample (an oracle for Mask-LLaVA ablations).

Mask-LLaVA (Jahagirdar et al., "When LLaVA Meets Objects") gets its masks from Deformable DETR + SAM; this
source instead reads ``feats.extra_state["masks"]``: a list of length B, one bool (or 0/1) tensor
``(K_i, H, W)`` per image, at pixel resolution (the preprocessed image size) or at patch resolution. Every
mask must be non-empty and the list must not be empty. If the masks leave part of the image uncovered, the
complement of their union is added as a background mask; with more than ``max_masks`` masks the largest
``max_masks - 1`` (by area, ties in given order) are kept and the background is recomputed from them.
"""

from __future__ import annotations

import hashlib

import torch

from ...encoders.base import VisionFeatures
from ...errors import CompactVLMError
from ...registry import MASK_SOURCES
from . import MaskSource, as_bool_masks, limit_and_cover


def _masks_of(feats: VisionFeatures) -> list:
    masks = feats.extra_state.get("masks")
    if masks is None:
        raise CompactVLMError("mask source 'given' found no masks in extra_state['masks']",
                              "pass extra_state={'masks': [bool (K, H, W) per image]} or use mask_source=unsupervised")
    if isinstance(masks, torch.Tensor) and masks.ndim == 4:
        masks = list(masks)
    if not isinstance(masks, (list, tuple)) or len(masks) != feats.batch_size:
        n = len(masks) if isinstance(masks, (list, tuple)) else type(masks).__name__
        raise CompactVLMError(f"extra_state['masks'] must be a list with one entry per image ({feats.batch_size}), "
                              f"got {n}", "give one (K, H, W) mask tensor per image")
    return list(masks)


@MASK_SOURCES.register("given")
class GivenMasks(MaskSource):
    def settings(self) -> str:
        return "given"

    def cache_extra(self, feats: VisionFeatures, b: int) -> bytes:
        m = as_bool_masks(_masks_of(feats)[b], f"extra_state['masks'][{b}]")
        return hashlib.blake2b(m.cpu().numpy().tobytes() + str(tuple(m.shape)).encode(), digest_size=16).digest()

    def __call__(self, feats: VisionFeatures, max_masks: int) -> list[torch.Tensor]:
        h, w = feats.grid
        p = feats.info.patch_size
        px = feats.extra_state.get("pixel_values")
        sizes = {(h, w), (h * p, w * p)} | ({tuple(px.shape[-2:])} if px is not None else set())
        out = []
        for b, m in enumerate(_masks_of(feats)):
            m = as_bool_masks(m, f"extra_state['masks'][{b}]")
            if tuple(m.shape[-2:]) not in sizes:
                raise CompactVLMError(
                    f"extra_state['masks'][{b}] has size {tuple(m.shape[-2:])}; expected the image size "
                    f"{(h * p, w * p)} or the {h}x{w} patch grid",
                    "resize the masks with the image (nearest) before passing them",
                )
            out.append(limit_and_cover(m, max_masks, tuple(m.shape[-2:])))
        return out
