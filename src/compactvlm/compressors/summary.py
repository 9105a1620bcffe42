"""Parameter and token-count table of compressors, built on the meta device (no memory, no weights).

    from compactvlm.compressors.summary import PRESETS, param_table, format_table
    p = PRESETS["llava-1.5-7b"]
    print(format_table(param_table(p.enc, p.llm_dim, [("stf", {"k": 2, "E": 1}), ("avgpool", {})])))

or ``python -c "from compactvlm.compressors.summary import main; main()"`` for every preset and the
default list of configurations (``DEFAULT_SPECS``).

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

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..encoders.base import EncoderInfo
from ..errors import CompactVLMError
from .base import create_compressor


@dataclass(frozen=True)
class Preset:
    enc: EncoderInfo
    llm_dim: int
    description: str


PRESETS: dict[str, Preset] = {
    "llava-1.5-7b": Preset(
        EncoderInfo(hidden_size=1024, num_layers=24, patch_size=14, image_size=336, num_heads=16),
        4096,
        "CLIP ViT-L/14-336 (1024 wide, 24 blocks, 24x24 grid) + Vicuna-7B (4096)",
    ),
    "default": Preset(
        EncoderInfo(hidden_size=384, num_layers=12, patch_size=14, image_size=224, num_heads=6),
        576,
        "DINOv2-S/14 at 224 (384 wide, 12 blocks, 16x16 grid) + SmolLM2-135M (576)",
    ),
}

#: The configurations of the STF paper's tables (Tables 1, 3-7 of v1/v2) plus the full-token reference.
DEFAULT_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("mlp2x_gelu", {}),
    ("stf", {"k": 2, "E": 1}),
    ("stf", {"k": 2, "E": 2}),
    ("stf", {"k": 4, "E": 4}),
    ("stf", {"k": 4, "E": 8}),
    ("stf", {"k": 8, "E": 4}),
    ("stf", {"k": 8, "E": 8}),
    ("stf", {"k": 8, "E": 16}),
    ("stf", {"k": 8, "E": 32}),
    ("stf_mbtf", {"k": 1, "E": 1}),
    ("stf_mbtf", {"k": 2, "E": 1}),
    ("stf_mbtf", {"k": 2, "E": 1, "mbtf_blocks": 16}),
    ("stf_mbtf", {"k": 2, "E": 1, "mbtf_blocks": 24}),
    ("avgpool", {"k": 2}),
    ("concat", {"k": 2}),
    ("qformer", {}),
    ("random_drop", {}),
]


def param_table(enc: EncoderInfo, llm_dim: int, specs: Sequence[tuple[str, dict[str, Any]]] = DEFAULT_SPECS,
                grid: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """One row per (name, options): name, options, params, trainable, tokens (on ``grid``, default the
    encoder's), and error (None, or why that configuration does not apply to this encoder)."""
    rows = []
    for name, params in specs:
        row: dict[str, Any] = {"name": name, "options": _fmt_opts(params), "params": None, "trainable": None,
                               "tokens": None, "error": None}
        try:
            with torch.device("meta"):
                comp = create_compressor(name, enc, llm_dim, **params)
            row["params"] = sum(p.numel() for p in comp.parameters())
            row["trainable"] = sum(p.numel() for p in comp.parameters() if p.requires_grad)
            row["tokens"] = comp.num_output_tokens(grid or enc.grid)
        except CompactVLMError as e:
            row["error"] = e.problem
        rows.append(row)
    return rows


def _fmt_opts(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``param_table`` rows."""
    lines = ["| compressor | options | tokens | params |", "|---|---|---:|---:|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['name']} | {r['options']} | n/a | n/a ({r['error']}) |")
        else:
            lines.append(f"| {r['name']} | {r['options']} | {r['tokens']} | {r['params']:,} |")
    return "\n".join(lines)


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"stf:k=4,E=8"`` -> ("stf", {"k": 4, "E": 8}) (``compactvlm.spec.parse_options``)."""
    from ..spec import parse_options

    return parse_options(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Parameter and token counts of compressors (meta device).")
    ap.add_argument("--preset", choices=sorted(PRESETS), action="append",
                    help="encoder/LLM shapes (default: all presets)")
    ap.add_argument("--spec", action="append", metavar="NAME[:k=v,...]",
                    help="configurations to list (default: the paper's table of configurations)")
    args = ap.parse_args(argv)
    specs = [parse_spec(s) for s in args.spec] if args.spec else DEFAULT_SPECS
    for key in args.preset or list(PRESETS):
        p = PRESETS[key]
        print(f"\n### {key}: {p.description}, grid {p.enc.grid[0]}x{p.enc.grid[1]} "
              f"= {p.enc.grid[0] * p.enc.grid[1]} patch tokens\n")
        print(format_table(param_table(p.enc, p.llm_dim, specs)))
    return 0
