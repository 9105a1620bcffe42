"""The test-time reduction interface: a training-free way to send fewer vision tokens through the LLM.

A reduction is one ``nn.Module`` registered by name in ``REDUCTIONS`` and set as ``CompactVLM.reduction``.
Every reduction is built the same way, ``REDUCTIONS.create(name, budget=N, model=model)`` (method options are
extra keyword arguments with defaults), and declares
- ``feature_layers()``: encoder blocks it needs besides the compressor's;
- ``num_output_tokens(grid)``: the vision tokens placed in the prompt (the model reads it instead of the
  compressor's count);
- ``forward(feats, compressor)``: ``(B, M, D_llm)`` tokens, called instead of ``compressor(feats)``;
- ``equivalent_tokens(grid)``: the number of vision tokens a plain model would need for the same LLM cost
  (``budget`` for reductions before the LLM; FastV's first K layers still see all tokens).

Two kinds exist:
- ``PatchReduction`` (random, avgpool, visionzip, dart, divprune, tome) selects or merges patch features of the
  compressor's block and then applies the compressor's per-token projection ``compressor.project(x)``
  (``mlp2x_gelu`` has one), so a model trained with all tokens runs with ``budget`` tokens, unchanged;
  ``ProjectedSelection`` (dart, divprune) projects every patch and selects among the projected tokens; tome
  merges tokens inside the encoder through ``encoder_context``;
- reductions with ``in_llm = True`` (fastv, pyramiddrop, sparsevlm) keep all tokens in the prompt and prune
  inside the LLM; the model hands its prefill and generation to ``llm_forward`` / ``generate`` of the reduction.

The model is held through a weak reference: a reduction is a submodule of the model and must not own it.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn

from ..encoders.base import VisionFeatures
from ..errors import CompactVLMError


class Reduction(nn.Module):
    registry_name: str = "?"
    #: True when the reduction prunes inside the LLM (the model delegates prefill and generation to it).
    in_llm: bool = False
    #: True when ``forward`` reads only the encoder blocks (``feats.hidden``) and the compressor: evaluation may
    #: then take the blocks from its cache (``model.features``) instead of running the encoder again.
    cacheable_features: bool = False
    #: in-LLM reductions: (B, T') prompt positions the last prefill kept after its last drop (``viz`` draws them)
    last_kept_positions: torch.Tensor | None = None

    def __init__(self, model=None):
        super().__init__()
        self._model_ref = weakref.ref(model) if model is not None else None
        self.params: dict = {}

    @property
    def vlm(self):
        """The CompactVLM this reduction was built for, or None."""
        return self._model_ref() if self._model_ref is not None else None

    def _require_model(self):
        m = self.vlm
        if m is None:
            raise CompactVLMError(f"reduction {self.registry_name!r} was built without a model",
                                  f"create it as REDUCTIONS.create({self.registry_name!r}, budget=N, model=model)")
        return m

    def feature_layers(self) -> list[int]:
        return []

    def encoder_context(self, encoder):
        """A context the model runs its vision encoder in (``tome`` merges tokens between the encoder's blocks
        there); by default nothing."""
        return contextlib.nullcontext()

    @property
    def prune_layers(self) -> list[int]:
        """In-LLM reductions: the LLM layers after which vision tokens are dropped, in order; [] for the others."""
        return []

    def token_windows(self, grid: tuple[int, int]) -> tuple[int, int, int] | None:
        """As ``Compressor.token_windows``: ``(rows, cols, per_window)`` when the output tokens are equal windows of
        the patch grid in row-major order (test-time avgpool to a side dividing the grid), else None."""
        return None

    def patch_groups(self) -> torch.Tensor | None:
        """(B, H*W) index of the output token each patch went into, for reductions that merge patches inside the
        encoder (tome; the token maps of ``viz`` draw them), after the last encoder run; None for the others."""
        return None

    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        raise NotImplementedError

    def equivalent_tokens(self, grid: tuple[int, int] | None = None) -> float:
        """Vision tokens of a plain model with the same LLM cost (see the module docstring)."""
        return float(self.num_output_tokens(grid))

    def cost_note(self, grid: tuple[int, int] | None = None) -> str | None:
        """In-LLM reductions: how their vision tokens become equivalent tokens (``bench`` prints it, study results
        record it); None for the others, whose tokens are all the LLM sees."""
        if not self.in_llm:
            return None
        n, layers = self.num_output_tokens(grid), self.prune_layers
        return (f"{self.registry_name} keeps all {n} vision tokens in the prompt; its first {layers[0]} LLM layers see "
                f"all of them, the layers after {', '.join(map(str, layers))} only the kept ones: "
                f"{self.equivalent_tokens(grid):.1f} equivalent tokens (same LLM cost in a plain model)")

    def forward(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.registry_name}({', '.join(f'{k}={v}' for k, v in self.params.items())})"

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


def check_budget(name: str, budget: int | None, available: int | None = None, what: str = "patch tokens") -> int:
    """``budget`` as an int in 1..available, or a CompactVLMError saying what to pass."""
    if budget is None:
        raise CompactVLMError(f"reduction {name!r} needs a token budget", "pass --budget N (budget=N), e.g. 64")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or int(budget) != budget:
        raise CompactVLMError(f"budget must be a whole number of tokens, got {budget!r}", "pass e.g. --budget 64")
    budget = int(budget)
    if budget < 1:
        raise CompactVLMError(f"budget={budget} keeps no vision token", "pass a budget of at least 1")
    if available is not None and budget > available:
        raise CompactVLMError(f"budget={budget} exceeds the {available} {what} available",
                              f"pick a budget in 1..{available}")
    return budget


class PatchReduction(Reduction):
    """Select or merge ``budget`` patch features of the compressor's block, then project them per token."""

    def __init__(self, budget: int | None = None, model=None):
        super().__init__(model)
        self.budget = check_budget(self.registry_name, budget)
        self.params = {"budget": self.budget}
        if model is not None:
            self.check_compressor(model.compressor)
            self.num_output_tokens(model.grid)

    # ---- what the model asks --------------------------------------------------------------------------
    def num_output_tokens(self, grid: tuple[int, int] | None = None) -> int:
        if grid is None:
            m = self.vlm
            grid = m.grid if m is not None else None
        if grid is not None:
            check_budget(self.registry_name, self.budget, grid[0] * grid[1], f"patch tokens of the {grid[0]}x{grid[1]} grid")
        return self.budget

    def compressor_layer(self, compressor=None) -> int:
        """The encoder block the compressor projects (``layer`` attribute; LLaVA's -2 otherwise)."""
        if compressor is None:
            m = self.vlm
            compressor = m.compressor if m is not None else None
        return int(getattr(compressor, "layer", -2))

    def check_compressor(self, compressor) -> None:
        if compressor.project is None:
            name = compressor.registry_name
            raise CompactVLMError(
                f"reduction {self.registry_name!r} selects patch tokens and needs a compressor with a per-token "
                f"projection (`project`); compressor {name!r} has none (it already compresses, or mixes tokens)",
                "use it with a full-token compressor such as mlp2x_gelu, or use --reduce fastv, which prunes "
                "inside the LLM after any compressor",
            )

    def kept_patches(self, feats: VisionFeatures, compressor) -> torch.Tensor | None:
        """(B, budget) indices of the patches kept, for selections that depend on the image content (dart,
        divprune; the token maps of ``viz`` draw them); None for the others."""
        return None

    # ---- the work -------------------------------------------------------------------------------------
    def select(self, feats: VisionFeatures, layer: int) -> torch.Tensor:
        """(B, budget, C) features to project; implemented by each method."""
        raise NotImplementedError

    def forward(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        self.check_compressor(compressor)
        self.num_output_tokens(feats.grid)
        x = self.select(feats, self.compressor_layer(compressor))  # (B, budget, C)
        out = compressor.project(x)  # (B, budget, D)
        if out.ndim != 3 or out.shape[1] != self.budget:
            raise RuntimeError(f"reduction {self.registry_name} emitted {tuple(out.shape)}, declared (B, {self.budget}, D)")
        return out


class ProjectedSelection(PatchReduction):
    """Keep ``budget`` of the compressor's per-token outputs (the LLM's input embeddings), chosen by their content.

    Every patch is projected (``compressor.project``), ``keep`` picks (B, budget) of them, kept tokens stay in
    row-major (spatial) order."""

    def keep(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, budget) sorted indices of the tokens (B, N, D) to keep; implemented by each method."""
        raise NotImplementedError

    def kept_patches(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        x = feats.patches(self.compressor_layer(compressor))  # (B, N, C)
        return self.keep(compressor.project(x))

    def select(self, feats: VisionFeatures, layer: int) -> torch.Tensor:
        x = feats.patches(layer)  # (B, N, C)
        idx = self.kept_patches(feats, self._require_model().compressor)  # (B, budget)
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, budget, C)

    def forward(self, feats: VisionFeatures, compressor) -> torch.Tensor:
        self.check_compressor(compressor)
        self.num_output_tokens(feats.grid)
        tokens = compressor.project(feats.patches(self.compressor_layer(compressor)))  # (B, N, D)
        idx = self.keep(tokens.detach())  # (B, budget); the choice is not differentiated (training with it active)
        return torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, budget, D)


# ---- greedy decoding for reductions that prune inside the LLM (their own KV cache) -----------------------------
def check_greedy(name: str, do_sample: bool, num_beams: int, kwargs: dict) -> None:
    if do_sample or num_beams != 1 or kwargs:
        extra = ", ".join(sorted(kwargs)) or ("do_sample" if do_sample else "num_beams")
        raise CompactVLMError(f"{name} generation is greedy only (got {extra})",
                              f"drop the sampling/beam options, or run without --reduce {name}")


def eos_tensor(llm, eos_token_id, device) -> torch.Tensor:
    """The end-of-sequence ids (the LLM's generation config when None) as a 1-D tensor."""
    if eos_token_id is None:
        eos_token_id = llm.generation_config.eos_token_id
    return torch.tensor([] if eos_token_id is None else
                        (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]), device=device)


def greedy_loop(logits: torch.Tensor, step, max_new_tokens: int, pad_token_id: int | None,
                eos: torch.Tensor) -> torch.Tensor:
    """Greedy tokens from the prefill's ``logits`` (B, 1, V); ``step(tok)`` feeds one token per row (B,) through
    the caller's pruned cache and returns the next logits. Finished rows are padded; (B, new tokens) ids."""
    b = logits.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=logits.device)
    out = []
    for i in range(max_new_tokens):
        tok = logits[:, -1].argmax(dim=-1)  # (B,)
        if pad_token_id is not None:
            tok = tok.masked_fill(done, pad_token_id)
        out.append(tok)
        done |= torch.isin(tok, eos)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = step(tok)
    if not out:
        return torch.zeros(b, 0, dtype=torch.long, device=logits.device)
    return torch.stack(out, dim=1)
