"""Name -> class registries, in the style of timm's ``register_model`` / ``create_model``.

    @COMPRESSORS.register("stf")
    class SpatialTokenFusion(Compressor): ...

    COMPRESSORS.variant("stf_k2e1", "stf:k=2,E=1", default=True)   # a named variant, next to its method

    COMPRESSORS.create("stf", enc=info, llm_dim=576, k=2, E=1)

A *variant* is a name for a method with options (timm's ``vit_base_patch16_224``): a spec string in the one spec
syntax (``compactvlm.spec``), registered in the method's own file, accepted wherever a method name is
(``--compressor stf_k2e1``, ``model.compressor: stf_k2e1``, bench rows) and listed by ``compactvlm info``.
``default=True`` puts it in the default comparisons (``compactvlm serve``'s methods, ``compactvlm bench``'s rows).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from .errors import CompactVLMError

T = TypeVar("T")


@dataclass(frozen=True)
class Variant:
    name: str
    spec: str  # e.g. "stf:k=2,E=1"
    default: bool = False  # one of the default comparisons (serve's methods, bench's rows)

    @property
    def method(self) -> str:
        return self.spec.partition(":")[0].strip()


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}
        self._variants: dict[str, Variant] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            if name in self._variants:
                raise RuntimeError(f"{self.kind} {name!r} is already the name of a variant")
            self._items[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Remove a method and its variants (plugins and tests that register temporary methods)."""
        self._items.pop(name, None)
        for v in [v for v in self._variants.values() if v.method == name]:
            del self._variants[v.name]

    def variant(self, name: str, spec: str, default: bool = False) -> Variant:
        """Register ``name`` as ``spec`` (``METHOD[:key=value,...]``, e.g. ``"stf:k=2,E=1"``); call it in the
        method's own file, after the method is registered."""
        v = Variant(name, spec.strip(), default)
        if v.method not in self._items:
            raise RuntimeError(f"variant {name!r} names {v.method!r}, which is no registered {self.kind}")
        if name in self._items or (name in self._variants and self._variants[name] != v):
            raise RuntimeError(f"{self.kind} variant {name!r} registered twice (or the name of a method)")
        self._variants[name] = v
        return v

    def variants(self) -> list[Variant]:
        """Every named variant, in registration order."""
        _load_builtin_modules()
        return list(self._variants.values())

    def get_variant(self, name: str) -> Variant | None:
        _load_builtin_modules()
        return self._variants.get(name)

    def get(self, name: str) -> type[T]:
        _load_builtin_modules()
        if name not in self._items:
            if name in self._variants:
                raise CompactVLMError(f"{name!r} is a named variant ({self._variants[name].spec}), not a {self.kind}",
                                      f"parse it with compactvlm.spec.MethodSpec or create {self._variants[name].spec}")
            close = difflib.get_close_matches(name, list(self._items) + list(self._variants), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise CompactVLMError(
                f"unknown {self.kind} {name!r}",
                f"{hint}available: {', '.join(self.names())}"
                + (f"; named variants: {', '.join(self._variants)}" if self._variants else ""),
            )
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        _load_builtin_modules()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        """True for a registered method name (not for a variant name: see ``get_variant``)."""
        _load_builtin_modules()
        return name in self._items


COMPRESSORS: Registry = Registry("compressor")
REDUCTIONS: Registry = Registry("reduction")
MASK_SOURCES: Registry = Registry("mask source")
OBJECT_EMBEDDERS: Registry = Registry("object embedding")

_loaded = False


def _load_builtin_modules() -> None:
    """Import the packages whose modules register themselves (once, lazily)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for pkg in ("compactvlm.compressors", "compactvlm.reduction", "compactvlm.compressors.masks"):
        try:
            importlib.import_module(pkg)
        except ModuleNotFoundError as e:  # a package not written yet is fine; a broken import is not
            if e.name != pkg:
                raise
