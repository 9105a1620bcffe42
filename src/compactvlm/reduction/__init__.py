"""Training-free token reductions at inference; importing this package registers every built-in method.

    model.reduction = REDUCTIONS.create("visionzip", budget=64, model=model)
"""

from . import avgpool, dart, divprune, fastv, pyramiddrop, random, sparsevlm, tome, visionzip  # noqa: F401  (registration)
from .base import PatchReduction, Reduction, check_budget

__all__ = ["PatchReduction", "Reduction", "check_budget"]
