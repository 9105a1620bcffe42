"""Random drop at test time: keep a random subset of ``budget`` patch tokens of a model trained with all tokens.

Paper: VisToG (../shared/papers/vistog_visual-token-grouping.txt §4.2, "LLaVA-rand": "During inference, we
randomly drop the vision tokens from M to M' before feeding into the visual connector"), here applied to
any full-token checkpoint without retraining. Patch features of the compressor's block (CLS dropped), then
the compressor's per-token projection.

The subset is drawn from a generator seeded with ``seed`` on every call and shared by every image of the
batch, so the kept positions depend neither on the batch nor on the run; kept tokens stay in row-major
(spatial) order. With ``budget`` = all patches the model's input is exactly the unreduced one.
No deviation.
"""

from __future__ import annotations

import torch

from ..encoders.base import VisionFeatures
from ..registry import REDUCTIONS
from .base import PatchReduction


@REDUCTIONS.register("random")
class RandomDrop(PatchReduction):
    cacheable_features = True  # reads only feats.hidden

    def __init__(self, budget: int | None = None, model=None, seed: int = 0):
        self.seed = int(seed)
        super().__init__(budget, model)
        self.params["seed"] = self.seed

    def keep_indices(self, num_patches: int, device=None) -> torch.Tensor:
        """(budget,) sorted indices of the kept patch tokens."""
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(num_patches, generator=gen)[: self.budget]  # (budget,)
        return idx.sort().values.to(device)

    def kept_patches(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        x = feats.patches(self.compressor_layer(compressor))  # (B, H*W, C)
        return self.keep_indices(x.shape[1], x.device).expand(x.shape[0], -1)  # (B, budget): the same for every image

    def select(self, feats: VisionFeatures, layer: int) -> torch.Tensor:
        x = feats.patches(layer)  # (B, H*W, C)
        idx = self.keep_indices(x.shape[1], x.device)  # (budget,)
        return x[:, idx]  # (B, budget, C)
