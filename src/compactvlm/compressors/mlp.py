"""LLaVA-1.5's ``mlp2x_gelu`` projector over all patch tokens (the full-token reference).

Paper: Liu et al., "Improved Baselines with Visual Instruction Tuning" (LLaVA-1.5); it is the "LLaVA-1.5"
row every compression paper here compares against. Features of block -2, CLS dropped
("default" select strategy), Linear -> GELU -> Linear. No deviation.
"""

from __future__ import annotations

import torch

from ..encoders.base import EncoderInfo, VisionFeatures
from ..registry import COMPRESSORS
from .base import WindowCompressor, mlp2x_gelu


@COMPRESSORS.register("mlp2x_gelu")
class MLPProjector(WindowCompressor):
    def __init__(self, enc: EncoderInfo, llm_dim: int, layer: int = -2):
        super().__init__(enc, llm_dim, layer=layer)
        self.proj = mlp2x_gelu(enc.hidden_size, llm_dim)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token projection, reused by test-time reductions: (B, N, C) -> (B, N, D)."""
        return self.proj(x)

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        return self.proj(feats.patches(self.layer))  # (B, H*W, D)
