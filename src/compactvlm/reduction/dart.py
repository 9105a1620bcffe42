"""DART: duplication-aware token reduction -- keep a few pivot tokens and the tokens least similar to them.

Paper: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More"
(EMNLP 2025). A few pivot tokens are chosen (largest L1 norm); every other token is scored by its cosine
similarity to a pivot, and each pivot retains its share of the budget among the tokens least similar to it
(lowest duplication), without repeats; pivots and retained tokens reach the LLM, the rest are dropped.
Here: pivots = the ``pivots`` tokens (this file's default 8, at most the budget) with the largest L1 norm, the remaining
``budget - pivots`` are split evenly over the pivots (the first ones take the remainder), each pivot in turn
retains its least-similar not-yet-kept tokens. Kept tokens stay in spatial order; ties go to the lowest index.
Deviations:
- before the LLM: DART prunes after LLM layer 2, with pivots from that layer's states, and also uses text
  tokens as pivots; here the tokens are the LLM-input embeddings (every patch of the compressor's block
  through ``compressor.project``) and the pivots are vision tokens only, so the LLM sees ``budget`` tokens in
  every layer;
- duplicates: a token whose cosine similarity to an already kept token is at least ``dup`` (default 0.999)
  is only kept once no other token remains, so two identical tokens are never both kept while distinct ones
  remain (DART's per-pivot ranking alone could keep both copies of a token unlike its pivot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CompactVLMError
from ..registry import REDUCTIONS
from .base import ProjectedSelection


@REDUCTIONS.register("dart")
class DART(ProjectedSelection):
    cacheable_features = True  # reads only feats.hidden

    def __init__(self, budget: int | None = None, model=None, pivots: int = 8, dup: float = 0.999):
        if isinstance(pivots, bool) or not isinstance(pivots, int) or pivots < 1:
            raise CompactVLMError(f"dart pivots={pivots!r} is not a positive number of tokens", "pass e.g. pivots=8")
        if isinstance(dup, bool) or not isinstance(dup, (int, float)) or not -1 <= dup <= 1:
            raise CompactVLMError(f"dart dup={dup!r} is not a cosine similarity", "pass e.g. dup=0.999")
        self.pivots, self.dup = int(pivots), float(dup)
        super().__init__(budget, model)
        self.params.update(pivots=self.pivots, dup=self.dup)

    def keep(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        xn = F.normalize(tokens.float(), dim=-1)  # (B, N, D)
        kept = torch.zeros(b, n, dtype=torch.bool, device=tokens.device)
        near = torch.full((b, n), -2.0, device=tokens.device)  # max cosine similarity to a kept token
        picks: list[torch.Tensor] = []

        def take(cost: torch.Tensor) -> torch.Tensor:
            """Keep the lowest-cost token (duplicates of kept ones last); (B, N) similarity to it."""
            cost = cost.masked_fill(near >= self.dup, 1e30).masked_fill(kept, float("inf"))
            i = cost.argmin(dim=1)  # (B,)
            picks.append(i)
            kept.scatter_(1, i[:, None], True)
            sim = (xn @ xn[torch.arange(b), i].unsqueeze(-1))[..., 0]  # (B, N)
            near.copy_(torch.maximum(near, sim))
            return sim

        p = min(self.pivots, self.budget)
        norms = tokens.float().abs().sum(dim=-1)  # (B, N) L1 norms
        pivot_sims = [take(-norms) for _ in range(p)]
        rest = self.budget - p
        for j, sim in enumerate(pivot_sims):
            for _ in range(rest // p + (j < rest % p)):
                take(sim)  # least similar to this pivot
        return torch.stack(picks, dim=1).sort(dim=1).values  # (B, budget)
