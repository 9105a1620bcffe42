"""VisionZip at test time: dominant tokens by the encoder's CLS attention plus contextual tokens merged by keys.

Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR 2025; the
training-free comparison of ../shared/papers/compact-vision-tokens_stf-mbtf_v2-review.txt Table 4).
With ``layer`` the compressor's block (LLaVA's -2, the second-to-last block):
- attention of that block, recomputed from its input (block ``layer - 1``'s output): the block's own
  pre-attention layernorm and q/k projections, ``softmax(q k^T / sqrt(d_head))`` per head, averaged over
  heads (DINOv2: ``norm1`` + ``attention.q_proj/k_proj``; CLIP/SigLIP: ``layer_norm1`` + ``self_attn``).
  No hook and no eager re-run of the encoder: one extra q/k projection of one block;
- dominant tokens: the ``dominant`` patches with the largest attention from CLS; encoders without CLS
  (SigLIP) rank patches by the mean attention they receive from all tokens instead;
- contextual tokens: of the remaining patches (row-major), ``contextual`` evenly spaced ones are targets
  (stride ``remaining // contextual``); every other remaining patch joins the target whose key (the block's
  keys, averaged over heads) is most cosine-similar; each group (target + members) is averaged;
- output: dominant tokens in spatial order, then the contextual tokens in target order, each the block's
  features, through the compressor's per-token projection.
Split: ``dominant`` + ``contextual`` = ``budget``; by default VisionZip's 54 + 10 of 64 scaled to the budget
(``contextual = round(budget * 10 / 64)``), either part settable.
Deviations: VisionZip always keeps CLS as one of its dominant tokens; here every token is a patch feature
(the LLaVA "patch" select strategy the projector was trained with), so the budget counts patches only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError
from ..hf_compat import UPGRADE, version
from ..registry import REDUCTIONS
from .base import PatchReduction, check_budget

#: VisionZip's default split of 64 tokens.
DEFAULT_DOMINANT, DEFAULT_CONTEXTUAL = 54, 10


def block_attention(encoder, block_index: int, x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention probabilities and keys of encoder block ``block_index`` (1-based) for its input ``x``.

    x: (B, S, C) = prefix + patches. Returns (probs (B, heads, Q, S), keys (B, heads, S, d_head)) where Q = 1
    (the CLS row) when ``num_prefix`` > 0, else all S rows.
    """
    block = encoder.blocks[block_index - 1]
    norm = getattr(block, "norm1", None) or getattr(block, "layer_norm1", None)
    attn = getattr(block, "attention", None) or getattr(block, "self_attn", None)
    if norm is None or attn is None or not hasattr(attn, "q_proj") or not hasattr(attn, "k_proj"):
        raise CompactVLMError(
            f"visionzip cannot read the attention of a {encoder.family!r} encoder block: it has no q_proj / k_proj "
            f"in transformers {version()}", "use a CLIP or SigLIP encoder, or for DINOv2: " + UPGRADE)
    b, s, _ = x.shape
    heads = encoder.info.num_heads
    y = norm(x)  # (B, S, C)
    q_in = y[:, :1] if num_prefix else y
    q = attn.q_proj(q_in)
    k = attn.k_proj(y)
    d = k.shape[-1] // heads
    q = q.view(b, q.shape[1], heads, d).transpose(1, 2)  # (B, h, Q, d)
    k = k.view(b, s, heads, d).transpose(1, 2)  # (B, h, S, d)
    probs = (q @ k.transpose(-1, -2) * d**-0.5).softmax(dim=-1)  # (B, h, Q, S)
    return probs, k


