"""DivPrune: keep the most diverse subset of vision tokens (greedy max-min diversity).

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models" (CVPR 2025).
Token pruning is cast as a Max-Min Diversity Problem on the visual tokens the LLM receives (the projector's
outputs), with the cosine distance ``1 - cos(x_i, x_j)``; it is solved greedily: the first token is the one
farthest from its nearest neighbour, then each step adds the token whose distance to the nearest already
selected token is largest, until ``budget`` tokens are selected. Kept tokens stay in spatial order.
Every patch of the compressor's block is projected first (``compressor.project``), as in the paper, so the
projection runs on all N tokens (counted in bench's compressor FLOPs). Ties go to the lowest index.
An exact duplicate of a selected token has distance 0 and is only selected once every remaining token is one.
No deviation beyond the first pick (the paper's reference may start from a different seed token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import REDUCTIONS
from .base import ProjectedSelection


@REDUCTIONS.register("divprune")
class DivPrune(ProjectedSelection):
    cacheable_features = True  # reads only feats.hidden

    def keep(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        xn = F.normalize(tokens.float(), dim=-1)
        dist = (1 - xn @ xn.transpose(1, 2)).clamp_min(0)  # (B, N, N) cosine distance
        eye = torch.eye(n, dtype=torch.bool, device=tokens.device)
        first = dist.masked_fill(eye, float("inf")).min(dim=2).values.argmax(dim=1)  # (B,) most isolated token
        picks = [first]
        chosen = torch.zeros(b, n, dtype=torch.bool, device=tokens.device).scatter_(1, first[:, None], True)
        nearest = torch.gather(dist, 2, first.view(b, 1, 1).expand(b, n, 1))[..., 0]  # (B, N) to the selected set
        for _ in range(self.budget - 1):
            i = nearest.masked_fill(chosen, -1.0).argmax(dim=1)  # (B,)
            picks.append(i)
            chosen.scatter_(1, i[:, None], True)
            nearest = torch.minimum(nearest, torch.gather(dist, 2, i.view(b, 1, 1).expand(b, n, 1))[..., 0])
        return torch.stack(picks, dim=1).sort(dim=1).values  # (B, budget)
