"""TokenConcat: concatenate each k x k window of patch tokens into one token, then LLaVA's ``mlp2x_gelu``.

Paper: Tang & Shen, "Learning Compact Vision Tokens for Efficient Large Multimodal Models"
(../shared/papers/compact-vision-tokens_stf-mbtf_v1.txt §4.3.3, Table 5; v2 Table 6): the "TokenConcat"
fusion strategy, "which simply concatenates adjacent 2x2 vision tokens as one token". The paper does not
write its projector; we use the LLaVA-1.5 ``mlp2x_gelu`` (Linear k²C -> D, GELU, Linear D -> D), as for the
other baselines. Features of block ``layer`` (default -2), CLS dropped. (H/k)*(W/k) tokens out.

Space-to-depth order (shared with ``stf``): windows in row-major order over the (H/k, W/k) window grid; inside
a window the k² tokens are concatenated in row-major order, token-major, i.e. channel ``(i*k + j)*C + c`` of
a fused token is channel ``c`` of the token at row ``i``, column ``j`` of its window. (``F.pixel_unshuffle``
and a conv weight ``(O, C, k, k)`` flattened are channel-major, ``c*k*k + i*k + j``; convert a conv weight
to the matching Linear weight with ``w.permute(0, 2, 3, 1).reshape(O, k*k*C)``.)
"""

from __future__ import annotations

import torch

from ..encoders.base import EncoderInfo, VisionFeatures
from ..registry import COMPRESSORS
from .base import WindowCompressor, check_grid_divisible, mlp2x_gelu


def space_to_depth(x: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """(B, H*W, C) row-major patch tokens -> (B, (H/k)*(W/k), k*k*C) window tokens (order: module docstring)."""
    check_grid_divisible(grid, k)
    h, w = grid
    b, n, c = x.shape
    if n != h * w:
        raise ValueError(f"expected {h}*{w}={h * w} tokens, got {n}")
    x = x.reshape(b, h // k, k, w // k, k, c)  # (B, H/k, i, W/k, j, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/k, W/k, i, j, C)
    return x.reshape(b, (h // k) * (w // k), k * k * c)  # (B, H/k*W/k, k²C)


def depth_to_space(x: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Inverse of ``space_to_depth``: (B, (H/k)*(W/k), k*k*C) -> (B, H*W, C)."""
    h, w = grid
    b, _, kkc = x.shape
    c = kkc // (k * k)
    x = x.reshape(b, h // k, w // k, k, k, c)  # (B, H/k, W/k, i, j, C)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, H/k, i, W/k, j, C)
    return x.reshape(b, h * w, c)  # (B, H*W, C)


@COMPRESSORS.register("concat")
class TokenConcat(WindowCompressor):
    def __init__(self, enc: EncoderInfo, llm_dim: int, k: int = 2, layer: int = -2):
        super().__init__(enc, llm_dim, k=k, layer=layer)
        self.proj = mlp2x_gelu(self.k * self.k * enc.hidden_size, llm_dim)

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        x = space_to_depth(feats.patches(self.layer), feats.grid, self.k)  # (B, H/k*W/k, k²C)
        return self.proj(x)  # (B, H/k*W/k, D)


COMPRESSORS.variant("concat_k2", "concat:k=2")
COMPRESSORS.variant("concat_k4", "concat:k=4")
