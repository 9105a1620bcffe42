"""Training-free token reductions at inference; importing this package registers every built-in method (every
module of the package is imported, so a new reduction is one file).

    model.reduction = REDUCTIONS.create("visionzip", budget=64, model=model)
"""

import importlib
import pkgutil

from .base import PatchReduction, Reduction, check_budget

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.ispkg:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PatchReduction", "Reduction", "check_budget"]
