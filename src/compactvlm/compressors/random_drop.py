"""LLaVA-rand: keep a random subset of ``tokens`` patch tokens, then LLaVA's ``mlp2x_gelu``.

Paper: VisToG (../shared/papers/vistog_visual-token-grouping.txt §4.2, Tables 1-2: "During inference, we
randomly drop the vision tokens from M to M' before feeding into the visual connector"); an equal-budget
baseline for the STF paper's methods too. Features of block ``layer`` (default -2), CLS dropped.

- Eval mode: one subset per forward call, drawn from a generator seeded with ``seed``, shared by every image
  of the batch, so an image's tokens depend neither on the batch it is in nor on the run (deterministic
  under ``seed``). The kept tokens stay in their row-major (spatial) order.
- Training mode (a deviation, documented): a fresh subset per image from torch's global RNG, so the count
  the LLM sees is ``tokens`` in training as well (the token count is declared in one place and must not
  depend on the mode). VisToG trains LLaVA with all tokens and drops only at test time; to reproduce that
  exactly, train ``mlp2x_gelu`` and load its state dict into ``random_drop`` (the projector is ``proj`` in
  both, so the parameter names match).
- ``tokens`` defaults to the k=2 budget of the encoder's grid ((H/2)*(W/2): 144 on 24 x 24); it must not
  exceed H*W.
"""

from __future__ import annotations

import torch

from ..encoders.base import EncoderInfo, VisionFeatures
from ..errors import CompactVLMError
from ..registry import COMPRESSORS
from .base import Compressor, mlp2x_gelu
from .qformer import default_budget


@COMPRESSORS.register("random_drop")
class RandomDrop(Compressor):
    token_layout = "kept"

    def __init__(self, enc: EncoderInfo, llm_dim: int, tokens: int | None = None, seed: int = 0,
                 layer: int = -2):
        super().__init__(enc, llm_dim)
        self.tokens = int(tokens if tokens is not None else default_budget(enc))
        self._check(enc.grid)
        enc.normalize_layer(layer)
        self.seed = int(seed)
        self.layer = layer
        self.proj = mlp2x_gelu(enc.hidden_size, llm_dim)

    def _check(self, grid: tuple[int, int]) -> None:
        n = grid[0] * grid[1]
        if not 1 <= self.tokens <= n:
            raise CompactVLMError(f"tokens={self.tokens} is not between 1 and the {n} patch tokens of the "
                                  f"{grid[0]}x{grid[1]} grid", f"pick tokens in 1..{n}")

    def feature_layers(self) -> list[int]:
        return [self.layer]

    def num_output_tokens(self, grid=None) -> int:
        self._check(grid or self.enc.grid)
        return self.tokens

    def keep_indices(self, batch: int, num_patches: int, device=None) -> torch.Tensor:
        """(B, tokens) sorted indices of the kept patch tokens (see the module docstring for the RNG)."""
        if self.training:
            idx = torch.rand(batch, num_patches, device=device).argsort(dim=1)[:, : self.tokens]  # (B, tokens)
        else:
            gen = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(num_patches, generator=gen)[: self.tokens].to(device)  # (tokens,)
            idx = idx.unsqueeze(0).expand(batch, -1)  # (B, tokens)
        return idx.sort(dim=1).values

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        self._check(feats.grid)
        x = feats.patches(self.layer)  # (B, H*W, C)
        idx = self.keep_indices(x.shape[0], x.shape[1], x.device)  # (B, tokens)
        x = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, tokens, C)
        return self.proj(x)  # (B, tokens, D)


COMPRESSORS.variant("random_drop_64", "random_drop:tokens=64")
COMPRESSORS.variant("random_drop_144", "random_drop:tokens=144")
