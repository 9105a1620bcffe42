"""The one spec syntax for a method, everywhere (CLI ``--compressor``, bench rows, study plans, the lmms-eval
plugin): ``NAME[:key=value,...][+REDUCTION[:key=value,...]]``, e.g. ``stf:k=2,E=1`` or
``mlp2x_gelu+fastv:budget=64,k=2``. Option values are Python literals (``3``, ``1e-3``, ``(3, 6, 9)``), else
strings; a comma starts a new option only when ``key=`` follows it (``mbtf_layers=3,6,9`` stays one option).
A reduction's ``budget`` is its token budget; its other options go to the reduction.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import CompactVLMError


def parse_options(text: str) -> tuple[str, dict[str, Any]]:
    """``"stf:k=4,E=8,mbtf_layers=3,6,9"`` -> ("stf", {"k": 4, "E": 8, "mbtf_layers": (3, 6, 9)})."""
    name, _, rest = text.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, re.split(r",(?=\s*\w+\s*=)", rest)):
        key, sep, val = item.partition("=")
        if not sep:
            raise CompactVLMError(f"option {item!r} of {text!r} is not key=value", "write e.g. stf:k=2,E=1")
        try:
            opts[key.strip()] = ast.literal_eval(val.strip())
        except (ValueError, SyntaxError):
            opts[key.strip()] = val.strip()
    return name.strip(), opts


@dataclass
class MethodSpec:
    text: str
    compressor: str
    compressor_params: dict[str, Any] = field(default_factory=dict)
    reduction: str | None = None
    reduction_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        text = text.strip()
        comp_part, plus, red_part = text.partition("+")
        name, params = parse_options(comp_part)
        if not name:
            raise CompactVLMError(f"spec {text!r} names no compressor", "write e.g. stf:k=2 or mlp2x_gelu+fastv:budget=64")
        red, red_params = (None, {})
        if plus:
            red, red_params = parse_options(red_part)
            if not red:
                raise CompactVLMError(f"spec {text!r} has '+' but no reduction",
                                      "write e.g. mlp2x_gelu+visionzip:budget=64")
        return cls(text, name, params, red, red_params)

    @property
    def label(self) -> str:
        return self.text

    @property
    def budget(self) -> int | None:
        b = self.reduction_params.get("budget")
        return None if b is None else int(b)

    @property
    def reduction_options(self) -> dict[str, Any]:
        """The reduction's own options (all but ``budget``)."""
        return {k: v for k, v in self.reduction_params.items() if k != "budget"}
