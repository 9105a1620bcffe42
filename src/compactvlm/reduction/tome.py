"""ToMe: merge similar tokens between the vision encoder's blocks, so the encoder itself gets cheaper.

Paper: Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023), used as a training-free LVLM baseline
(e.g. in LightCompress / llmc). Bipartite soft matching: the patch tokens are split alternately into sets A
and B; each A token finds its most similar B token (cosine similarity); the ``r`` A tokens with the most
similar partner are merged into it by a size-weighted average, the rest stay. Each token carries its size
(how many patches it holds); attention is proportional: ``log(size)`` is added to the attention logits of
every key, so a merged token counts as the patches it holds. Prefix tokens (CLS, registers) never merge.
Here: merging happens after each encoder block up to the compressor's block (LLaVA's -2: 11 of DINOv2-S's 12
blocks); ``r`` per block is the remaining reduction spread evenly over the remaining blocks (more early on
when the budget needs it; at most half the tokens per block), so exactly ``budget`` patch tokens leave the compressor's block and go through the
compressor's per-token projection (``mlp2x_gelu``). Proportional attention reaches the HF blocks as an
additive attention mask (SDPA stays in use). Tokens are kept ordered by their first patch (row-major).
The encoder runs on fewer tokens from the first block on: bench's encoder FLOPs count the merged encoder.
Deviations: ToMe merges inside each block (after attention, before the MLP) by the attention keys averaged
over heads; here tokens merge between blocks (after the MLP) by the block's output features, so no block is
re-implemented; the merge schedule is fixed by the budget instead of ToMe's constant ``r``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError
from ..hf_compat import UPGRADE, version
from ..registry import REDUCTIONS
from .base import PatchReduction


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, members: torch.Tensor, prefix: int, r: int):
    """Merge ``r`` patch tokens of x (B, P + n, C) into their most similar partner.

    size (B, P + n) patches per token; members (B, n, N) float membership of the N original patches.
    Returns (x, size, members) with n - r patch tokens, ordered by their first original patch."""
    pre, t = x[:, :prefix], x[:, prefix:]  # (B, P, C), (B, n, C)
    s_pre, s = size[:, :prefix], size[:, prefix:]
    metric = F.normalize(t.float(), dim=-1)
    sim = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, nA, nB) cosine similarity A -> B
    best, partner = sim.max(dim=-1)  # (B, nA)
    order = best.argsort(dim=-1, descending=True, stable=True).unsqueeze(-1)  # (B, nA, 1) most similar first
    src, unm = order[:, :r], order[:, r:]  # merged A tokens, unmerged A tokens
    dst = partner.unsqueeze(-1).gather(1, src)  # (B, r, 1) their B partners

    def merge(v: torch.Tensor) -> torch.Tensor:  # v (B, n, D) summed into the partners
        a, b = v[:, ::2], v[:, 1::2]
        d = v.shape[-1]
        b = b.scatter_reduce(1, dst.expand(-1, -1, d), a.gather(1, src.expand(-1, -1, d)), reduce="sum")
        return torch.cat([a.gather(1, unm.expand(-1, -1, d)), b], dim=1)  # (B, n - r, D)

    s_new = merge(s.unsqueeze(-1).to(t.dtype))  # (B, n - r, 1)
    t_new = merge(t * s.unsqueeze(-1).to(t.dtype)) / s_new  # size-weighted average
    m_new = merge(members)  # (B, n - r, N)
    n_orig = members.shape[-1]
    first = torch.where(m_new > 0, torch.arange(n_orig, device=x.device), n_orig).min(dim=-1).values  # (B, n - r)
    keep = first.argsort(dim=-1).unsqueeze(-1)  # (B, n - r, 1) row-major order of first patches
    t_new, s_new = t_new.gather(1, keep.expand_as(t_new)), s_new.gather(1, keep)
    m_new = m_new.gather(1, keep.expand_as(m_new))
    return torch.cat([pre, t_new], dim=1), torch.cat([s_pre, s_new[..., 0].to(s.dtype)], dim=1), m_new


@REDUCTIONS.register("tome")
class ToMe(PatchReduction):
    def __init__(self, budget: int | None = None, model=None):
        super().__init__(budget, model)
        self._groups: torch.Tensor | None = None
        if model is not None:
            self.schedule(model.grid[0] * model.grid[1], self.num_blocks(model.encoder))

    def num_blocks(self, encoder) -> int:
        """Encoder blocks that run before the compressor reads its block (merging happens after each)."""
        idx = encoder.info.normalize_layer(self.compressor_layer())
        if idx == 0:
            raise CompactVLMError("tome merges tokens between encoder blocks, but the compressor reads the patch "
                                  "embeddings (block 0)", "use a compressor that reads a transformer block")
        return idx

    def schedule(self, n: int, blocks: int) -> list[int]:
        """Tokens merged after each of the ``blocks`` blocks, reducing ``n`` patch tokens to the budget."""
        self.num_output_tokens((n, 1))
        rs, cur, left = [], n, n - self.budget
        for i in range(blocks):
            cap = self.budget * 2 ** (blocks - 1 - i)  # most tokens after block i that can still reach the budget
            r = min(cur // 2, max(math.ceil(left / (blocks - i)), cur - cap))
            rs.append(r)
            cur, left = cur - r, left - r
        if left:
            raise CompactVLMError(
                f"tome merges at most half the tokens per block: {blocks} blocks take {n} patch tokens to {cur}, "
                f"not to budget={self.budget}", f"pick a budget of at least {cur}")
        return rs

    @contextlib.contextmanager
    def encoder_context(self, encoder):
        """Hooks on the encoder's blocks: proportional attention before each block, a merge after it."""
        if not encoder.blocks_take_mask:
            raise CompactVLMError(f"tome's proportional attention needs the encoder's layers to take an attention mask; "
                                  f"the {encoder.family} layers of transformers {version()} take none", UPGRADE)
        blocks = self.num_blocks(encoder)
        prefix = encoder.num_prefix
        state: dict = {}

        def before(i):
            def hook(module, args):
                h = args[0]  # (B, P + n, C)
                if i == 0:
                    n = h.shape[1] - prefix
                    state.update(rs=self.schedule(n, blocks), size=torch.ones(h.shape[:2], device=h.device),
                                 members=torch.eye(n, device=h.device).expand(h.shape[0], n, n))
                    if len(args) > 1 and args[1] is not None:
                        raise CompactVLMError("tome cannot merge tokens of an encoder run with extra tokens",
                                              "use it with a full-token compressor such as mlp2x_gelu")
                bias = state["size"].log().to(h.dtype)[:, None, None, :]  # (B, 1, 1, P + n) proportional attention
                return (h, bias) + tuple(args[2:])
            return hook

        def after(i):
            def hook(module, args, out):
                if i >= blocks or not state["rs"][i]:
                    return out
                h = out[0] if isinstance(out, tuple) else out
                h, state["size"], state["members"] = bipartite_merge(h, state["size"], state["members"], prefix,
                                                                     state["rs"][i])
                return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
            return hook

        handles = []
        try:
            for i, block in enumerate(encoder.blocks):
                handles.append(block.register_forward_pre_hook(before(i)))
                handles.append(block.register_forward_hook(after(i)))
            yield
        finally:
            for hd in handles:
                hd.remove()
        if "members" in state:
            self._groups = state["members"].argmax(dim=1)  # (B, N) output token of each patch

    def patch_groups(self) -> torch.Tensor | None:
        return self._groups

    def select(self, feats: VisionFeatures, layer: int) -> torch.Tensor:
        idx = feats.info.normalize_layer(layer)
        p = feats.num_prefix
        x = feats.hidden[idx][:, p : p + self.budget]  # (B, budget, C): the merged patch tokens
        if feats.hidden[idx].shape[1] - feats.num_extra - p != self.budget:
            raise RuntimeError(f"tome expected {self.budget} merged tokens in block {idx}, got "
                               f"{feats.hidden[idx].shape[1] - p}; run the encoder through CompactVLM.encode_images")
        return x
