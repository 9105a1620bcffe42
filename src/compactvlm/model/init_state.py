"""Which trainable parts of a model still hold their random initialisation (their answers mean nothing).

A compressor created by ``build_model`` without a checkpoint, by ``compactvlm serve`` for its presets or by the
tiny test models is marked *random* (``mark_random``); loading its weights from a checkpoint
(``checkpoint.load_compressor_weights``) or a training step clears the mark. Compressors built elsewhere
(converted llava-hf / LLaVA folders, whose projector weights are loaded on construction) carry no mark and
count as trained. ``untrained_parts(model)`` names the marked parts that have learned parameters; the commands
print it as a warning (``commands._common.warn_untrained``), ``serve`` marks such methods in its list and
token maps say so.
"""

from __future__ import annotations

from torch import nn

_ATTR = "_compactvlm_random_init"


def mark_random(module: nn.Module, random: bool = True) -> nn.Module:
    """Mark ``module``'s weights as at their random initialisation (``random=False``: loaded or trained)."""
    setattr(module, _ATTR, bool(random))
    return module


def is_random(module: nn.Module | None) -> bool:
    """Whether ``module`` has learned parameters that are still at their random initialisation."""
    if module is None or not getattr(module, _ATTR, False) or getattr(module, "training_free", False):
        return False
    return any(True for _ in module.parameters())


def untrained_parts(model) -> list[str]:
    """Human-readable names of ``model``'s trainable parts at their random initialisation (empty: none)."""
    comp = getattr(model, "compressor", None)
    if is_random(comp):
        return [f"compressor {getattr(comp, 'registry_name', type(comp).__name__)!r}"]
    return []
