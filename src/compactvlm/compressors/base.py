"""The compressor interface: encoder features -> (B, M, D_llm) tokens for the LLM.

A compressor is one ``nn.Module`` registered by name. It declares
- ``feature_layers()``: which encoder blocks it reads (see ``encoders.base`` for the index convention);
- ``extra_tokens()``: tokens to append inside the encoder (VisToG's semantic tokens), or None;
- ``num_output_tokens(grid)``: how many tokens it emits for a patch grid. This is the one place token
  counts are derived; the prompt builder, the merge check and the FLOPs code all read it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..encoders.base import EncoderInfo, VisionFeatures
from ..errors import CompactVLMError
from ..registry import COMPRESSORS


class Compressor(nn.Module):
    registry_name: str = "?"
    #: True for compressors with no learned parameters (pooling, random drop without a projector).
    training_free: bool = False
    #: attention between image tokens and ``extra_tokens`` inside the encoder ("isolated" | "full").
    extra_attention: str = "isolated"
    #: False for compressors that read the image itself (not only encoder features): training cannot cache
    #: frozen-encoder features for them (``model.features.check_cacheable``).
    cacheable_features: bool = True
    #: a per-token projection ``project(x)``: (B, N, C) encoder features -> (B, N, D_llm), for compressors that have
    #: one (``mlp2x_gelu``); patch reductions (random, VisionZip, DART, ...) select patches and then call it. None:
    #: the compressor already compresses or mixes tokens, and those reductions refuse it.
    project = None
    #: how the output tokens relate to the image patches, for token maps (``viz``): "windows" (k x k windows of
    #: patches, ``token_windows``; k = 1 is one token per patch), "kept" (a subset of patches, ``keep_indices``),
    #: "groups" (every patch assigned to one token, ``token_assignment``), "masks" (object tokens from masks,
    #: ``last_coverage`` after a forward, ``num_objects_kept``), "queries" (learned queries over the whole image,
    #: ``queries`` and a ``blocks`` decoder), "other" (no fixed relation).
    token_layout: str = "other"
    #: the test-time token budget in force (None: all tokens, as trained); set only through ``set_budget`` by
    #: compressors that declare one (``has_budget``).
    budget: int | None = None

    @property
    def has_budget(self) -> bool:
        """True when the token count can change at test time without retraining (``set_budget``)."""
        return type(self).set_budget is not Compressor.set_budget

    def set_budget(self, budget: int | None) -> None:
        """Test-time token budget (None = as trained). Only compressors that declare one override this (Mask-LLaVA's
        ``objects`` drops object tokens); the others refuse: use a training-free reduction instead."""
        raise CompactVLMError(
            f"compressor {self.registry_name!r} has no test-time budget",
            "use a training-free reduction (reduce=random, avgpool, visionzip, fastv, dart, divprune, ...) with the "
            "budget, or a compressor with a budget (objects)")

    @property
    def wants_given_masks(self) -> bool:
        """True when the compressor reads per-image object masks supplied with the data (``extra_state['masks']``,
        SceneQA's label maps), e.g. Mask-LLaVA's ``given`` mask source. Training loads them; blind controls
        are refused (the masks would still show where the objects are)."""
        return False

    def token_windows(self, grid: tuple[int, int] | None = None) -> tuple[int, int, int] | None:
        """How the output tokens tile the image: ``(rows, cols, per_window)`` when the output is ``rows x cols``
        equal windows of the patch grid in row-major order with ``per_window`` consecutive tokens each (full
        tokens: the patch grid and 1; STF k=2, E=1: the grid / 2 and 1), None when tokens are not tied to fixed
        windows (learned queries, groups, objects). The grounding objective (``train.grounding``) reads it."""
        return None

    def __init__(self, enc: EncoderInfo, llm_dim: int):
        super().__init__()
        self.enc = enc
        self.llm_dim = int(llm_dim)
        self.params: dict[str, Any] = {}

    def feature_layers(self) -> list[int]:
        return [-2]

    def extra_tokens(self) -> torch.Tensor | None:
        return None

    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        raise NotImplementedError

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        raise NotImplementedError

    def check_output(self, out: torch.Tensor, feats: VisionFeatures) -> torch.Tensor:
        """The count check where image features meet text embeddings starts here."""
        want = self.num_output_tokens(feats.grid)
        if out.ndim != 3 or out.shape[1] != want or out.shape[2] != self.llm_dim:
            raise RuntimeError(
                f"compressor {self.registry_name} emitted {tuple(out.shape)}, "
                f"declared (B, {want}, {self.llm_dim})"
            )
        return out

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"{self.registry_name}({', '.join(f'{k}={v}' for k, v in self.params.items())}) params={n:,}"


class WindowCompressor(Compressor):
    """A compressor whose output tiles the patch grid with k x k windows (stride k, row-major), ``per_window``
    consecutive tokens each, read from block ``layer``: LLaVA's projector (k=1), AvgPool, TokenConcat, STF (E per
    window). Its windows and token count are derived here, from ``k`` and ``per_window``, for every such method."""

    token_layout = "windows"
    k: int = 1
    per_window: int = 1
    layer: int = -2

    def __init__(self, enc: EncoderInfo, llm_dim: int, k: int = 1, layer: int = -2, per_window: int = 1):
        """Checks and stores the window geometry every such method shares: ``k`` divides the patch grid and
        ``layer`` is a block of the encoder."""
        super().__init__(enc, llm_dim)
        k = int(k)
        if k < 1:
            raise CompactVLMError(f"k={k} must be a positive window size", "use k=2 (the papers' default)")
        check_grid_divisible(enc.grid, k)
        enc.normalize_layer(layer)
        self.k, self.layer, self.per_window = k, layer, int(per_window)

    def feature_layers(self) -> list[int]:
        return [self.layer]

    def token_windows(self, grid: tuple[int, int] | None = None) -> tuple[int, int, int]:
        h, w = grid or self.enc.grid
        check_grid_divisible((h, w), self.k)
        return h // self.k, w // self.k, self.per_window

    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        rows, cols, per_window = self.token_windows(grid)
        return rows * cols * per_window


def create_compressor(name: str, enc: EncoderInfo, llm_dim: int, **params: Any) -> Compressor:
    """Build a registered compressor; ``params`` are its method options (k, E, tokens, ...). ``name`` may be a
    named variant (``stf_k2e1``), whose options ``params`` override."""
    from ..spec import resolve_variant

    name, params = resolve_variant(COMPRESSORS, name, params)
    cls = COMPRESSORS.get(name)
    try:
        comp = cls(enc=enc, llm_dim=llm_dim, **params)
    except TypeError as e:
        import inspect

        sig = inspect.signature(cls.__init__)
        opts = [p for p in sig.parameters if p not in ("self", "enc", "llm_dim")]
        raise CompactVLMError(
            f"bad option for compressor {name!r}: {e}",
            f"its options are: {', '.join(opts) or '(none)'}",
        ) from None
    comp.params = dict(params)
    return comp


def check_grid_divisible(grid: tuple[int, int], k: int, what: str = "k") -> None:
    h, w = grid
    if k < 1 or h % k or w % k:
        raise CompactVLMError(
            f"{what}={k} does not divide the {h}x{w} patch grid",
            f"pick {what} from the divisors of {h} and {w}: "
            + ", ".join(str(d) for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0),
        )


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """LLaVA-1.5's projector: Linear -> GELU -> Linear (names match HF's ``linear_1``/``linear_2``)."""
    return nn.Sequential(
        dict_module(linear_1=nn.Linear(in_dim, out_dim), act=nn.GELU(), linear_2=nn.Linear(out_dim, out_dim))
    )


def dict_module(**mods: nn.Module):
    from collections import OrderedDict

    return OrderedDict(mods)
