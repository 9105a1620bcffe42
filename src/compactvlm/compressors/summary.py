"""Parameter and token-count table of compressors, built on the meta device (no memory, no weights).

    from compactvlm.compressors.summary import param_table, format_table
    from compactvlm.model.presets import get_preset
    p = get_preset("llava-1.5-7b")
    print(format_table(param_table(p.encoder_info, p.llm_dim, ["stf_k2e1", "stf:k=4,E=8", ("avgpool", {})])))

or ``compactvlm info --table`` for every preset and every named variant of the registry (``table_specs``; the
STF variants are the configurations of the paper's tables), ``compactvlm info --compressor SPEC`` for others.

Table 1 of Tang & Shen (compact-vision-tokens_stf-mbtf_v1.txt) against the modules, LLaVA-1.5-7B shapes
(CLIP ViT-L/14-336: width 1024, 24 blocks, 24 x 24 grid; Vicuna-7B width 4096), counts include biases:
    MBTF conv1  1x1   8 x 1024 = 8192 -> 4096  GeLU   8192*4096 + 4096   = 33,558,528
    MBTF conv2  1x1   4096 -> 1024             GeLU   4096*1024 + 1024   =  4,195,328   (MBTF 37,753,856)
    STF  conv1  2x2   1024 -> 4096 (stride 2)  GeLU   4*1024*4096 + 4096 = 16,781,312
    STF  conv2  1x1   4096 -> 16384            GeLU   4096*16384 + 16384 = 67,125,248
    STF  conv3  1x1  16384 -> 4096             GeLU   16384*4096 + 4096  = 67,112,960   (STF 151,019,520)
    MBTF + STF (k=2, E=1): 188,773,376 parameters, 144 tokens.
The baselines at the same budget: AvgPool and random_drop = LLaVA MLP 1024 -> 4096 -> 4096 (1024*4096 + 4096
+ 4096*4096 + 4096 = 20,979,712, the same as LLaVA-1.5's own projector); TokenConcat = MLP 4096 -> 4096 -> 4096
(2 * (4096*4096 + 4096) = 33,562,624). STF's conv1 grows as k^4: k*k*C1 -> k*k*C1 is 4.3e9 parameters at
k=8 on ViT-L (the paper's "SFC parameters increase with kernel size"); ``fuse_dim`` sets C2 smaller.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..encoders.base import EncoderInfo
from ..errors import CompactVLMError
from ..registry import COMPRESSORS
from ..spec import REFERENCE, format_options, parse_options, resolve_variant
from .base import create_compressor


def table_specs() -> list[str]:
    """The full-token reference and every named compressor variant, in registration order."""
    return [REFERENCE] + [v.name for v in COMPRESSORS.variants()]


def param_table(enc: EncoderInfo, llm_dim: int, specs: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
                grid: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """One row per compressor spec (``"stf:k=2,E=1"``, a variant name, or a ``(name, options)`` pair; default
    ``table_specs()``): name as given, options (a variant's resolved), params, trainable, tokens (on ``grid``,
    default the encoder's), and error (None, or why that configuration does not apply to this encoder)."""
    rows = []
    for item in table_specs() if specs is None else specs:
        if isinstance(item, str) and "+" in item:
            raise CompactVLMError(f"{item!r} names a reduction; the parameter table lists compressors only",
                                  "drop the +REDUCTION part")
        name, params = parse_options(item) if isinstance(item, str) else (item[0], dict(item[1]))
        method, resolved = resolve_variant(COMPRESSORS, name, params)
        row: dict[str, Any] = {"name": name, "options": format_options(resolved),
                               "params": None, "trainable": None, "tokens": None, "error": None}
        try:
            with torch.device("meta"):
                comp = create_compressor(method, enc, llm_dim, **resolved)
            row["params"] = sum(p.numel() for p in comp.parameters())
            row["trainable"] = sum(p.numel() for p in comp.parameters() if p.requires_grad)
            row["tokens"] = comp.num_output_tokens(grid or enc.grid)
        except CompactVLMError as e:
            row["error"] = e.problem
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``param_table`` rows."""
    lines = ["| compressor | options | tokens | params |", "|---|---|---:|---:|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['name']} | {r['options']} | n/a | n/a ({r['error']}) |")
        else:
            lines.append(f"| {r['name']} | {r['options']} | {r['tokens']} | {r['params']:,} |")
    return "\n".join(lines)
