"""Mask sources for the ``objects`` compressor (Mask-LLaVA's object tokens), registered in ``MASK_SOURCES``.

A mask source turns a batch of encoder features (plus ``feats.extra_state``) into, per image, a bool tensor
``(K_i, Hm, Wm)`` of object masks with ``1 <= K_i <= max_masks`` whose union covers the whole image. Sources
that find objects (``given``, ``detector_sam``) add a *background* mask, the complement of the union of the
object masks, whenever the objects leave part of the image uncovered; ``unsupervised`` partitions the image,
so its segments cover it by construction.

Masks come at pixel resolution ``(H_img, W_img)`` (the size of ``extra_state["pixel_values"]``) or at patch
resolution ``(H, W)`` (the encoder's patch grid); ``patch_coverage`` maps both to the fraction of each patch a
mask covers, which is what the object embedders consume.

    unsupervised   agglomerative clustering of the encoder's patch features (no extra weights; default)
    given          masks supplied with the sample in extra_state["masks"] (an oracle for ablations)
    detector_sam   Deformable-DETR boxes -> SAM masks (users' local checkpoints)
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
import torch.nn.functional as F

from ...encoders.base import VisionFeatures
from ...errors import CompactVLMError
from ...registry import MASK_SOURCES


class MaskSource:
    """Base class: ``__call__(feats, max_masks) -> list (length B) of bool (K_i, Hm, Wm)``."""

    registry_name: str = "?"
    #: True when the source reads the image's pixels itself (not only encoder features)
    reads_pixels: bool = False

    def feature_layers(self) -> list[int]:
        """Encoder blocks this source reads (merged into the compressor's ``feature_layers``)."""
        return []

    def settings(self) -> str:
        """Everything that changes the masks, for the object-embedding cache key."""
        return self.registry_name

    def cache_extra(self, feats: VisionFeatures, b: int) -> bytes:
        """Per-image bytes beyond the pixels that change the masks (``given`` hashes its masks)."""
        return b""

    def __call__(self, feats: VisionFeatures, max_masks: int) -> list[torch.Tensor]:
        raise NotImplementedError


def create_mask_source(name: str, **options) -> MaskSource:
    cls = MASK_SOURCES.get(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise CompactVLMError(f"bad option for mask source {name!r}: {e}",
                              "see the docstring of compactvlm.compressors.masks." + cls.__module__.rsplit(".", 1)[-1]
                              ) from None


def check_max_masks(max_masks: int) -> None:
    if int(max_masks) < 1:
        raise CompactVLMError(f"max_masks={max_masks} must be at least 1", "set max_objects to e.g. 16")


def as_bool_masks(m, where: str) -> torch.Tensor:
    """Validate one image's masks: a (K, H, W) tensor of 0/1 values with K >= 1 and no empty mask."""
    if not isinstance(m, torch.Tensor):
        try:
            m = torch.as_tensor(m)
        except Exception:  # noqa: BLE001 - anything that is not array-like
            raise CompactVLMError(f"{where}: masks must be a tensor (K, H, W), got {type(m).__name__}",
                                  "pass a bool tensor per image") from None
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3:
        raise CompactVLMError(f"{where}: masks must be (K, H, W), got shape {tuple(m.shape)}",
                              "stack one image's masks into a (K, H, W) bool tensor")
    if m.shape[0] == 0:
        raise CompactVLMError(f"{where}: the mask list is empty", "give at least one mask per image "
                              "(the whole image, torch.ones(1, H, W, dtype=torch.bool), is a valid mask list)")
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise CompactVLMError(f"{where}: masks must be binary (0/1 or bool), got values outside {{0, 1}}",
                                  "threshold soft masks first, e.g. masks > 0.5")
        m = m != 0
    empty = ~m.flatten(1).any(dim=1)
    if bool(empty.any()):
        raise CompactVLMError(f"{where}: mask(s) {empty.nonzero().flatten().tolist()} are empty",
                              "drop empty masks before passing them")
    return m


def with_background(objects: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Append the complement of the union of ``objects`` (K, H, W) when it is not empty."""
    if objects.shape[0] == 0:
        assert hw is not None
        return torch.ones(1, *hw, dtype=torch.bool, device=objects.device)
    background = ~objects.any(dim=0)  # (H, W)
    if bool(background.any()):
        objects = torch.cat([objects, background[None]], dim=0)
    return objects


def limit_and_cover(objects: torch.Tensor, max_masks: int, hw: tuple[int, int]) -> torch.Tensor:
    """At most ``max_masks`` masks covering the image: the objects plus background (complement of their union).

    With too many objects, the largest ``max_masks - 1`` are kept (area ties: earlier first); the kept objects
    stay in the source's order (given order, detector score order)."""
    check_max_masks(max_masks)
    n = objects.shape[0]
    if n <= max_masks and (n < max_masks or bool(objects.any(dim=0).all())):
        return with_background(objects, hw)
    area = objects.flatten(1).sum(dim=1)
    top = torch.sort(area, descending=True, stable=True).indices
    if bool(objects[top[:max_masks]].any(dim=0).all()):
        return objects[top[:max_masks].sort().values]
    return with_background(objects[top[: max_masks - 1].sort().values], hw)


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int], patch_size: int,
                   image_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Bool masks at pixel or patch resolution -> fraction of each patch covered: float (K, H, W) in [0, 1]."""
    h, w = grid
    size = tuple(masks.shape[-2:])
    if size == (h, w):
        return masks.float()
    pix = image_hw or (h * patch_size, w * patch_size)
    if size != tuple(pix):
        raise CompactVLMError(
            f"masks of size {size} match neither the image {tuple(pix)} nor the {h}x{w} patch grid",
            "give masks at pixel resolution (the preprocessed image size) or at patch resolution",
        )
    return F.adaptive_avg_pool2d(masks.float()[None], (h, w))[0]  # (K, H, W): covered fraction per patch


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["MaskSource", "create_mask_source", "as_bool_masks", "with_background", "limit_and_cover",
           "patch_coverage", "check_max_masks"]
