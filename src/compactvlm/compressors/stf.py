"""Spatial Token Fusion (STF) and Multi-Block Token Fusion (MBTF).

Paper: Tang & Shen, "Learning Compact Vision Tokens for Efficient Large Multimodal Models"
(../shared/papers/compact-vision-tokens_stf-mbtf_v1.txt §3.3-3.4, Table 1; v2-review Tables 5-7).

Registered as ``stf`` (MBTF off unless asked for) and ``stf_mbtf`` (the paper's full method: MBTF on).

MBTF (§3.3, Eq. 1, Table 1a), when enabled: the patch tokens of blocks ``mbtf_layers`` (default every third
block, ``range(3, L+1, 3)``: 3,6,...,24 on ViT-L, 3,6,9,12 on the 12-block DINOv2-S; or ``mbtf_blocks=n``
blocks evenly sampled, ``ceil(i*L/n)`` for i = 1..n, as in v2 Table 7's 8/16/24 blocks) are concatenated on
channels in the listed order, then ``mbtf.conv1`` 1x1 (M*C -> ``mbtf_hidden`` = 4C) + GELU and ``mbtf.conv2``
1x1 (4C -> C) + GELU, where C is the encoder width. Without MBTF, STF reads block ``layer`` (default -2).

STF (§3.4, Eq. 2, Table 1b), on the (H, W) grid of C1-channel tokens:
- ``conv1``: a k x k convolution with stride k, C1 -> C2 (default C2 = k²*C1, "a learnable
  concatenation"), + GELU. **Implemented as space-to-depth + ``nn.Linear(k²*C1, C2)``**, which is the same
  function: the space-to-depth of ``concat.space_to_depth`` puts channel ``c`` of the token at row ``i``,
  column ``j`` of a window at position ``(i*k + j)*C1 + c``, so a conv weight ``w`` of shape (C2, C1, k, k)
  is the Linear weight ``w.permute(0, 2, 3, 1).reshape(C2, k*k*C1)``. Windows are row-major.
- E reshape (§3.4: "reshaped as E tokens ... H2 x W2 x C2/E"): every fused C2-vector is cut into E
  consecutive chunks, chunk e = channels ``[e*C2/E, (e+1)*C2/E)`` becoming token e of its window. Output
  token order: row-major over windows, the E tokens of a window contiguous, i.e. token ``(r*W2 + s)*E + e``
  is chunk e of window (r, s). With ``learned_fuse=False`` (or an identity conv1) and E dividing k², chunk e
  holds whole patch tokens ``e*k²/E .. (e+1)*k²/E - 1`` of the window (row-major inside the window).
  Requires 1 <= E < k² (k = 1, i.e. MBTF alone / Table 4's first row, requires E = 1) and E | C2.
- ``conv2`` 1x1 (C2/E -> ``hidden``, default 4*D = 16384 for LLaVA-7B) + GELU and ``conv3`` 1x1 (hidden -> D)
  + GELU: Table 1b's "act" column lists GeLU after conv3 too, so the tokens handed to the LLM have passed a
  final GELU; ``act_last=False`` drops it (and the one after ``mbtf.conv2``).
  (H/k)*(W/k)*E tokens out: 576 -> 144 (k=2, E=1), 288 (k=2, E=2), 36*E (k=4), 9*E (k=8) on 24 x 24.
  All 1x1 convolutions are ``nn.Linear`` on (B, N, C) tokens (same function, weight (O, I, 1, 1) squeezed).

Parameter count on the LLaVA-1.5-7B shapes (C = C1 = 1024, C2 = C3 = D = 4096, k = 2, E = 1, 8 blocks),
next to Table 1's layer list (each count includes the bias):
    MBTF conv1  1x1  8192 -> 4096   GeLU    8192*4096 + 4096  = 33,558,528
    MBTF conv2  1x1  4096 -> 1024   GeLU    4096*1024 + 1024  =  4,195,328
    STF  conv1  2x2  1024 -> 4096   GeLU    4*1024*4096 + 4096 = 16,781,312
    STF  conv2  1x1  4096 -> 16384  GeLU    4096*16384 + 16384 = 67,125,248
    STF  conv3  1x1 16384 -> 4096   GeLU    16384*4096 + 4096  = 67,112,960
    STF alone 151,019,520; MBTF + STF 188,773,376 (``summary.param_table`` prints these from the modules).

Deviations / choices the paper leaves open, and differences from the authors' released code
(github.com/visresearch/LLaVA-STF, read for reference only; nothing copied):
- Default block list follows the paper (3,6,...,24). The released code concatenates the hidden states
  [-2 (=23), 21, 18, 15, 12, 9, 6, 3] in that order: pass ``mbtf_layers=[-2, 21, 18, 15, 12, 9, 6, 3]``.
- The released code has no learned k x k layer (it concatenates the window, channel-major, and feeds the
  4C2 -> 16C1 -> D MLP) and no GELU after the last layer of either module: ``learned_fuse=False,
  act_last=False`` gives that structure (a converter must permute conv2's input columns from the code's
  channel-major ``c*k*k + i*k + j`` window order to ours).
- Hidden width of conv2 defaults to 4*D (the paper's 16384 = 4*4096; the released code writes it as
  16*C_enc, equal for LLaVA-7B but not for other encoder/LLM pairs).
- A grid that k does not divide is an error (no padding).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..encoders.base import EncoderInfo, VisionFeatures
from ..errors import CompactVLMError
from ..registry import COMPRESSORS
from .base import WindowCompressor, check_grid_divisible
from .concat import space_to_depth


def default_mbtf_layers(num_layers: int) -> list[int]:
    """Every third block, 1-based: 3,6,...,24 for 24 blocks; the last block if there are fewer than 3."""
    return list(range(3, num_layers + 1, 3)) or [num_layers]


def evenly_sampled_layers(num_layers: int, n: int) -> list[int]:
    """``n`` blocks evenly sampled from 1..num_layers, ending at the last: ceil(i*L/n) for i = 1..n."""
    if not 1 <= n <= num_layers:
        raise CompactVLMError(
            f"mbtf_blocks={n} is not between 1 and the encoder's {num_layers} blocks",
            f"pick 1..{num_layers} (the paper uses {max(num_layers // 3, 1)}, every third block)",
        )
    return [math.ceil(i * num_layers / n) for i in range(1, n + 1)]


def _layer_list(layers: Sequence[int] | str) -> list[int]:
    if isinstance(layers, str):
        try:
            return [int(v) for v in layers.replace(" ", "").split(",") if v]
        except ValueError:
            raise CompactVLMError(f"mbtf_layers={layers!r} is not a list of block indices",
                                  "write it like 3,6,9,12") from None
    return [int(v) for v in layers]


class MultiBlockFusion(nn.Module):
    """MBTF (Eq. 1, Table 1a): concatenated blocks (B, N, M*C) -> 1x1 + GELU -> 1x1 (+ GELU) -> (B, N, C)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, act_last: bool = True):
        super().__init__()
        self.conv1 = nn.Linear(in_dim, hidden)
        self.conv2 = nn.Linear(hidden, out_dim)
        self.act = nn.GELU()
        self.act_last = act_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.act(self.conv1(x)))
        return self.act(x) if self.act_last else x


