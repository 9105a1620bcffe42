"""``unsupervised`` mask source: segments from the encoder's own patch features (no extra weights).

Stands in, offline, for Mask-LLaVA's Deformable-DETR + SAM masks (Jahagirdar et al., "When LLaVA Meets
Objects"); the paper does not use it. Choice made here: the patch features of block ``layer`` are
L2-normalised and clustered with scikit-learn's Ward agglomerative clustering under the 4-neighbour grid
connectivity (``sklearn.feature_extraction.image.grid_to_graph``) into ``min(max_masks, H*W)`` segments
(``n_segments`` to use fewer). Connectivity makes every segment one connected region, so no separate
connected-components pass is needed, and agglomerative clustering has no random initialisation, so the
masks are deterministic. The segments partition the image, so they cover it by construction: the
background is whichever segments fall on it, and no complement mask is added. Masks are returned at patch
resolution (H, W).
"""

from __future__ import annotations

import numpy as np
import torch

from ...encoders.base import VisionFeatures
from ...errors import CompactVLMError
from ...registry import MASK_SOURCES
from . import MaskSource, check_max_masks


@MASK_SOURCES.register("unsupervised")
class UnsupervisedMasks(MaskSource):
    def __init__(self, layer: int = -2, n_segments: int | None = None, linkage: str = "ward"):
        if linkage not in ("ward", "average", "complete", "single"):
            raise CompactVLMError(f"unknown linkage {linkage!r}", "use ward, average, complete or single")
        if n_segments is not None and int(n_segments) < 1:
            raise CompactVLMError(f"n_segments={n_segments} must be at least 1", "leave it unset to use max_objects")
        self.layer = int(layer)
        self.n_segments = None if n_segments is None else int(n_segments)
        self.linkage = linkage

    def feature_layers(self) -> list[int]:
        return [self.layer]

    def settings(self) -> str:
        return f"unsupervised(layer={self.layer},n={self.n_segments},linkage={self.linkage})"

    def __call__(self, feats: VisionFeatures, max_masks: int) -> list[torch.Tensor]:
        from sklearn.cluster import AgglomerativeClustering
        from sklearn.feature_extraction.image import grid_to_graph

        check_max_masks(max_masks)
        try:
            x = feats.patches(self.layer)  # (B, H*W, C)
        except KeyError:
            raise CompactVLMError(f"the unsupervised mask source needs encoder block {self.layer}",
                                  "request it via the compressor's feature_layers()") from None
        h, w = feats.grid
        k = min(int(max_masks), self.n_segments or int(max_masks), h * w)
        x = torch.nn.functional.normalize(x.detach().float(), dim=-1).cpu().numpy().astype(np.float64)
        graph = grid_to_graph(h, w)
        out = []
        for xb in x:  # (H*W, C)
            if k == 1:
                labels = np.zeros(h * w, dtype=np.int64)
            else:
                labels = AgglomerativeClustering(n_clusters=k, connectivity=graph, linkage=self.linkage).fit_predict(xb)
            lab = torch.as_tensor(labels, device=feats.patches(self.layer).device).view(h, w)  # (H, W)
            masks = lab[None] == torch.arange(k, device=lab.device)[:, None, None]  # (k, H, W)
            out.append(masks[masks.flatten(1).any(dim=1)])
        return out
