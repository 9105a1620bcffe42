"""What a vision encoder hands to a compressor.

Block indices follow the papers and HF's ``hidden_states``: 0 is the input of block 1 (the embeddings,
after CLIP's pre-layernorm), ``l`` is the output of block ``l`` (1-based), negative indices count from the
end (-1 = last block, -2 = LLaVA's default "penultimate" layer). No final layernorm is applied, as in LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import CompactVLMError


@dataclass(frozen=True)
class EncoderInfo:
    """Static facts about an encoder a compressor needs to size itself (no tensors)."""

    hidden_size: int
    num_layers: int
    patch_size: int
    image_size: int
    has_cls: bool = True
    num_heads: int = 1

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    def normalize_layer(self, layer: int) -> int:
        """Map a possibly-negative block index to 0..num_layers."""
        idx = layer + self.num_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= self.num_layers:
            raise CompactVLMError(
                f"encoder block {layer} does not exist (the encoder has {self.num_layers} blocks)",
                f"use an index in -{self.num_layers + 1}..{self.num_layers}",
            )
        return idx


@dataclass
class VisionFeatures:
    """Features of the requested blocks.

    ``hidden[l]`` is the full sequence of block ``l``: ``(B, P + H*W + X, C)`` with P prefix tokens (CLS and
    registers), the H*W patch tokens in row-major order, then X extra tokens (e.g. VisToG's semantic tokens).
    """

    hidden: dict[int, torch.Tensor]
    grid: tuple[int, int]
    num_prefix: int
    num_extra: int
    info: EncoderInfo
    extra_state: dict = field(default_factory=dict)

    def _get(self, layer: int) -> torch.Tensor:
        idx = self.info.normalize_layer(layer)
        if idx not in self.hidden:
            raise KeyError(f"block {layer} was not requested from the encoder (have {sorted(self.hidden)})")
        return self.hidden[idx]

    def patches(self, layer: int = -2) -> torch.Tensor:
        """Patch tokens of block ``layer``: (B, H*W, C)."""
        h, w = self.grid
        return self._get(layer)[:, self.num_prefix : self.num_prefix + h * w]

    def cls(self, layer: int = -1) -> torch.Tensor:
        """CLS token of block ``layer``: (B, C). Encoders without CLS (SigLIP) return the patch mean."""
        x = self._get(layer)
        if self.num_prefix == 0:
            return self.patches(layer).mean(dim=1)
        return x[:, 0]

    def extra(self, layer: int = -1) -> torch.Tensor:
        """Extra tokens appended by a compressor: (B, X, C)."""
        return self._get(layer)[:, x_start(self) :] if self.num_extra else self._get(layer)[:, :0]

    def patch_grid(self, layer: int = -2) -> torch.Tensor:
        """Patch tokens as a feature map: (B, C, H, W)."""
        h, w = self.grid
        x = self.patches(layer)  # (B, H*W, C)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)  # (B, C, H, W)

    @property
    def batch_size(self) -> int:
        return next(iter(self.hidden.values())).shape[0]


def x_start(f: VisionFeatures) -> int:
    h, w = f.grid
    return f.num_prefix + h * w
