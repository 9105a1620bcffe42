"""SparseVLM: text-guided, progressive pruning of vision tokens inside the LLM, with pruned tokens recycled.

Paper: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference"
(ICML 2025). At a few LLM layers the vision tokens are rated by the question: the text tokens most relevant
to the image ("raters") vote with their attention to each vision token; the lowest-rated vision tokens are
dropped, and the best of the dropped ones are recycled into a few merged tokens, so that their information is
not lost. Text tokens are never dropped; kept tokens keep their RoPE positions.
Here, before each drop layer (``staged.StagedPruning``: all tokens in the prompt, per-layer KV cache):
- raters: the valid text tokens after the image (question + chat template), whose attention mass on the
  vision tokens (that layer's attention, mean over heads) is at least the mean over those text tokens;
- rating of a vision token: the mean attention the raters pay it;
- the stage keeps ``n_keep`` tokens: ``n_keep - c`` by rating, plus ``c = round(merge * n_keep)`` merged
  tokens; the recycled pool is the next ``round(recycle * pruned)`` tokens by rating (at least ``c``), its
  top ``c`` are centres, every pool token joins the centre with the most cosine-similar hidden state, and
  each group is averaged into the centre's slot (and RoPE position).
Budget: the equivalent vision-token count (mean per LLM layer, as ``fastv`` reports it); merged tokens count.
Deviations: the paper picks raters once from the embeddings and sets each layer's pruned count adaptively
from the rank of the attention matrix; here raters are picked from each drop layer's own attention and the
counts follow a geometric schedule solved for the budget (``staged``). Drop layers default to the paper's
2, 6, 15 of LLaVA's 32 layers, scaled to the LLM's depth (the first after layer 1 when the budget needs it). Recycled tokens are grouped by nearest centre
instead of the paper's density-peak clustering (recycle=0.3 and merge=0.1 are this file's defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import CompactVLMError
from ..registry import REDUCTIONS
from .staged import StagedPruning, attention_rows, gather_rows


@REDUCTIONS.register("sparsevlm")
class SparseVLM(StagedPruning):
    def __init__(self, budget: int | None = None, model=None, layers=None, ratio: float | None = None,
                 recycle: float = 0.3, merge: float = 0.1):
        for key, v in (("recycle", recycle), ("merge", merge)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise CompactVLMError(f"sparsevlm {key}={v!r} is not a fraction in [0, 1]",
                                      f"pass e.g. {key}={0.3 if key == 'recycle' else 0.1}")
        self.recycle, self.merge = float(recycle), float(merge)
        super().__init__(budget, model, layers, ratio)
        self.params.update(recycle=self.recycle, merge=self.merge)

    def default_layers(self, num_layers: int, first: int) -> list[float]:
        return [first, 6 * num_layers / 32, 15 * num_layers / 32]

    def attention(self, layer, h, cos_sin, mask) -> torch.Tensor:
        """(B, T, T) attention of the layer, mean over heads (every query row)."""
        return attention_rows(layer, h, cos_sin, mask)

    def scores(self, layer, h, cos_sin, mask, image_mask, valid, qi) -> torch.Tensor:
        a = self.attention(layer, h, cos_sin, mask)  # (B, T, T)
        after = (image_mask.flip(1).long().cumsum(1).flip(1) == 0) & valid  # (B, T) text after the image
        rel = (a * image_mask[:, None, :]).sum(dim=-1)  # (B, T) attention mass each row puts on the image
        cand = after.float()
        mean_rel = (rel * cand).sum(dim=1, keepdim=True) / cand.sum(dim=1, keepdim=True).clamp_min(1)
        raters = cand * (rel >= mean_rel).float()  # (B, T)
        self.last_raters = raters
        return (raters.unsqueeze(-1) * a).sum(dim=1) / raters.sum(dim=1, keepdim=True).clamp_min(1)  # (B, T)

    def prune(self, stage, h, scores, image_mask, n_img, n_keep):
        b, t, d = h.shape
        n_text = t - n_img
        c = min(n_keep, int(round(self.merge * n_keep)))
        r = min(n_img - n_keep + c, max(c, int(round(self.recycle * (n_img - n_keep + c)))))
        if c == 0 or n_keep == n_img:
            return super().prune(stage, h, scores, image_mask, n_img, n_keep)
        s = scores.float().masked_fill(~image_mask, float("inf"))  # text and padding first
        top = s.topk(n_text + n_keep - c + r, dim=1).indices  # (B, K) by rating, descending
        kept = top[:, : n_text + n_keep]  # (B, T') the last c are the centres
        pool = top[:, n_text + n_keep - c:]  # (B, r) recycled tokens, centres first
        x_pool = gather_rows(h, pool)  # (B, r, D)
        xn = F.normalize(x_pool.float(), dim=-1)
        sim = xn @ xn[:, :c].transpose(1, 2)  # (B, r, c) cosine similarity to the centres
        assign = sim.argmax(dim=-1)  # (B, r)
        assign[:, :c] = torch.arange(c, device=h.device)  # a centre is its own group
        onehot = torch.zeros(b, r, c, dtype=h.dtype, device=h.device).scatter_(2, assign.unsqueeze(-1), 1.0)
        merged = onehot.transpose(1, 2) @ x_pool / onehot.sum(dim=1).unsqueeze(-1)  # (B, c, D) group means
        h_top = torch.cat([gather_rows(h, kept[:, : n_text + n_keep - c]), merged], dim=1)  # (B, T', D)
        order, perm = kept.sort(dim=1)
        return order, gather_rows(h_top, perm)