@REDUCTIONS.register("visionzip")
class VisionZip(PatchReduction):
    def __init__(self, budget: int | None = None, model=None, dominant: int | None = None,
                 contextual: int | None = None):
        budget = check_budget("visionzip", budget)
        if dominant is None and contextual is None:
            contextual = int(budget * DEFAULT_CONTEXTUAL / (DEFAULT_DOMINANT + DEFAULT_CONTEXTUAL) + 0.5)
        if dominant is None:
            dominant = budget - int(contextual)
        if contextual is None:
            contextual = budget - int(dominant)
        dominant, contextual = int(dominant), int(contextual)
        if dominant < 0 or contextual < 0 or dominant + contextual != budget:
            raise CompactVLMError(
                f"visionzip split dominant={dominant} + contextual={contextual} does not make budget={budget}",
                "give non-negative dominant/contextual that add up to the budget (or give only one of them)",
            )
        self.dominant, self.contextual = dominant, contextual
        super().__init__(budget, model)
        self.params.update(dominant=dominant, contextual=contextual)

    def feature_layers(self) -> list[int]:
        m = self.vlm
        info = m.encoder.info if m is not None else None
        layer = self.compressor_layer()
        if info is None:
            return [layer - 1] if layer < 0 else [layer, layer - 1]
        idx = info.normalize_layer(layer)
        if idx == 0:
            raise CompactVLMError("visionzip needs the attention of the compressor's block, but it reads the "
                                  "patch embeddings (block 0)", "use a compressor that reads a transformer block")
        return [idx - 1, idx]

    def scores(self, feats: VisionFeatures, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H*W) importance of each patch and (B, H*W, d_head) keys averaged over heads (block ``idx``)."""
        encoder = feats.extra_state.get("encoder")
        if encoder is None:
            raise CompactVLMError("visionzip needs the encoder in feats.extra_state['encoder']",
                                  "run it through CompactVLM.encode_images")
        if idx - 1 not in feats.hidden:
            raise KeyError(f"block {idx - 1} was not requested from the encoder (have {sorted(feats.hidden)})")
        h, w = feats.grid
        p = feats.num_prefix
        x = feats.hidden[idx - 1][:, : p + h * w]  # (B, P + H*W, C); extra tokens dropped
        probs, k = block_attention(encoder, idx, x, p)  # (B, h, Q, S), (B, h, S, d)
        if p:
            score = probs[:, :, 0, p:].mean(dim=1)  # (B, H*W) attention from CLS, mean over heads
        else:
            score = probs[:, :, :, p:].mean(dim=(1, 2))  # (B, H*W) mean attention received
        keys = k.mean(dim=1)[:, p:]  # (B, H*W, d)
        return score, keys

    def select(self, feats: VisionFeatures, layer: int) -> torch.Tensor:
        idx = feats.info.normalize_layer(layer)
        x = feats.patches(layer)  # (B, N, C)
        b, n, c = x.shape
        score, keys = self.scores(feats, idx)
        dom = score.topk(self.dominant, dim=1).indices.sort(dim=1).values  # (B, d)
        out = [torch.gather(x, 1, dom.unsqueeze(-1).expand(-1, -1, c))]  # (B, d, C)
        if self.contextual:
            rest_mask = torch.ones(b, n, dtype=torch.bool, device=x.device).scatter_(1, dom, False)
            r = n - self.dominant
            rest = torch.arange(n, device=x.device).expand(b, n)[rest_mask].view(b, r)  # (B, R) row-major
            x_rest = torch.gather(x, 1, rest.unsqueeze(-1).expand(-1, -1, c))  # (B, R, C)
            k_rest = F.normalize(torch.gather(keys, 1, rest.unsqueeze(-1).expand(-1, -1, keys.shape[-1])), dim=-1)
            step = max(1, r // self.contextual)
            tgt = torch.arange(0, r, step, device=x.device)[: self.contextual]  # (Ct,)
            is_tgt = torch.zeros(r, dtype=torch.bool, device=x.device)
            is_tgt[tgt] = True
            sim = k_rest[:, ~is_tgt] @ k_rest[:, tgt].transpose(1, 2)  # (B, R - Ct, Ct) cosine similarity
            assign = F.one_hot(sim.argmax(dim=-1), self.contextual).to(x.dtype)  # (B, R - Ct, Ct)
            sums = x_rest[:, tgt] + assign.transpose(1, 2) @ x_rest[:, ~is_tgt]  # (B, Ct, C)
            counts = 1 + assign.sum(dim=1).unsqueeze(-1)  # (B, Ct, 1)
            out.append(sums / counts)
        return torch.cat(out, dim=1)  # (B, budget, C)