@COMPRESSORS.register("stf")
class SpatialTokenFusion(WindowCompressor):
    """STF (optionally after MBTF). Options: see the module docstring.

    k: window size and stride; E: tokens per window; layer: block read without MBTF; mbtf: enable MBTF with
    the default blocks; mbtf_layers / mbtf_blocks: MBTF blocks as a list (or "3,6,9") / an evenly sampled
    count (either enables MBTF); fuse_dim: C2; hidden: conv2 width; mbtf_hidden: MBTF conv1 width;
    learned_fuse: False = no conv1 (plain concatenation); act_last: GELU after the last layers (Table 1).
    ``mbtf`` defaults to the class's ``mbtf_default``: off for ``stf``, on for ``stf_mbtf``.
    """

    mbtf_default = False

    @property
    def E(self) -> int:
        """Tokens per window: WindowCompressor's ``per_window``, from which it derives the windows and token count."""
        return self.per_window

    def __init__(
        self,
        enc: EncoderInfo,
        llm_dim: int,
        k: int = 2,
        E: int = 1,
        layer: int = -2,
        mbtf: bool | None = None,
        mbtf_layers: Sequence[int] | str | None = None,
        mbtf_blocks: int | None = None,
        fuse_dim: int | None = None,
        hidden: int | None = None,
        mbtf_hidden: int | None = None,
        learned_fuse: bool = True,
        act_last: bool = True,
    ):
        super().__init__(enc, llm_dim, k=k, layer=layer, per_window=E)  # checks k and layer; E is checked here
        k, E = self.k, int(E)
        if k == 1 and E != 1:
            raise CompactVLMError(f"E={E} with k=1: a 1x1 window holds one token and cannot become {E}",
                                  "use E=1 with k=1 (MBTF alone), or k >= 2")
        if k > 1 and not 1 <= E < k * k:
            raise CompactVLMError(
                f"E={E} tokens per {k}x{k} window is not between 1 and k²-1={k * k - 1} (the paper requires E < k²)",
                f"pick E in 1..{k * k - 1}; E=1 gives {k * k}x fewer tokens",
            )

        # --- MBTF -------------------------------------------------------------------------------------------
        if mbtf_layers is not None and mbtf_blocks is not None:
            raise CompactVLMError("both mbtf_layers and mbtf_blocks were given", "give one of them")
        if mbtf_blocks is not None:
            layers = evenly_sampled_layers(enc.num_layers, int(mbtf_blocks))
        elif mbtf_layers is not None:
            layers = [enc.normalize_layer(v) for v in _layer_list(mbtf_layers)]
            if not layers or len(set(layers)) != len(layers):
                raise CompactVLMError(f"mbtf_layers={mbtf_layers!r} is empty or repeats a block",
                                      "list distinct block indices, e.g. 3,6,9,12")
        elif self.mbtf_default if mbtf is None else mbtf:
            layers = default_mbtf_layers(enc.num_layers)
        else:
            layers = []
        self.mbtf_layers: list[int] = layers
        c1 = enc.hidden_size
        self.mbtf = (
            MultiBlockFusion(len(layers) * c1, int(mbtf_hidden or 4 * c1), c1, act_last) if layers else None
        )

        # --- STF --------------------------------------------------------------------------------------------
        c2 = int(fuse_dim or k * k * c1)
        if not learned_fuse and c2 != k * k * c1:
            raise CompactVLMError(f"fuse_dim={fuse_dim} needs the learned k x k layer",
                                  f"drop fuse_dim or keep learned_fuse=True (without it C2 = k²*C1 = {k * k * c1})")
        if c2 % E:
            raise CompactVLMError(f"E={E} does not divide the fused width C2={c2}",
                                  "pick E dividing C2 (or set fuse_dim to a multiple of E)")
        self.fuse_dim = c2
        self.hidden = int(hidden or 4 * self.llm_dim)
        self.act_last = bool(act_last)
        self.conv1 = nn.Linear(k * k * c1, c2) if learned_fuse else None  # the k x k, stride-k convolution
        self.conv2 = nn.Linear(c2 // E, self.hidden)
        self.conv3 = nn.Linear(self.hidden, self.llm_dim)
        self.act = nn.GELU()

    def feature_layers(self) -> list[int]:
        return list(self.mbtf_layers) if self.mbtf is not None else [self.layer]

    def block_features(self, feats: VisionFeatures) -> torch.Tensor:
        """STF's input: (B, H*W, C1) — MBTF of the chosen blocks, or the patch tokens of ``layer``."""
        if self.mbtf is None:
            return feats.patches(self.layer)  # (B, H*W, C)
        x = torch.cat([feats.patches(l) for l in self.mbtf_layers], dim=-1)  # (B, H*W, M*C)
        return self.mbtf(x)  # (B, H*W, C)

    def fuse(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """k x k fusion + E reshape: (B, H*W, C1) -> (B, H/k*W/k*E, C2/E) (order: module docstring)."""
        check_grid_divisible(grid, self.k)
        x = space_to_depth(x, grid, self.k)  # (B, H/k*W/k, k²C1)
        if self.conv1 is not None:
            x = self.act(self.conv1(x))  # (B, H/k*W/k, C2)
        b, n, c2 = x.shape
        return x.reshape(b, n * self.E, c2 // self.E)  # (B, H/k*W/k*E, C2/E)

    def forward(self, feats: VisionFeatures) -> torch.Tensor:
        x = self.fuse(self.block_features(feats), feats.grid)  # (B, M, C2/E)
        x = self.conv3(self.act(self.conv2(x)))  # (B, M, D)
        return self.act(x) if self.act_last else x


@COMPRESSORS.register("stf_mbtf")
class SpatialTokenFusionMBTF(SpatialTokenFusion):
    """The paper's full method: MBTF (every third block by default) then STF. Same options as ``stf``."""

    mbtf_default = True


# ---- named variants (``--compressor stf_k2e1``; the configurations of the STF paper's tables) -----------------
COMPRESSORS.variant("stf_k2e1", "stf:k=2,E=1", default=True)
for _k, _e in ((2, 2), (4, 1), (4, 4), (4, 8), (8, 4), (8, 8), (8, 16), (8, 32)):
    COMPRESSORS.variant(f"stf_k{_k}e{_e}", f"stf:k={_k},E={_e}")
COMPRESSORS.variant("stf_mbtf_k1e1", "stf_mbtf:k=1,E=1")
COMPRESSORS.variant("stf_mbtf_k2e1", "stf_mbtf:k=2,E=1")
COMPRESSORS.variant("stf_mbtf_k2e1_b16", "stf_mbtf:k=2,E=1,mbtf_blocks=16")
COMPRESSORS.variant("stf_mbtf_k2e1_b24", "stf_mbtf:k=2,E=1,mbtf_blocks=24")
