"""AvgPool: average each k x k window of patch tokens (stride k), then LLaVA's ``mlp2x_gelu``.

Paper: Tang & Shen, "Learning Compact Vision Tokens for Efficient Large Multimodal Models"
(../shared/papers/compact-vision-tokens_stf-mbtf_v1.txt §1 Fig. 1, Table 2 "LLaVA-1.5 (AvgPool)", Table 5):
"four adjacent tokens are averaged as one with a stride of 2", then the LLaVA-1.5 projector; also VisToG's
"LLaVA-AvgPool" baseline. Features of block ``layer`` (default -2), CLS dropped; ``F.avg_pool2d`` over the
(H, W) patch grid; windows in row-major order. (H/k)*(W/k) tokens out. No deviation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..encoders.base import EncoderInfo, VisionFeatures
from ..registry import COMPRESSORS
from .base import WindowCompressor, check_grid_divisible, mlp2x_gelu


@COMPRESSORS.register("avgpool")
class AvgPool(WindowCompressor):
    def __init__(self, enc: EncoderInfo, llm_dim: int, k: int = 2, layer: int = -2):
        super().__init__(enc, llm_dim, k=k, layer=layer)
        self.proj = mlp2x_gelu(enc.hidden_size, llm_dim)

    def pool(self, feats: VisionFeatures) -> torch.Tensor:
        """The training-free part: (B, H/k*W/k, C) window means, row-major over windows."""
        check_grid_divisible(feats.grid, self.k)
        x = F.avg_pool2d(feats.patch_grid(self.layer), self.k, self.k)  # (B, C, H/k, W/k)
        return x.flatten(2).transpose(1, 2)  # (B, H/k*W/k, C)

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        return self.proj(self.pool(feats))  # (B, H/k*W/k, D)


COMPRESSORS.variant("avgpool_k2", "avgpool:k=2", default=True)
COMPRESSORS.variant("avgpool_k4", "avgpool:k=4")
