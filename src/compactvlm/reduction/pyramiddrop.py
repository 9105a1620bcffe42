"""PyramidDrop: drop a share of the vision tokens at several LLM stages, ranked by the last instruction token.

Paper: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction" (CVPR 2025). The LLM is split into stages; at the end of each stage the vision tokens are ranked
by the attention the last instruction token (the prompt's last position, which produces the first answer
token) pays them in that stage's last layer, averaged over heads, and only the top ones continue; text tokens
are never dropped. Kept tokens keep their RoPE positions. The pyramid: stage ``s`` keeps ``N * ratio**s``.
The LLM-side machinery (per-layer KV cache, greedy generation, left padding) is ``staged.StagedPruning``.

Deviations: the paper's training-time setting drops after layers L/4, L/2, 3L/4 with lambda = 0.5; at the
budgets compared here (64 of 256 tokens on SmolLM2's 30 layers) that cannot be reached, because the first
stage alone already costs more. By default the first drop is after layer 2 (FastV's K; after layer 1 when
the budget needs it), as the paper's inference-only comparisons also prune early, and the next two split the remaining layers in thirds; the
per-stage ratio is solved so that ``budget`` is the equivalent token count (mean vision tokens per LLM layer,
as ``fastv`` reports it) instead of fixing lambda = 0.5 (``ratio=0.5`` restores a fixed lambda;
``layers=8,16,24`` the paper's drop points). The rank uses the eager attention of that one query row,
recomputed once per stage, as FastV does here.
"""

from __future__ import annotations

import torch

from ..registry import REDUCTIONS
from .staged import StagedPruning, attention_rows


@REDUCTIONS.register("pyramiddrop")
class PyramidDrop(StagedPruning):
    default_drops = (1 / 3, 2 / 3)

    def scores(self, layer, h, cos_sin, mask, image_mask, valid, qi) -> torch.Tensor:
        rows = torch.tensor([qi], device=h.device)
        return attention_rows(layer, h, cos_sin, mask, rows)[:, 0]  # (B, T): last instruction token's attention
