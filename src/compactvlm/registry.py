"""Name -> class registries, in the style of timm's ``register_model`` / ``create_model``.

    @COMPRESSORS.register("stf")
    class SpatialTokenFusion(Compressor): ...

    COMPRESSORS.create("stf", enc=info, llm_dim=576, k=2, E=1)
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, TypeVar

from .errors import CompactVLMError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> type[T]:
        _load_builtin_modules()
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise CompactVLMError(
                f"unknown {self.kind} {name!r}",
                f"{hint}available: {', '.join(self.names())}",
            )
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        _load_builtin_modules()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
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
