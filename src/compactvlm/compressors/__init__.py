"""Registered compressors; importing this package registers every built-in method."""

import importlib
import pkgutil

from .base import Compressor, create_compressor

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base",) and not _m.ispkg:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Compressor", "create_compressor"]
