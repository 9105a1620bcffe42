"""Object embeddings for Mask-LLaVA's object tokens, registered in ``OBJECT_EMBEDDERS``.

Mask-LLaVA (Jahagirdar et al., "When LLaVA Meets Objects") embeds each mask with MaskInversion (Bousselham
et al., "MaskInversion: Localized Embeddings via Optimization of Explainability Maps"). Both embedders
take, per image, the masks as patch coverage (float (K, H, W): fraction of each patch inside the mask) and
return (K, C) embeddings in the encoder's width.

- ``masked_pool`` (default, fast): coverage-weighted average of the patch tokens of block ``patch_layer``:
  ``e_k = sum_n m_kn x_n / sum_n m_kn``. Not in the paper; the cheap stand-in.
- ``maskinversion``: per mask, start from the image's CLS token ``c`` (block ``cls_layer``) and take
  ``iterations`` AdamW steps (``lr``, no weight decay) on ``e`` so that the explainability map of ``e``
  matches the mask. Choices where the summary is silent (all options):
  * explainability map = gradient x input at the input of the encoder's last blocks (``expl_layer``, default
    -2: the input of the last block): with ``s = <CLS_out, e/|e|>`` (CLS_out = CLS of ``cls_layer`` recomputed
    from ``expl_layer``), ``A_n = relu(sum_c ds/dh_nc * h_nc)`` over patch tokens ``h_n``, divided by its max.
    A dot product with the unit embedding is used rather than cosine(CLS_out, e): the gradient of the cosine
    vanishes at the starting point e = CLS_out, so optimisation could not start;
  * loss = soft dice(A, coverage) + ``reg`` * (1 - cos(e, c)) (the optional cosine regulariser; default 0.1);
  * ``e`` is optimised as a direction (unit vector, AdamW steps of size ~``lr`` per coordinate) and returned
    with the norm of ``c``, so object tokens live on the CLS token's scale;
  * all masks of an image are optimised together in one batch (independent losses, summed);
  * runs under ``torch.inference_mode(False)`` + ``torch.enable_grad()`` (works inside ``no_grad`` /
    ``inference_mode`` callers), attention forced to SDPA's math kernel (double backward), gradients only
    w.r.t. the activations and ``e`` (``autograd.grad``), so the encoder's parameters never get ``.grad``;
    the returned embeddings are detached (the encoder is frozen).
  Needs ``extra_state["encoder"]`` (the ``HFVisionEncoder``) to run the last blocks again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError
from ..registry import OBJECT_EMBEDDERS


class ObjectEmbedder:
    """``__call__(feats, coverage) -> list of (K_i, C)``; ``coverage`` is a list of float (K_i, H, W)."""

    registry_name: str = "?"

    def __init__(self, patch_layer: int = -2, cls_layer: int = -1):
        self.patch_layer = int(patch_layer)
        self.cls_layer = int(cls_layer)

    def feature_layers(self) -> list[int]:
        return [self.patch_layer]

    def settings(self) -> str:
        return self.registry_name

    def __call__(self, feats: VisionFeatures, coverage: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError


def create_object_embedder(name: str, **options) -> ObjectEmbedder:
    cls = OBJECT_EMBEDDERS.get(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise CompactVLMError(f"bad option for object embedding {name!r}: {e}",
                              "see the docstring of compactvlm.compressors.object_embed") from None


def masked_mean(x: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted mean patch feature of each mask: x (H*W, C), cov (K, H, W) -> (K, C)."""
    wts = cov.flatten(1).to(x.dtype)  # (K, H*W)
    return wts @ x / wts.sum(dim=1, keepdim=True).clamp(min=1e-6)


@OBJECT_EMBEDDERS.register("masked_pool")
class MaskedPool(ObjectEmbedder):
    def settings(self) -> str:
        return f"masked_pool(layer={self.patch_layer})"

    def __call__(self, feats: VisionFeatures, coverage: list[torch.Tensor]) -> list[torch.Tensor]:
        x = feats.patches(self.patch_layer)  # (B, H*W, C)
        return [masked_mean(xb, cov) for xb, cov in zip(x, coverage)]  # (K, C) each


