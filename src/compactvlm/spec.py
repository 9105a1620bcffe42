"""The one spec syntax for a method, everywhere (CLI ``--compressor``, bench rows, study plans, the lmms-eval
plugin): ``NAME[:key=value,...][+REDUCTION[:key=value,...]]``, e.g. ``stf:k=2,E=1`` or
``mlp2x_gelu+fastv:budget=64,k=2``. Option values are Python literals (``3``, ``1e-3``, ``(3, 6, 9)``), else
strings; a comma starts a new option only when ``key=`` follows it (``mbtf_layers=3,6,9`` stays one option).
A reduction's ``budget`` is its token budget; its other options go to the reduction.

A name may be a registered *variant* (``registry.Registry.variant``): ``stf_k2e1`` is ``stf:k=2,E=1``; options
written after it override the variant's (``stf_k2e1:E=2`` is ``stf:k=2,E=2``).
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


def format_options(opts: dict[str, Any]) -> str:
    """``parse_options``'s inverse for the options part: ``{"k": 4, "mbtf_layers": (3, 6, 9)}`` ->
    ``"k=4,mbtf_layers=3,6,9"`` (a sequence of several values is written comma-separated, as the syntax reads it)."""
    def value(v: Any) -> str:
        if isinstance(v, (tuple, list)) and len(v) > 1 and all(not isinstance(x, (tuple, list, dict)) for x in v):
            return ",".join(str(x) for x in v)
        return str(v)

    return ",".join(f"{k}={value(v)}" for k, v in opts.items())


def resolve_variant(registry, name: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(method, options)`` of ``name`` in ``registry``: a variant's method and options (``params`` override
    them), or ``name`` and ``params`` unchanged."""
    params = dict(params or {})
    v = registry.get_variant(name)
    if v is None:
        return name, params
    method, opts = parse_options(v.spec)
    return method, {**opts, **params}


def _unquote(text):
    if isinstance(text, str):
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].strip()
    return text


@dataclass
class MethodSpec:
    text: str
    compressor: str
    compressor_params: dict[str, Any] = field(default_factory=dict)
    reduction: str | None = None
    reduction_params: dict[str, Any] = field(default_factory=dict)
    #: a test-time budget of the compressor itself (``objects``), given on its own without a reduction
    own_budget: int | None = None

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        """Parse ``text``; variant names resolve to their method and options; an unknown name is refused with
        the registry's list of what exists."""
        from .registry import COMPRESSORS, REDUCTIONS

        text = text.strip()
        comp_part, plus, red_part = text.partition("+")
        name, params = parse_options(comp_part)
        if not name:
            raise CompactVLMError(f"spec {text!r} names no compressor", "write e.g. stf:k=2 or mlp2x_gelu+fastv:budget=64")
        name, params = resolve_variant(COMPRESSORS, name, params)
        COMPRESSORS.get(name)  # unknown: the error lists the compressors and variants
        red, red_params = (None, {})
        if plus:
            red, red_params = parse_options(red_part)
            if not red:
                raise CompactVLMError(f"spec {text!r} has '+' but no reduction",
                                      "write e.g. mlp2x_gelu+visionzip:budget=64")
            red, red_params = resolve_variant(REDUCTIONS, red, red_params)
            REDUCTIONS.get(red)
        return cls(text, name, params, red, red_params)

    @classmethod
    def combine(cls, spec: str | None = None, reduce: str | None = None, budget: int | None = None) -> "MethodSpec":
        """One spec from the settings a command or plugin takes apart: ``spec`` (the whole syntax; None: the
        model's own compressor, ``compressor == ""``), ``reduce`` (``NAME[:key=value,...]``) and ``budget``. A
        setting given twice (in the spec and on its own) is refused; a budget without a reduction is the
        compressor's own (``objects``), kept in ``own_budget``. Quotes around a value are dropped (lmms-eval's
        ``--model_args 'pretrained=DIR,method="mlp2x_gelu+fastv:budget=16,k=2"'`` keeps them)."""
        from .registry import REDUCTIONS

        spec, reduce = _unquote(spec), _unquote(reduce)
        out = cls.parse(spec) if spec else cls("", "")
        if reduce:
            if out.reduction:
                raise CompactVLMError(f"{spec} names a reduction and reduce {reduce} another",
                                      "give the reduction once (in the spec, or on its own)")
            name, opts = parse_options(str(reduce))
            out.reduction, out.reduction_params = resolve_variant(REDUCTIONS, name, opts)
            REDUCTIONS.get(out.reduction)
            out.text = f"{out.text or '?'}+{reduce}"
        if budget is not None:
            if out.budget is not None:
                raise CompactVLMError(f"the budget is set twice ({out.budget} and {budget})", "give the budget once")
            try:
                n = int(budget)
            except (TypeError, ValueError):
                n = None
            if n is None or isinstance(budget, bool) or n != budget and str(n) != str(budget).strip():
                raise CompactVLMError(f"budget {budget!r} is not a whole number of tokens", "give e.g. budget=64")
            if out.reduction:
                out.reduction_params["budget"] = n
            else:
                out.own_budget = n
        return out

    @property
    def label(self) -> str:
        return self.text

    def apply(self, model) -> None:
        """Set this spec's test-time part on ``model`` (``CompactVLM.set_budget``): its reduction with options
        and budget, or the compressor's own budget. The compressor itself is built from ``compressor`` /
        ``compressor_params`` by whoever builds the model."""
        if self.reduction or self.budget is not None or self.own_budget is not None:
            model.set_budget(self.budget if self.reduction else self.own_budget, self.reduction,
                             **self.reduction_options)

    @property
    def budget(self) -> int | None:
        b = self.reduction_params.get("budget")
        return None if b is None else int(b)

    @property
    def reduction_options(self) -> dict[str, Any]:
        """The reduction's own options (all but ``budget``)."""
        return {k: v for k, v in self.reduction_params.items() if k != "budget"}


#: the full-token reference every comparison starts with (LLaVA-1.5's projector over all patch tokens)
REFERENCE = "mlp2x_gelu"


def default_comparison(num_patches: int) -> list[str]:
    """The default methods to compare (``compactvlm serve``'s list, ``compactvlm bench``'s rows), as specs: the
    full-token reference, every compressor variant registered with ``default=True``, and every registered reduction
    over the reference at a quarter of the ``num_patches`` patch tokens with its own default options. Nothing here
    is kept by hand: a new variant or reduction joins by registering. Callers drop the ones their model cannot run
    (e.g. FastV's ``k=2`` on a 2-layer LLM, avgpool's square budget) by building each and catching the error."""
    from .registry import COMPRESSORS, REDUCTIONS

    q = max(1, int(num_patches) // 4)
    out = [REFERENCE] + [v.name for v in COMPRESSORS.variants() if v.default]
    return out + [f"{REFERENCE}+{name}:budget={q}" for name in REDUCTIONS.names()]
