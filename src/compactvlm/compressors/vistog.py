"""VisToG: learnable semantic tokens inside the frozen ViT + a Gumbel-softmax grouping layer.

Paper: "VisToG: visual token grouping" (../shared/papers/vistog_visual-token-grouping.txt), §3.2-3.4.

- ``tokens`` = N learnable semantic tokens are appended to the patch embeddings (after the patch projection,
  before block 1) and travel through every block of the frozen encoder. The encoder does the appending
  (``HFVisionEncoder.forward(..., extra_tokens=comp.extra_tokens(), extra_attention=comp.extra_attention)``).
- ``attention="isolated"`` (Eq. 5): image tokens (CLS/registers + patches) cannot attend to the semantic
  tokens, so every block's patch outputs equal the unmodified encoder's; ``"full"`` is the §4.5.1 ablation.
  The encoder runs isolated semantic tokens as their own stream beside the plain image blocks
  (``HFVisionEncoder.extra_stream``): the same features and gradients as one masked run, and with the encoder frozen
  no backward through the image tokens (a DINOv2-S training step's encoder + grouping 1.9x faster).
- Grouping layer (Eq. 2-4), on block ``layer`` (default -2, as LLaVA): image tokens = that block's patch
  tokens, semantic tokens = the extra tokens' output of the same block.
  ``logits_ij = (W_q Sem_i) . (W_k Img_j) / sqrt(C)``; ``A = softmax_i((logits + g) / tau)`` over the N
  semantic tokens for every image token j (g ~ Gumbel(0, 1) in training only; none in eval, so eval is a
  deterministic argmax); ``Â = onehot(argmax_i A) + A - sg(A)`` (straight-through);
  ``VIS_i = Sem_i + W_o (Σ_j Â_ij W_v Img_j / Σ_j Â_ij)``; then LLaVA's ``mlp2x_gelu`` to the LLM width.
  N tokens out.
- Training contract (§3.4): ``grouping=False`` is stage 1 — no semantic tokens, no grouping layer, the
  compressor is LLaVA's MLP over all H*W patches. ``grouping=True`` is stage 2. The projector is called
  ``proj`` in both, so a stage-1 checkpoint loads into stage 2 with only the parameters under
  ``STAGE2_PREFIXES`` (``semantic_tokens``, ``grouping.*``) new; see ``new_parameters_vs``.

Choices the paper leaves open (deviations, if any, are these):
- Logit scale 1/sqrt(C) (C = encoder width; the q/k projections keep width C) and Gumbel temperature
  ``tau`` (default 1.0); the paper writes neither.
- Empty groups: the hard count Σ_j Â_ij of a group no image token chose is 0; its denominator gets +1
  (equivalent to clamping it, but keeps the straight-through gradient finite) and, since W_o has no bias,
  ``VIS_i = Sem_i`` exactly. Gradients still reach such a group through the straight-through path, so a
  semantic token that is never chosen can still win image tokens later.
- Initialisation: semantic tokens ~ N(0, 0.02²) (as ViT/GroupViT's learned tokens); W_v and W_o start as
  the identity (W_v bias 0) so that at the start of stage 2 ``VIS_i = Sem_i + mean of the group's patch
  features`` — features the stage-1 projector was trained on; W_q/W_k use PyTorch's default init.
- The Gumbel noise is drawn here rather than with ``F.gumbel_softmax`` because that has no ``generator``
  argument; ``seed`` makes training noise reproducible (None: torch's global RNG).
- No LayerNorm in the grouping layer (Eq. 2-4 have none; GroupViT's grouping block does).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..encoders.base import EncoderInfo, VisionFeatures
from ..errors import CompactVLMError
from ..registry import COMPRESSORS
from .base import Compressor, mlp2x_gelu

#: Parameter-name prefixes that exist only with ``grouping=True`` (stage 2); everything else is stage 1's.
STAGE2_PREFIXES: tuple[str, ...] = ("semantic_tokens", "grouping.")


class GroupingLayer(nn.Module):
    """Eq. 2-4: hard Gumbel-softmax assignment of image tokens to semantic tokens, then per-group merge."""

    def __init__(self, dim: int, tau: float = 1.0, seed: int | None = None):
        super().__init__()
        self.q = nn.Linear(dim, dim)  # W_q, on semantic tokens
        self.k = nn.Linear(dim, dim)  # W_k, on image tokens
        self.v = nn.Linear(dim, dim)  # W_v, on image tokens
        self.o = nn.Linear(dim, dim, bias=False)  # W_o, on the merged group features (no bias: empty -> Sem_i)
        self.tau = float(tau)
        self.seed = seed
        self.generator: torch.Generator | None = None
        with torch.no_grad():
            for lin in (self.v, self.o):
                lin.weight.copy_(torch.eye(dim))
            self.v.bias.zero_()

    def logits(self, sem: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """(B, N, C), (B, M, C) -> (B, N, M) similarity of every semantic token to every image token."""
        q = self.q(sem)  # (B, N, C)
        k = self.k(img)  # (B, M, C)
        return q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, N, M)

    def _gumbel(self, like: torch.Tensor) -> torch.Tensor:
        gen = None
        if self.seed is not None:
            if self.generator is None or self.generator.device != like.device:
                self.generator = torch.Generator(device=like.device).manual_seed(int(self.seed))
            gen = self.generator
        u = torch.empty_like(like, dtype=torch.float32).exponential_(generator=gen)  # Exp(1)
        return -u.log().to(like.dtype)  # Gumbel(0, 1)

    def assign(self, sem: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2-3. Returns (Â, A), both (B, N, M): Â is one-hot over N in value, A's gradient in backward."""
        logits = self.logits(sem, img).float()  # (B, N, M)
        if self.training:
            logits = logits + self._gumbel(logits)
        soft = (logits / self.tau).softmax(dim=1)  # A: softmax over the N semantic tokens, per image token
        index = logits.argmax(dim=1, keepdim=True)  # (B, 1, M), the same argmax as A's, without ties of exp
        hard = torch.zeros_like(soft).scatter_(1, index, 1.0)  # (B, N, M) one-hot per column
        # straight-through; this order keeps the zeros of `hard` exactly 0 in value
        a_hat = hard - soft.detach() + soft
        return a_hat, soft

    def merge(self, sem: torch.Tensor, img: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        """Eq. 4: VIS_i = Sem_i + W_o (Σ_j Â_ij W_v Img_j / Σ_j Â_ij); (B, N, C)."""
        a_hat = a_hat.to(img.dtype)
        count = a_hat.sum(dim=2, keepdim=True)  # (B, N, 1), the group sizes in value
        empty = (count.detach().round() == 0).to(count.dtype)  # groups no image token chose
        summed = a_hat @ self.v(img)  # (B, N, C)
        return sem + self.o(summed / (count + empty))  # (B, N, C)

    def forward(self, sem: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        a_hat, _ = self.assign(sem, img)
        return self.merge(sem, img, a_hat)


@COMPRESSORS.register("vistog")
class VisToG(Compressor):
    @property
    def token_layout(self) -> str:
        return "groups" if self.grouping_enabled else "other"  # stage 1 (no grouping): every patch token

    def __init__(
        self,
        enc: EncoderInfo,
        llm_dim: int,
        tokens: int = 64,
        attention: str = "isolated",
        grouping: bool = True,
        layer: int = -2,
        tau: float = 1.0,
        seed: int | None = None,
    ):
        super().__init__(enc, llm_dim)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise CompactVLMError(
                f"vistog tokens={tokens!r} is not a positive integer",
                "set tokens to the number of semantic tokens (the paper uses 64 or 128)",
            )
        if attention not in ("isolated", "full"):
            raise CompactVLMError(
                f"vistog attention={attention!r} is unknown", "use 'isolated' (the paper) or 'full' (ablation)"
            )
        if not tau > 0:
            raise CompactVLMError(f"vistog tau={tau!r} must be > 0", "use the Gumbel-softmax temperature 1.0")
        enc.normalize_layer(layer)  # raises for a block the encoder does not have
        self.tokens = tokens
        self.extra_attention = attention
        self.grouping_enabled = bool(grouping)
        self.layer = layer
        c = enc.hidden_size
        if self.grouping_enabled:
            self.semantic_tokens = nn.Parameter(torch.randn(tokens, c) * 0.02)  # (N, C)
            self.grouping = GroupingLayer(c, tau=tau, seed=seed)
        self.proj = mlp2x_gelu(c, llm_dim)

    def feature_layers(self) -> list[int]:
        return [self.layer]

    def extra_tokens(self) -> torch.Tensor | None:
        return self.semantic_tokens if self.grouping_enabled else None

    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        if self.grouping_enabled:
            return self.tokens
        h, w = grid or self.enc.grid
        return h * w

    def _sem_img(self, feats: VisionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.grouping_enabled:
            raise CompactVLMError(
                "this vistog compressor has grouping=False (stage 1): there are no groups",
                "build it with grouping=True (stage 2)",
            )
        if feats.num_extra != self.tokens:
            raise CompactVLMError(
                f"vistog expects {self.tokens} semantic tokens in the encoder output, got {feats.num_extra}",
                "run the encoder with extra_tokens=comp.extra_tokens(), extra_attention=comp.extra_attention",
            )
        return feats.extra(self.layer), feats.patches(self.layer)  # (B, N, C), (B, H*W, C)

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        if not self.grouping_enabled:
            return self.proj(feats.patches(self.layer))  # stage 1: (B, H*W, D)
        sem, img = self._sem_img(feats)
        return self.proj(self.grouping(sem, img))  # (B, N, D)

    @torch.no_grad()
    def token_assignment(self, feats: VisionFeatures) -> torch.Tensor:
        """Group index of every patch, (B, H*W) long, by the noiseless argmax (as in eval)."""
        sem, img = self._sem_img(feats)
        return self.grouping.logits(sem, img).float().argmax(dim=1)  # (B, H*W)

    def new_parameters_vs(self, other_state_dict_keys: Iterable[str]) -> list[str]:
        """Names of this module's state-dict entries missing from another's (stage 1 -> stage 2: the
        ``STAGE2_PREFIXES`` ones). Load with ``load_state_dict(sd, strict=False)`` and check that the
        reported missing keys equal this list."""
        have = set(other_state_dict_keys)
        return [k for k in self.state_dict() if k not in have]


COMPRESSORS.variant("vistog_16", "vistog:tokens=16")
COMPRESSORS.variant("vistog_32", "vistog:tokens=32", default=True)
COMPRESSORS.variant("vistog_64", "vistog:tokens=64")
COMPRESSORS.variant("vistog_128", "vistog:tokens=128")
