"""``objects``: Mask-LLaVA's CLS + grid-pooled patch + mask-based object tokens, with a test-time budget.

Paper: Jahagirdar, Bousselham, Kukleva, Kuehne, "When LLaVA Meets Objects: Token Composition for
Vision-Language-Models" (Mask-LLaVA). Only the paper's summary is available; it fixes the three token types,
norm scaling before fusion, training on an oversampled token set and dropping object tokens at test time.
Everything below that the summary leaves open is our choice, and an option:

Tokens, in this order (deterministic, positions independent of the budget):
  1. the global CLS token of block ``cls_layer`` (-1)                                       -> 1 token
  2. patch tokens of block ``patch_layer`` (-2), adaptive-average-pooled to ``pool_grid`` x ``pool_grid``
     regions, row-major                                                                    -> pool_grid^2
  3. one object token per mask, sorted by ``score`` (descending, ties in mask-source order)  -> max_objects
Each type has its own LLaVA ``mlp2x_gelu`` projector (``proj_cls``, ``proj_pool``, ``proj_obj``).

Masks come from a ``mask_source`` (``masks/``: unsupervised [default, no extra weights], given,
detector_sam), object embeddings from ``object_embed`` (``object_embed.py``: masked_pool [default],
maskinversion; MaskInversion is the paper's).

Norm scaling (``norm_scaling``, ``norm_at``): the reference norm r is, per image, the mean L2 norm of the
raw patch tokens of ``patch_layer`` (``norm_at="input"``, default: scaling happens in encoder space before
the projectors, "before fusion through the projector") or of the projected pooled tokens
(``norm_at="output"``: scaling happens on the projectors' outputs, before concatenation).
``norm_scaling="type_mean"`` (default) multiplies each type's tokens of an image by one scalar so that the
type's mean token norm equals r (relative norms inside a type are kept; for objects the mean is over real
masks, not padding, and over all ``max_objects`` slots, so a budget never changes the kept tokens);
``"token"`` L2-normalises every token and multiplies it by r; ``"none"`` leaves the norms alone.

Fixed count for batching (``max_objects`` = K): the mask source is asked for at most K masks (background
included) and every image gets exactly K object slots. Missing slots are filled per ``pad``: ``"zero"``
(default) puts a zero vector in encoder space, which every projector maps to one constant learned token
(a "no object" marker that carries no image content); ``"repeat"`` repeats the highest-scoring object.
Padding always sorts after every real mask, so a budget drops it first.

Budget (``budget`` option or ``set_budget(n)``; None = all 1 + pool_grid^2 + K tokens, as trained):
keeps CLS + all pooled tokens + the first ``budget - 1 - pool_grid^2`` object tokens of the sorted order,
i.e. the top objects by ``score``: ``"area"`` (default; fraction of the image the mask covers), ``"order"``
(the mask source's order) or ``"contrast"`` (1 - cosine similarity between the mask's coverage-weighted mean
patch feature of ``patch_layer`` and the image's mean patch feature: segments unlike the image's dominant content
first). ``contrast`` is ours, not the paper's: the paper's masks come from an objectness detector, so whatever it
keeps is an object; the unsupervised source partitions the whole image, the background into several large
segments, which ``area`` keeps before the objects (results/bench/objects_masks_kept.py). A model trained with one
score and evaluated with another sees its object tokens in another order. A budget below 1 + pool_grid^2 or above
the full count is an error.

Inputs beyond the features (``feats.extra_state``, filled by ``CompactVLM.encode_images``):
``"pixel_values"`` (B, 3, H, W) for detector_sam and the cache key, ``"encoder"`` (the HFVisionEncoder) for
maskinversion, and ``"masks"`` for the ``given`` source: a list of B bool tensors (K_i, H, W) at pixel
resolution (the preprocessed image) or at patch resolution (the encoder grid) — both are accepted; masks
become per-patch coverage fractions (area pooling) before embedding.

Cache: when the features do not require grad and the encoder (if given) has no trainable parameter (a
frozen encoder), each image's masks (as coverage) and object embeddings are kept in an in-memory LRU of
``cache_size`` images (0 disables), keyed by a BLAKE2 hash of the image's pixel values (its patch features
if no pixels were given), the given masks, and the mask source / embedder / K / layer settings. Cached
tensors live outside the state dict; ``clear_cache()`` empties it (needed if the encoder's weights change).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..encoders.base import EncoderInfo, VisionFeatures
from ..errors import CompactVLMError
from ..registry import COMPRESSORS
from . import masks as _masks  # noqa: F401  (registers the mask sources)
from .base import Compressor, mlp2x_gelu
from .masks import create_mask_source, patch_coverage
from .object_embed import create_object_embedder, masked_mean

NORM_SCALINGS = ("type_mean", "token", "none")
SCORES = ("area", "order", "contrast")  # how object tokens are ranked (a budget keeps the first)


@COMPRESSORS.register("objects")
class ObjectTokens(Compressor):
    token_layout = "masks"

    def __init__(self, enc: EncoderInfo, llm_dim: int, pool_grid: int = 2, max_objects: int = 16,
                 budget: int | None = None, mask_source: str = "unsupervised", object_embed: str = "masked_pool",
                 patch_layer: int = -2, cls_layer: int = -1, norm_scaling: str = "type_mean",
                 norm_at: str = "input", score: str = "area", pad: str = "zero", cache: bool = True,
                 cache_size: int = 256, detector_path: str | None = None, sam_path: str | None = None,
                 detector_threshold: float | None = None, mi_iterations: int | None = None,
                 mi_lr: float | None = None, mi_reg: float | None = None, mask_options: dict | None = None,
                 embed_options: dict | None = None):
        super().__init__(enc, llm_dim)
        h, w = enc.grid
        if not 1 <= int(pool_grid) <= min(h, w):
            raise CompactVLMError(f"pool_grid={pool_grid} does not fit the {h}x{w} patch grid",
                                  f"use 1..{min(h, w)} (e.g. 2 for 2x2 regions)")
        if int(max_objects) < 1:
            raise CompactVLMError(f"max_objects={max_objects} must be at least 1", "use e.g. 16")
        for opt, val, allowed in (("norm_scaling", norm_scaling, NORM_SCALINGS), ("norm_at", norm_at, ("input", "output")),
                                  ("score", score, SCORES), ("pad", pad, ("zero", "repeat"))):
            if val not in allowed:
                raise CompactVLMError(f"unknown {opt} {val!r}", f"use one of: {', '.join(allowed)}")
        self.pool_grid = int(pool_grid)
        self.max_objects = int(max_objects)
        self.patch_layer, self.cls_layer = int(patch_layer), int(cls_layer)
        enc.normalize_layer(self.patch_layer), enc.normalize_layer(self.cls_layer)
        self.norm_scaling, self.norm_at, self.score, self.pad = norm_scaling, norm_at, score, pad

        mopts = dict(mask_options or {})
        det = {"detector_path": detector_path, "sam_path": sam_path, "score_threshold": detector_threshold}
        det = {k: v for k, v in det.items() if v is not None}
        if det and mask_source != "detector_sam":
            raise CompactVLMError(f"{', '.join(det)} only apply to mask_source=detector_sam (got {mask_source!r})",
                                  "set mask_source=detector_sam or drop those options")
        self.source = create_mask_source(mask_source, **{**mopts, **det})
        eopts = dict(embed_options or {})
        mi = {"iterations": mi_iterations, "lr": mi_lr, "reg": mi_reg}
        mi = {k: v for k, v in mi.items() if v is not None}
        if mi and object_embed != "maskinversion":
            raise CompactVLMError(f"mi_{', mi_'.join(mi)} only apply to object_embed=maskinversion",
                                  "set object_embed=maskinversion or drop those options")
        self.embedder = create_object_embedder(object_embed, patch_layer=self.patch_layer, cls_layer=self.cls_layer,
                                               **{**eopts, **mi})

        c = enc.hidden_size
        self.proj_cls = mlp2x_gelu(c, llm_dim)
        self.proj_pool = mlp2x_gelu(c, llm_dim)
        self.proj_obj = mlp2x_gelu(c, llm_dim)

        self.cache_enabled = bool(cache) and int(cache_size) > 0
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.last_coverage: list[torch.Tensor] = []  # per image of the last call: sorted masks as (K_i, H, W)
        self.budget: int | None = None
        self.set_budget(budget)

    # ---- token counts -------------------------------------------------------------------------------
    @property
    def num_fixed_tokens(self) -> int:
        """CLS + pooled tokens: never dropped."""
        return 1 + self.pool_grid**2

    @property
    def num_full_tokens(self) -> int:
        return self.num_fixed_tokens + self.max_objects

    @property
    def cacheable_features(self) -> bool:  # type: ignore[override]
        """A mask source that reads the pixels (detector + SAM) needs the image at every step."""
        return not self.source.reads_pixels

    @property
    def wants_given_masks(self) -> bool:
        """True when the masks come with the sample (``extra_state["masks"]``): callers must supply them."""
        return self.source.registry_name == "given"

    def budget_range(self) -> tuple[int, int]:
        return self.num_fixed_tokens, self.num_full_tokens

    def set_budget(self, budget: int | None) -> None:
        """Test-time token budget (no retraining): None = all tokens, else 1 + pool_grid^2 .. full count."""
        if budget is not None:
            lo, hi = self.budget_range()
            if isinstance(budget, bool) or int(budget) != budget or not lo <= int(budget) <= hi:
                raise CompactVLMError(
                    f"budget={budget} is outside what objects(pool_grid={self.pool_grid}, max_objects="
                    f"{self.max_objects}) can emit: {lo} (CLS + {self.pool_grid}x{self.pool_grid} pooled) to {hi}",
                    f"pick a budget in {lo}..{hi}, or change pool_grid / max_objects",
                )
            budget = int(budget)
        self.budget = budget

    def num_objects_kept(self) -> int:
        return self.max_objects if self.budget is None else self.budget - self.num_fixed_tokens

    def num_output_tokens(self, grid=None) -> int:
        return self.num_full_tokens if self.budget is None else self.budget

    def feature_layers(self) -> list[int]:
        layers = [self.patch_layer, self.cls_layer, *self.source.feature_layers(), *self.embedder.feature_layers()]
        return sorted({self.enc.normalize_layer(l) for l in layers})

    # ---- object features ----------------------------------------------------------------------------
    def clear_cache(self) -> None:
        self._cache.clear()

    def _settings(self) -> str:
        return (f"{self.source.settings()}|{self.embedder.settings()}|K={self.max_objects}|score={self.score}|"
                f"{self.patch_layer},{self.cls_layer}|{self.enc}")

    def _cacheable(self, feats: VisionFeatures) -> bool:
        if not self.cache_enabled or any(t.requires_grad for t in feats.hidden.values()):
            return False
        enc = feats.extra_state.get("encoder")
        return enc is None or not any(p.requires_grad for p in enc.parameters())

    def _key(self, feats: VisionFeatures, b: int) -> bytes:
        px = feats.extra_state.get("pixel_values")
        src = px[b] if px is not None else feats.patches(self.patch_layer)[b]
        hsh = hashlib.blake2b(digest_size=20)
        hsh.update(f"{tuple(src.shape)}|{src.dtype}|{self._settings()}".encode())
        hsh.update(src.detach().float().cpu().contiguous().numpy().tobytes())
        hsh.update(self.source.cache_extra(feats, b))
        return hsh.digest()

    def _compute(self, feats: VisionFeatures) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: (coverage (K_i, H, W), embeddings (K_i, C)), sorted by score, K_i <= max_objects."""
        grid, p = feats.grid, feats.info.patch_size
        px = feats.extra_state.get("pixel_values")
        image_hw = tuple(px.shape[-2:]) if px is not None else None
        masks = self.source(feats, self.max_objects)
        if len(masks) != feats.batch_size:
            raise RuntimeError(f"mask source {self.source.registry_name} returned {len(masks)} mask sets "
                               f"for {feats.batch_size} images")
        patches = feats.patches(self.patch_layer)  # (B, H*W, C)
        dev = patches.device
        cov = []
        for b, m in enumerate(masks):
            c = patch_coverage(m.to(dev), grid, p, image_hw)  # (K_i, H, W)
            if self.score == "area":
                c = c[torch.sort(c.flatten(1).mean(dim=1), descending=True, stable=True).indices]
            elif self.score == "contrast":
                c = c[torch.sort(self._contrast(patches[b], c), descending=True, stable=True).indices]
            cov.append(c[: self.max_objects])
        emb = self.embedder(feats, cov)
        return list(zip(cov, emb))

    @staticmethod
    def _contrast(patches: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """``score="contrast"`` of each mask: 1 - cos(mask's mean patch feature, image's mean patch feature).
        patches (H*W, C), cov (K, H, W) -> (K,)."""
        x = patches.detach().float()  # (H*W, C)
        return 1 - F.cosine_similarity(masked_mean(x, cov), x.mean(dim=0, keepdim=True), dim=-1)

    def object_features(self, feats: VisionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, C) object embeddings in score order, padding last, and (B, K) bool: real mask or padding."""
        n = feats.batch_size
        results: list = [None] * n
        keys: list = [None] * n
        if self._cacheable(feats):
            keys = [self._key(feats, b) for b in range(n)]
            for b, k in enumerate(keys):
                if k in self._cache:
                    self._cache.move_to_end(k)
                    results[b] = self._cache[k]
        todo = [b for b in range(n) if results[b] is None]
        if todo:
            sub = feats if len(todo) == n else _subset(feats, todo)
            for b, r in zip(todo, self._compute(sub)):
                results[b] = r
                if keys[b] is not None:
                    self._cache[keys[b]] = (r[0].detach(), r[1].detach())
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        x = feats.patches(self.patch_layer)
        objs = x.new_zeros(n, self.max_objects, x.shape[-1])  # (B, K, C)
        valid = torch.zeros(n, self.max_objects, dtype=torch.bool, device=x.device)
        self.last_coverage = []
        for b, (cov, emb) in enumerate(results):
            k = emb.shape[0]
            objs[b, :k] = emb.to(x.device, x.dtype)
            valid[b, :k] = True
            if self.pad == "repeat" and k < self.max_objects:
                objs[b, k:] = emb[0].to(x.device, x.dtype)
            self.last_coverage.append(cov)
        return objs, valid

    # ---- fusion -------------------------------------------------------------------------------------
    def types(self, feats: VisionFeatures) -> dict[str, torch.Tensor]:
        """The three token types in encoder space, before scaling and projection."""
        g = self.pool_grid
        h, w = feats.grid
        if g > min(h, w):
            raise CompactVLMError(f"pool_grid={g} does not fit the {h}x{w} patch grid", f"use 1..{min(h, w)}")
        x = feats.patches(self.patch_layer)  # (B, H*W, C)
        pooled = F.adaptive_avg_pool2d(feats.patch_grid(self.patch_layer), g)  # (B, C, g, g)
        objects, valid = self.object_features(feats)
        return {
            "cls": feats.cls(self.cls_layer)[:, None],  # (B, 1, C)
            "pooled": pooled.flatten(2).transpose(1, 2),  # (B, g*g, C)
            "objects": objects,  # (B, K, C)
            "valid": valid,  # (B, K)
            "reference": x.norm(dim=-1).mean(dim=1),  # (B,) mean patch-token norm
        }

    def norm_scale(self, t: dict[str, torch.Tensor], reference: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Bring cls / pooled / objects to the common norm ``reference`` (B,) (default ``t["reference"]``)."""
        if self.norm_scaling == "none":
            return dict(t)
        ref = (t["reference"] if reference is None else reference)[:, None, None]  # (B, 1, 1)
        out = dict(t)
        for name in ("cls", "pooled", "objects"):
            x = t[name]
            norms = x.norm(dim=-1)  # (B, M)
            if self.norm_scaling == "token":
                out[name] = x / norms.clamp(min=1e-6)[..., None] * ref
            else:
                wts = t["valid"].to(norms.dtype) if name == "objects" else torch.ones_like(norms)
                mean = (norms * wts).sum(dim=1) / wts.sum(dim=1).clamp(min=1)  # (B,)
                out[name] = x * (ref / mean.clamp(min=1e-6)[:, None, None])
        return out

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        t = self.types(feats)
        keep = self.num_objects_kept()
        if self.norm_at == "input":
            t = self.norm_scale(t)
            t["objects"] = t["objects"][:, :keep]  # scaled over all K, so the budget does not change kept tokens
        t = {**t, "cls": self.proj_cls(t["cls"]), "pooled": self.proj_pool(t["pooled"]),
             "objects": self.proj_obj(t["objects"])}  # each (B, M_type, D)
        if self.norm_at == "output":
            t = self.norm_scale(t, reference=t["pooled"].norm(dim=-1).mean(dim=1))
            t["objects"] = t["objects"][:, :keep]
        return torch.cat([t["cls"], t["pooled"], t["objects"]], dim=1)  # (B, 1 + g*g + kept, D)


def _subset(feats: VisionFeatures, idx: list[int]) -> VisionFeatures:
    """The features (and per-image extra_state) of images ``idx``."""
    es = dict(feats.extra_state)
    if isinstance(es.get("pixel_values"), torch.Tensor):
        es["pixel_values"] = es["pixel_values"][idx]
    if es.get("masks") is not None:
        es["masks"] = [es["masks"][i] for i in idx]
    return VisionFeatures(hidden={k: v[idx] for k, v in feats.hidden.items()}, grid=feats.grid,
                          num_prefix=feats.num_prefix, num_extra=feats.num_extra, info=feats.info, extra_state=es)


COMPRESSORS.variant("objects_16", "objects:budget=16", default=True)
