"""What reaches the LLM, on the patch grid: one ``TokenMap`` per (model, image), for drawing.

    tmap = token_map(model, pixel_values)            # pixel_values (1, 3, S, S) from model.processor
    tmap.kind   # "windows" | "kept" | "groups" | "masks" | "all" | "queries"

Kinds and where they come from: a compressor's kind is its declared ``Compressor.token_layout``; a reduction's
follows its base class (``in_llm``, ``PatchReduction``) and what it declares there:
- ``windows``  compressors whose ``token_windows`` tile the grid with k x k windows, k >= 2 (``WindowCompressor``:
               STF, AvgPool, TokenConcat), and reductions that declare square ones (``Reduction.token_windows``:
               test-time avgpool to a side dividing the grid): k x k windows, E tokens each.
- ``kept``     patch tokens kept one-to-one: the ``keep_indices`` of a "kept" compressor (random_drop), the
               ``kept_patches(feats, compressor)`` of a ``PatchReduction`` (random, DART, DivPrune); any other
               ``PatchReduction`` (a ``select(feats, layer)`` that picks or averages patch features, e.g.
               VisionZip) is probed by linearity: running ``select`` on one-hot patch features returns each
               output token's weights over the patches, so single-patch tokens are *kept* and multi-patch
               tokens are *merged* (VisionZip's contextual tokens; drawn in a second colour). The probe is
               checked against the real selection and abandoned if they differ. Reductions that prune inside
               the LLM (``in_llm``: FastV, PyramidDrop, SparseVLM) are run on a prompt and read back from
               ``last_kept_positions`` (the last stage's, after ``prune_layers[-1]``; both on ``Reduction``).
- ``groups``   ``token_assignment(feats)`` -> group index per patch (VisToG's grouping layer); ToMe (merging
               inside the encoder) reports its groups through ``patch_groups()`` after the encoder ran.
- ``masks``    ``last_coverage`` + ``num_objects_kept()`` after a forward (Mask-LLaVA ``objects``): the masks in
               score order, the first ``masks_kept`` of which reach the LLM as object tokens.
- ``queries``  a learned-query cross-attention compressor (``queries`` + an ``nn.TransformerDecoder`` in
               ``blocks``: ``qformer``): the last layer's cross-attention from the queries to the patches,
               averaged over queries and heads; ``heat`` None ("global") if it cannot be read.
- ``all``      every patch becomes one token (``mlp2x_gelu``, 1 x 1 windows); also layout "other" (no fixed
               relation), with a ``note`` when the count is not the patch count, so any compressor still renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..encoders.base import VisionFeatures
from ..model.prompting import IMAGE_TOKEN_ID
from ..reduction.base import PatchReduction

KINDS = ("windows", "kept", "groups", "masks", "all", "queries")


@dataclass
class TokenMap:
    """What the LLM receives from one image, on the (H, W) patch grid (patch index = row * W + col)."""

    kind: str
    grid: tuple[int, int]
    num_tokens: int  # vision tokens placed in the prompt (model.num_image_tokens())
    method: str
    k: int | None = None  # windows: window side in patches
    E: int | None = None  # windows: tokens per window
    kept: np.ndarray | None = None  # kept: (n,) patch indices that reach the LLM as their own token
    merged: np.ndarray | None = None  # kept: (H*W,) id of the merged token a patch joined, -1 = none
    groups: np.ndarray | None = None  # groups: (H*W,) group index per patch
    num_groups: int | None = None  # groups: number of group tokens (including empty groups)
    masks: np.ndarray | None = None  # masks: (K, H, W) patch coverage in [0, 1], score order
    masks_kept: int = 0  # masks: the first masks_kept masks reach the LLM as object tokens
    pool_grid: int | None = None  # masks: side of the pooled-region grid (Mask-LLaVA's pooled tokens)
    heat: np.ndarray | None = None  # queries: (H*W,) cross-attention weight per patch, None = global
    llm_kept: int | None = None  # tokens left after in-LLM pruning (FastV), else None
    notes: list[str] = field(default_factory=list)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


# ---- helpers ----------------------------------------------------------------------------------------------
def method_label(model) -> str:
    """``stf(k=2, E=1)``, ``mlp2x_gelu + visionzip(budget=64, ...)``."""
    comp = model.compressor
    params = comp.params
    label = comp.registry_name
    if params:
        label += "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    budget = comp.budget
    if isinstance(budget, int) and "budget" not in params:
        label += f" budget={budget}"
    if model.reduction is not None:
        label += " + " + model.reduction.describe()
    return label


def _windows_k(comp, grid: tuple[int, int]) -> tuple[int, int] | None:
    """(k, E) when the compressor declares k x k windows with k >= 2 and E tokens each (``token_windows``, declared
    on ``Compressor``); None for tokens not tied to fixed windows, and for k = 1 (every token one patch)."""
    tiles = comp.token_windows(grid)
    if tiles is None:
        return None
    rows, cols, e = tiles
    h, w = grid
    k = h // rows
    if k < 2 or rows * k != h or cols * k != w:
        return None
    return k, e


def _token_patches(model, grid: tuple[int, int]) -> list[np.ndarray] | None:
    """Patch indices behind each compressor output token, for compressors whose tokens are patches or
    windows (used to place FastV's kept tokens); None otherwise."""
    comp = model.compressor
    h, w = grid
    n = comp.num_output_tokens(grid)
    if n == h * w and _compressor_kind(comp) == "all":
        return [np.array([i]) for i in range(n)]
    kw = _windows_k(comp, grid)
    if kw is None:
        return None
    k, e = kw
    out = []
    for r in range(h // k):
        for s in range(w // k):
            cells = np.array([(r * k + i) * w + s * k + j for i in range(k) for j in range(k)])
            out.extend([cells] * e)
    return out


def _compressor_kind(comp) -> str:
    """The compressor's declared ``token_layout`` as a token-map kind ("all": one token per patch or no fixed
    relation to the patches)."""
    layout = comp.token_layout
    if layout == "windows" and _windows_k(comp, comp.enc.grid) is None:
        return "all"  # 1 x 1 windows: every patch
    return "all" if layout == "other" else layout


def _call_keep_indices(comp, n: int, device) -> np.ndarray:
    """The compressor's ``keep_indices(batch, num_patches, device)`` -> (n_kept,) indices for the first image."""
    return comp.keep_indices(1, n, device)[0].detach().cpu().numpy().astype(np.int64)


# ---- adapters ---------------------------------------------------------------------------------------------
def _from_membership(tm: TokenMap, wts: torch.Tensor) -> TokenMap:
    """(M, N) weights of each output token over the patches -> kept / merged (or windows)."""
    h, w = tm.grid
    nz = wts.abs() > 1e-6  # (M, N)
    counts = nz.sum(dim=1)
    single = (counts == 1).nonzero().flatten()
    kept = nz[single].float().argmax(dim=1).cpu().numpy()
    merged = np.full(h * w, -1, dtype=np.int64)
    multi = (counts > 1).nonzero().flatten().tolist()
    for gid, m in enumerate(multi):
        merged[nz[m].cpu().numpy()] = gid
    if not len(kept) and multi and len(multi) * 1 == wts.shape[0]:
        # every token is a pooled window: aligned k x k blocks are drawn as windows
        side = int(round((h * w / len(multi)) ** 0.5))
        if side >= 1 and h % side == 0 and w % side == 0 and (h // side) * (w // side) == len(multi):
            want = np.arange(h * w).reshape(h, w)
            blocks = want.reshape(h // side, side, w // side, side).transpose(0, 2, 1, 3).reshape(len(multi), -1)
            got = [np.sort(nz[m].cpu().numpy().nonzero()[0]) for m in multi]
            if all(np.array_equal(np.sort(b), g) for b, g in zip(blocks, got)):
                tm.kind, tm.k, tm.E = "windows", side, 1
                return tm
    tm.kind = "kept"
    tm.kept = np.sort(kept)
    tm.merged = merged
    return tm


def _patch_reduction_map(tm: TokenMap, red, comp, feats: VisionFeatures) -> TokenMap:
    """Probe ``red.select`` with one-hot patch features (see the module docstring)."""
    layer = red.compressor_layer(comp)
    idx = feats.info.normalize_layer(layer)
    h, w = feats.grid
    n, p = h * w, feats.num_prefix
    real = feats.hidden[idx]  # (B, P + H*W + X, C)
    probe = real.new_zeros(real.shape[0], real.shape[1], n)  # (B, P + H*W + X, H*W): one-hot patches
    probe[:, p : p + n] = torch.eye(n, dtype=real.dtype, device=real.device)
    pfeats = VisionFeatures(hidden={**feats.hidden, idx: probe}, grid=feats.grid, num_prefix=p,
                            num_extra=feats.num_extra, info=feats.info, extra_state=feats.extra_state)
    wts = red.select(pfeats, layer)  # (B, M, H*W)
    want = red.select(feats, layer)  # (B, M, C)
    x = feats.patches(layer)  # (B, H*W, C)
    if wts.shape[:2] != want.shape[:2] or not torch.allclose(wts @ x, want, rtol=1e-3, atol=1e-4 * float(x.abs().max())):
        tm.notes.append(f"{red.registry_name} is not a selection/average of patch features; drawn as all tokens")
        return tm
    return _from_membership(tm, wts[0].float())


def _fastv_map(tm: TokenMap, model, pixel_values: torch.Tensor, question: str) -> TokenMap:
    """Run one prefill with the in-LLM reduction and read which vision tokens it kept."""
    red = model.reduction
    ids, mask = model.pad_left([model.prompt_ids(question)])
    dev = next(model.llm.parameters()).device
    model.forward(ids.to(dev), mask.to(dev), pixel_values.to(dev), logits_to_keep=1)
    kept_pos = red.last_kept_positions
    img_pos = (ids[0] == IMAGE_TOKEN_ID).nonzero().flatten()  # (N,) prompt positions of the vision tokens
    if kept_pos is None:
        tm.notes.append(f"{red.registry_name} did not report the tokens it kept")
        return tm
    kept_tok = np.nonzero(np.isin(img_pos.numpy(), kept_pos[0].cpu().numpy()))[0]  # vision-token indices
    tm.llm_kept = int(len(kept_tok))
    where = _token_patches(model, tm.grid)
    layers = red.prune_layers[-1] if red.prune_layers else "?"  # the last drop (FastV: its only one)
    if where is None:
        tm.notes.append(f"{red.registry_name} keeps {len(kept_tok)} of {tm.num_tokens} tokens after LLM layer "
                        f"{layers}; their places on the image are not defined for this compressor")
        return _compressor_map(tm, model, pixel_values)
    tm.kind = "kept"
    tm.kept = np.unique(np.concatenate([where[t] for t in kept_tok])) if len(kept_tok) else np.zeros(0, np.int64)
    tm.merged = np.full(tm.num_patches, -1, dtype=np.int64)
    kw = _windows_k(model.compressor, tm.grid)
    if kw is not None:
        tm.k, tm.E = kw
    tm.notes.append(f"all {tm.num_tokens} tokens enter the LLM; {len(kept_tok)} remain after layer {layers}")
    tm.notes.append(_ranking_note(model, red, layers))
    return tm


#: what each in-LLM reduction ranks the vision tokens by (read from its module docstring)
_RANKED_BY = {
    "fastv": "the attention the prompt's last token pays each vision token in LLM layer {layers} (mean over heads)",
    "pyramiddrop": "the attention the prompt's last token pays the vision tokens at the end of each LLM stage "
                   "(last drop after layer {layers}; mean over heads)",
    "sparsevlm": "the attention the question's most image-relevant text tokens pay each vision token at the "
                 "drop layers (last: {layers}; mean over heads)",
}


def _ranking_note(model, red, layers) -> str:
    """Where the in-LLM ranking comes from: this model's own attention, on this image and question; with the
    weights it has now (random ones said so)."""
    from ..model.init_state import untrained_parts

    name = red.registry_name
    how = _RANKED_BY.get(name, "the LLM's attention to the vision tokens at layer {layers}").format(layers=layers)
    note = f"ranked by {how}, computed by this model for this image and question"
    untrained = untrained_parts(model)
    if untrained:
        note += (f"; its {' and '.join(untrained)} has random (untrained) weights, so the ranking is of "
                 "untrained vision tokens, not of what a trained model would keep")
    return note


def _qformer_heat(comp, feats: VisionFeatures) -> np.ndarray | None:
    """Last decoder layer's cross-attention from the queries to the patches, mean over queries and heads."""
    mem = comp.inp(feats.patches(comp.layer))  # (B, H*W, dim)
    x = comp.queries.unsqueeze(0).expand(mem.shape[0], -1, -1)  # (B, Q, dim)
    layers = comp.blocks.layers
    attn = None
    for i, layer in enumerate(layers):
        if i == len(layers) - 1:
            if layer.norm_first:
                y = layer.norm1(x)
                x1 = x + layer.self_attn(y, y, y, need_weights=False)[0]
                q = layer.norm2(x1)
            else:
                q = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
            _, attn = layer.multihead_attn(q, mem, mem, need_weights=True, average_attn_weights=True)  # (B, Q, N)
        x = layer(x, mem)
    if attn is None:
        return None
    return attn[0].mean(dim=0).float().cpu().numpy()  # (H*W,)


def _compressor_map(tm: TokenMap, model, pixel_values: torch.Tensor, feats: VisionFeatures | None = None) -> TokenMap:
    comp = model.compressor
    feats = feats if feats is not None else model.encoder_features(pixel_values)
    h, w = tm.grid
    kind = _compressor_kind(comp)
    name = comp.registry_name
    try:
        if kind == "groups":
            tm.groups = comp.token_assignment(feats)[0].cpu().numpy().astype(np.int64)
            tm.num_groups = int(comp.num_output_tokens(tm.grid))
            tm.kind = "groups"
        elif kind == "masks":
            comp(feats)
            cov = comp.last_coverage[0].float().cpu().numpy()  # (K_i, H, W), score order
            tm.masks = cov
            tm.masks_kept = min(int(comp.num_objects_kept()), cov.shape[0])
            tm.pool_grid = comp.pool_grid
            tm.kind = "masks"
            tm.notes.append(f"+ {comp.num_fixed_tokens} tokens not tied to one region "
                            f"(CLS + {tm.pool_grid}x{tm.pool_grid} pooled)")
        elif kind == "kept":
            tm.kept = np.sort(_call_keep_indices(comp, h * w, feats.patches(comp.layer).device))
            tm.merged = np.full(h * w, -1, dtype=np.int64)
            tm.kind = "kept"
        elif kind == "windows":
            tm.k, tm.E = _windows_k(comp, tm.grid)
            tm.kind = "windows"
        elif kind == "queries":
            tm.kind = "queries"
            try:
                tm.heat = _qformer_heat(comp, feats)
            except Exception as e:  # noqa: BLE001 - a drawing must not fail on an unusual decoder
                tm.notes.append(f"cross-attention not readable ({type(e).__name__}); shown as global")
            tm.notes.append(f"{tm.num_tokens} learned queries, each attending to the whole image")
        elif comp.num_output_tokens(tm.grid) != h * w:
            tm.notes.append(f"{name} is not a known token layout; drawn as all patch tokens")
    except Exception as e:  # noqa: BLE001 - unknown or half-built compressors still render
        tm.kind = "all"
        tm.notes.append(f"{name}: token map unavailable ({type(e).__name__}: {e}); drawn as all patch tokens")
    return tm


@torch.inference_mode()
def token_map(model, pixel_values: torch.Tensor, question: str = "What is in the image?") -> TokenMap:
    """Describe what reaches the LLM for one image (the first of ``pixel_values`` (B, 3, S, S)).

    ``question`` is only used by reductions that prune inside the LLM (FastV ranks tokens by the prompt's
    last-token attention)."""
    if pixel_values.ndim == 3:
        pixel_values = pixel_values.unsqueeze(0)
    pixel_values = pixel_values[:1].to(next(model.encoder.parameters()).device)
    grid = model.grid
    tm = TokenMap(kind="all", grid=grid, num_tokens=int(model.num_image_tokens()), method=method_label(model))
    red = model.reduction
    if red is None:
        return _compressor_map(tm, model, pixel_values)
    if red.in_llm:
        return _fastv_map(tm, model, pixel_values, question)
    tiles = red.token_windows(grid)
    if tiles is not None and grid[0] // tiles[0] == grid[1] // tiles[1]:  # square k x k windows
        tm.kind, tm.k, tm.E = "windows", grid[0] // tiles[0], tiles[2]
        return tm
    if isinstance(red, PatchReduction):
        feats = model.encoder_features(pixel_values)
        kept = red.kept_patches(feats, model.compressor)
        groups = red.patch_groups()
        if groups is not None:  # tokens merged inside the encoder (tome): the output token of each patch
            tm.kind, tm.num_groups = "groups", int(tm.num_tokens)
            tm.groups = groups[0].cpu().numpy().astype(np.int64)
            return tm
        if kept is not None:  # a selection of patches (random, dart, divprune): the patches it kept
            tm.kind = "kept"
            tm.kept = np.sort(kept[0].cpu().numpy().astype(np.int64))
            tm.merged = np.full(tm.num_patches, -1, dtype=np.int64)
            return tm
        try:
            return _patch_reduction_map(tm, red, model.compressor, feats)
        except Exception as e:  # noqa: BLE001
            tm.notes.append(f"{red.registry_name}: token map unavailable ({type(e).__name__}); drawn as all tokens")
            return tm
    tm.notes.append(f"reduction {red.registry_name} is not a known layout; "
                    "drawn as all patch tokens")
    return tm
