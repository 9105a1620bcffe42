"""LLaVA-STF (Tang & Shen, "Learning Compact Vision Tokens ..."; the authors' code is a fork of LLaVA-1.5)
-> CompactVLM with the ``stf`` compressor: MBTF on the released block list, no learned k x k layer, no GELU
after the last layer of either module (``learned_fuse=False, act_last=False``, see ``compressors.stf``).

Layout: the original LLaVA layout (``llava_orig``: config.json with the mm_* fields, LLM shards, tokenizer,
``mm_projector.bin`` or projector keys in the shards, vision tower from ``mm_vision_tower`` / ``vision_tower=``)
with the projector as two modules. Weight names (as the released code registers them on the LLaVA model;
C = ``mm_hidden_size`` = 1024, D = the LLM width = 4096 for LLaVA-1.5-7B):

    model.mm_projector_crosslayer.0.weight/bias   Linear(8C -> 4C)   cross-layer (MBTF) fusion, then GELU
    model.mm_projector_crosslayer.2.weight/bias   Linear(4C -> C)
    model.mm_projector.0.weight/bias              Linear(4C -> 16C)  on 2x2 space-to-depth tokens, then GELU
    model.mm_projector.2.weight/bias              Linear(16C -> D)

``mm_projector_type`` stays ``mlp2x_gelu`` in the fork's config.json (its builder makes the 4C -> 16C -> D MLP
under that name), so a folder is recognised as LLaVA-STF by its ``mm_projector_crosslayer`` weights.

The released forward, with ``h`` the CLIP hidden states (``h[0]`` = embeddings after the pre-norm, ``h[l]`` =
output of block l) and the CLS token dropped:

    x = cat([h[s], h[21], h[18], h[15], h[12], h[9], h[6], h[3]], -1)[:, 1:]   # s = mm_vision_select_layer (-2)
    x = crosslayer(x)                                                           # (B, H*W, C)
    x = x.view(B, H, W, C).unfold(1, 2, 2).unfold(2, 2, 2)                      # (B, H/2, W/2, C, 2, 2)
    x = x.reshape(B, H/2 * W/2, 4C)                                             # parameter-free space-to-depth
    tokens = mm_projector(x)

``Tensor.unfold`` appends the window axes after the channel axis, so the space-to-depth is channel-major:
channel c of window cell (i, j) lands at ``c*4 + i*2 + j``. compactvlm's ``space_to_depth`` is token-major
(``(i*2 + j)*C + c``), so ``mm_projector.0``'s input columns are permuted on conversion
(``stf_columns_to_ours``); the test checks this ordering against a literal re-implementation of the unfold.
The block list 21, 18, ..., 3 is hard-coded in the released code (a 24-block ViT-L): ``mbtf_layers`` =
``[s, 21, 18, 15, 12, 9, 6, 3]``; an encoder with fewer blocks is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CompactVLMError
from . import common
from ..model.image_tokens import accept_image_token
from .llava_orig import llava_image_token, read_parts, stored_dtype, vision_and_llm  # noqa: F401  (stored_dtype re-exported)

LAYOUT = "llava-stf"
FIXED_BLOCKS = (21, 18, 15, 12, 9, 6, 3)
K = 2
NAMES = {  # compactvlm stf key -> LLaVA-STF key
    "mbtf.conv1.weight": "mm_projector_crosslayer.0.weight", "mbtf.conv1.bias": "mm_projector_crosslayer.0.bias",
    "mbtf.conv2.weight": "mm_projector_crosslayer.2.weight", "mbtf.conv2.bias": "mm_projector_crosslayer.2.bias",
    "conv2.weight": "mm_projector.0.weight", "conv2.bias": "mm_projector.0.bias",
    "conv3.weight": "mm_projector.2.weight", "conv3.bias": "mm_projector.2.bias",
}


def stf_columns_to_ours(w: torch.Tensor, channels: int, k: int = K) -> torch.Tensor:
    """Permute the input columns of a Linear fed by the released channel-major space-to-depth
    (``c*k*k + i*k + j``) to compactvlm's token-major order (``(i*k + j)*C + c``)."""
    if w.shape[1] != k * k * channels:
        raise CompactVLMError(f"mm_projector.0 takes {w.shape[1]} inputs, not {k * k}*{channels}",
                              "the checkpoint's mm_hidden_size does not match its projector")
    perm = torch.arange(k * k * channels).reshape(channels, k * k).t().reshape(-1)
    return w[:, perm]


def compressor_params(select_layer: int, channels: int, hidden: int, mbtf_hidden: int) -> dict:
    return {"k": K, "E": 1, "mbtf_layers": [int(select_layer), *FIXED_BLOCKS], "learned_fuse": False,
            "act_last": False, "hidden": int(hidden), "mbtf_hidden": int(mbtf_hidden)}


def read(src, dtype: str | None = None, projector=None, vision_tower=None, model_base=None, tokenizer=None, **_):
    """The LLaVA-STF folder ``src`` as an in-memory CompactVLM (``dtype`` None: float32)."""
    src = Path(src)
    dtype = common.dtype_name(dtype)
    parts = read_parts(src, projector, vision_tower, model_base)
    p = parts.projector
    unknown = sorted(set(p) - set(NAMES.values()))
    missing = sorted(set(NAMES.values()) - set(p))
    if missing or unknown:
        raise CompactVLMError(
            f"{parts.projector_from} is not a LLaVA-STF projector: "
            + "; ".join(filter(None, [f"missing {missing[:4]}" if missing else "",
                                      f"unexpected {unknown[:4]}" if unknown else ""])),
            "LLaVA-STF has mm_projector_crosslayer.{0,2} and mm_projector.{0,2}; for plain LLaVA use --from llava")
    source = f"{src} ({LAYOUT})"
    vision, size, mean, std, llm, tok = vision_and_llm(parts, dtype, source, tokenizer, model_base)
    c = int(vision.config.hidden_size)
    blocks = int(vision.config.num_hidden_layers)
    if blocks < max(FIXED_BLOCKS):
        raise CompactVLMError(f"the vision tower has {blocks} blocks; LLaVA-STF reads blocks up to {max(FIXED_BLOCKS)}",
                              "use the CLIP ViT-L/14 the model was trained with (--vision-tower)")
    cl0 = p["mm_projector_crosslayer.0.weight"]
    if cl0.shape[1] != (1 + len(FIXED_BLOCKS)) * c:
        raise CompactVLMError(f"mm_projector_crosslayer.0 takes {cl0.shape[1]} inputs, not 8 blocks x {c} channels",
                              "the vision tower does not match the checkpoint (--vision-tower)")
    comp_sd = {ours: p[theirs] for ours, theirs in NAMES.items()}
    comp_sd["conv2.weight"] = stf_columns_to_ours(p["mm_projector.0.weight"], c)
    params = compressor_params(parts.raw["mm_vision_select_layer"], c, hidden=p["mm_projector.0.weight"].shape[0],
                               mbtf_hidden=cl0.shape[0])
    model = common.assemble(vision, size, mean, std, "stf", params, comp_sd, llm, tok, dtype, source,
                            names=(str(parts.tower_dir), str(src)), aspect=common.llava_aspect(parts.raw))
    return accept_image_token(model, llava_image_token(parts.raw, tok))