def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - Dice per row of (K, N) maps in [0, 1]: (K,)."""
    inter = (pred * target).sum(dim=-1)
    return 1 - (2 * inter + eps) / (pred.sum(dim=-1) + target.sum(dim=-1) + eps)


@OBJECT_EMBEDDERS.register("maskinversion")
class MaskInversion(ObjectEmbedder):
    def __init__(self, patch_layer: int = -2, cls_layer: int = -1, expl_layer: int = -2, iterations: int = 10,
                 lr: float = 0.02, reg: float = 0.1):
        super().__init__(patch_layer, cls_layer)
        if int(iterations) < 0 or float(lr) <= 0 or float(reg) < 0:
            raise CompactVLMError(f"maskinversion needs iterations >= 0, lr > 0, reg >= 0 (got {iterations}, {lr}, {reg})",
                                  "use e.g. iterations=10 lr=0.02 reg=0.1")
        self.expl_layer = int(expl_layer)
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.reg = float(reg)
        #: per image of the last call: the mean loss before each step and after the last one (iterations + 1).
        self.last_losses: list[list[float]] = []

    def feature_layers(self) -> list[int]:
        return [self.expl_layer, self.cls_layer]

    def settings(self) -> str:
        return (f"maskinversion(expl={self.expl_layer},cls={self.cls_layer},it={self.iterations},lr={self.lr},"
                f"reg={self.reg})")

    def _tail(self, feats: VisionFeatures, encoder) -> tuple[int, int, list]:
        info = feats.info
        lo, hi = info.normalize_layer(self.expl_layer), info.normalize_layer(self.cls_layer)
        if lo >= hi:
            raise CompactVLMError(f"maskinversion: expl_layer={self.expl_layer} must come before cls_layer={self.cls_layer}",
                                  "use e.g. expl_layer=-2 cls_layer=-1")
        return lo, hi, list(encoder.blocks[lo:hi])

    @staticmethod
    def cls_out(blocks, h: torch.Tensor, num_prefix: int, num_patches: int) -> torch.Tensor:
        """CLS of the last block recomputed from block input h (K, S, C): (K, C) (patch mean without CLS)."""
        x = h
        for blk in blocks:
            x = blk(x, None)
            x = x[0] if isinstance(x, tuple) else x
        return x[:, 0] if num_prefix else x[:, num_prefix: num_prefix + num_patches].mean(dim=1)

    @staticmethod
    def explain(cls_out: torch.Tensor, h: torch.Tensor, e: torch.Tensor, num_prefix: int, num_patches: int,
                create_graph: bool = False) -> torch.Tensor:
        """Explainability maps of embeddings e (K, C), given ``cls_out = cls_out(blocks, h)`` with h (K, S, C)
        requiring grad: (K, N) in [0, 1] (gradient x input of <CLS_out, e/|e|> over patch tokens, relu, / max).
        The graph of ``cls_out`` is kept, so one forward serves every step."""
        s = (cls_out * F.normalize(e, dim=-1)).sum()
        (g,) = torch.autograd.grad(s, h, create_graph=create_graph, retain_graph=True)
        a = torch.relu((g * h)[:, num_prefix: num_prefix + num_patches].sum(dim=-1))  # (K, N)
        return a / (a.amax(dim=-1, keepdim=True) + 1e-8)

    def invert(self, blocks, h: torch.Tensor, c: torch.Tensor, target: torch.Tensor, num_prefix: int,
               ) -> tuple[torch.Tensor, list[float]]:
        """One image: block input h (S, C), start c (C), target coverage (K, N) -> ((K, C), losses)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        k, n = target.shape
        with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            hk = h.detach().clone()[None].expand(k, -1, -1).clone().requires_grad_(True)  # (K, S, C)
            c0 = F.normalize(c.detach().clone().float(), dim=-1)  # (C,)
            u = c0.expand(k, -1).clone().to(h.dtype).requires_grad_(True)  # (K, C): unit directions
            target = target.detach().clone().to(h.dtype)
            opt = torch.optim.AdamW([u], lr=self.lr, weight_decay=0.0)
            cls_out = self.cls_out(blocks, hk, num_prefix, n)  # (K, C), independent of u: computed once
            losses = []
            for it in range(self.iterations + 1):
                last = it == self.iterations
                a = self.explain(cls_out, hk, u, num_prefix, n, create_graph=not last)
                loss = soft_dice(a, target) + self.reg * (1 - F.cosine_similarity(u.float(), c0[None], dim=-1))
                losses.append(float(loss.detach().mean()))
                if last:
                    break
                (grad,) = torch.autograd.grad(loss.sum(), u)
                u.grad = grad
                opt.step()
        emb = F.normalize(u.detach(), dim=-1) * c.detach().norm()
        return emb.to(c.dtype), losses

    def __call__(self, feats: VisionFeatures, coverage: list[torch.Tensor]) -> list[torch.Tensor]:
        encoder = feats.extra_state.get("encoder")
        if encoder is None or not hasattr(encoder, "blocks"):
            raise CompactVLMError("object_embed='maskinversion' needs the vision encoder in extra_state['encoder']",
                                  "run through CompactVLM.encode_images (it fills extra_state), or use "
                                  "object_embed=masked_pool")
        if feats.num_extra:
            raise CompactVLMError("maskinversion cannot run with extra encoder tokens", "use it without extra_tokens")
        lo, _, blocks = self._tail(feats, encoder)
        if lo not in feats.hidden:
            raise CompactVLMError(f"maskinversion needs encoder block {self.expl_layer}",
                                  "request it via the compressor's feature_layers()")
        h_all = feats.hidden[lo]  # (B, P + H*W, C)
        c_all = feats.cls(self.cls_layer)  # (B, C)
        out, self.last_losses = [], []
        for b, cov in enumerate(coverage):
            emb, losses = self.invert(blocks, h_all[b], c_all[b], cov.flatten(1), feats.num_prefix)
            out.append(emb)
            self.last_losses.append(losses)
        return out
