"""Grid average pooling at test time: pool the patch grid of a full-token model to ``budget`` tokens.

Paper: Tang & Shen (../shared/papers/compact-vision-tokens_stf-mbtf_v1.txt, Table 2 "LLaVA-1.5 (AvgPool)")
and VisToG's "LLaVA-AvgPool" baseline average k x k windows of patch tokens before the projector; here the
pooling is applied at test time to a model trained with all tokens (no retraining).

The budget must be a square number s*s with s <= the grid side: the (H, W) grid of patch features (block of
the compressor, CLS dropped) is pooled with ``F.adaptive_avg_pool2d`` to s x s, so any s works (for s
dividing H and W these are exactly the stride-H/s windows of the papers; otherwise PyTorch's adaptive,
possibly overlapping windows), tokens in row-major order, then the compressor's per-token projection.
Deviation: a non-square budget (e.g. 32) raises a CompactVLMError naming the nearest squares rather than
pooling to a rectangle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError
from ..registry import REDUCTIONS
from .base import PatchReduction, check_budget


@REDUCTIONS.register("avgpool")
class GridAvgPool(PatchReduction):
    cacheable_features = True  # reads only feats.hidden

    def __init__(self, budget: int | None = None, model=None):
        budget = check_budget("avgpool", budget)
        s = math.isqrt(budget)
        if s * s != budget:
            lo, hi = s * s, (s + 1) ** 2
            raise CompactVLMError(f"avgpool pools to an s x s grid; budget={budget} is not a square number",
                                  f"pick a square budget, e.g. {lo} ({s}x{s}) or {hi} ({s + 1}x{s + 1})")
        self.side = s
        super().__init__(budget, model)

    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        n = super().num_output_tokens(grid)
        grid = grid or (self.vlm.grid if self.vlm is not None else None)
        if grid is not None and self.side > min(grid):
            raise CompactVLMError(f"avgpool to {self.side}x{self.side} does not fit the {grid[0]}x{grid[1]} patch grid",
                                  f"pick a square budget of at most {min(grid) ** 2}")
        return n

    def token_windows(self, grid: tuple[int, int]) -> tuple[int, int, int] | None:
        h, w = grid
        return (self.side, self.side, 1) if h % self.side == 0 and w % self.side == 0 else None

    def select(self, feats: VisionFeatures, layer: int) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(feats.patch_grid(layer), self.side)  # (B, C, s, s)
        return x.flatten(2).transpose(1, 2)  # (B, s*s, C)
