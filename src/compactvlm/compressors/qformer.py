"""Q-Former-style compressor: ``tokens`` learned queries cross-attend to the patch tokens.

Papers: the Q-Former baseline of Tang & Shen, v2-review (../shared/papers/
compact-vision-tokens_stf-mbtf_v2-review.txt §4.4.3, Table 6: "conducts cross attention to fuse vision
tokens into fewer learnable query tokens"), and VisToG's "LLaVA-1.5-QFormer" (64 queries); after BLIP-2's
Q-Former (Li et al., 2023). Neither paper gives the architecture; ours (the choices are the deviation):
- ``tokens`` learned queries (default: the k=2 budget of the encoder's grid, (H/2)*(W/2) = 144 on 24 x 24),
  initialised N(0, 0.02²), shared across images; ``tokens`` is the output count, independent of the grid.
- ``layers`` (default 2) pre-norm ``nn.TransformerDecoderLayer`` blocks, each self-attention among the
  queries, cross-attention from the queries to the patch tokens of block ``layer`` (default -2, CLS
  dropped), and a GELU FFN of width 4*dim; no dropout. ``dim`` defaults to the encoder width (no input
  projection then; otherwise a Linear C -> dim); ``heads`` defaults to the encoder's head count.
  BLIP-2 inserts cross-attention every other layer and starts from BERT weights; we cross-attend in every
  layer and start from scratch, as a baseline trained like the other compressors.
- Final LayerNorm, then LLaVA's ``mlp2x_gelu`` (dim -> D -> D) to the LLM width, as for the other baselines
  (BLIP-2 uses one Linear).
- No positional embedding on the patch tokens (BLIP-2's ViT features already carry them).
"""

from __future__ import annotations

import torch
from torch import nn

from ..encoders.base import EncoderInfo, VisionFeatures
from ..errors import CompactVLMError
from ..registry import COMPRESSORS
from .base import Compressor, mlp2x_gelu


def default_budget(enc: EncoderInfo) -> int:
    """The k=2 budget of the encoder's default grid: (H/2)*(W/2) (144 on 24 x 24, 64 on 16 x 16)."""
    h, w = enc.grid
    return max((h // 2) * (w // 2), 1)


@COMPRESSORS.register("qformer")
class QFormer(Compressor):
    token_layout = "queries"

    def __init__(
        self,
        enc: EncoderInfo,
        llm_dim: int,
        tokens: int | None = None,
        layers: int = 2,
        dim: int | None = None,
        heads: int | None = None,
        layer: int = -2,
    ):
        super().__init__(enc, llm_dim)
        self.tokens = int(tokens if tokens is not None else default_budget(enc))
        if self.tokens < 1:
            raise CompactVLMError(f"tokens={tokens} must be at least 1", "set tokens to the token budget, e.g. 64")
        if int(layers) < 1:
            raise CompactVLMError(f"layers={layers} must be at least 1", "use layers=2")
        enc.normalize_layer(layer)
        self.layer = layer
        self.dim = int(dim or enc.hidden_size)
        self.heads = int(heads or enc.num_heads)
        if self.dim % self.heads:
            raise CompactVLMError(f"heads={self.heads} does not divide dim={self.dim}",
                                  "pick heads dividing dim")
        self.queries = nn.Parameter(torch.randn(self.tokens, self.dim) * 0.02)
        self.inp = nn.Linear(enc.hidden_size, self.dim) if self.dim != enc.hidden_size else nn.Identity()
        block = nn.TransformerDecoderLayer(
            self.dim, self.heads, 4 * self.dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerDecoder(block, int(layers), norm=nn.LayerNorm(self.dim))
        self.proj = mlp2x_gelu(self.dim, llm_dim)

    def feature_layers(self) -> list[int]:
        return [self.layer]

    def num_output_tokens(self, grid=None) -> int:
        return self.tokens

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        mem = self.inp(feats.patches(self.layer))  # (B, H*W, dim)
        q = self.queries.unsqueeze(0).expand(mem.shape[0], -1, -1)  # (B, tokens, dim)
        return self.proj(self.blocks(q, mem))  # (B, tokens, D)


COMPRESSORS.variant("qformer_64", "qformer:tokens=64", default=True)
COMPRESSORS.variant("qformer_144", "qformer:tokens=144")
