"""Whether an LLM carries peft (LoRA) adapters, and the model under them: one test for every layer that asks
(checkpoints, assets, export, training)."""

from __future__ import annotations

from torch import nn


def is_peft(module: nn.Module) -> bool:
    """True for a peft-wrapped model (LoRA adapters not merged)."""
    return hasattr(module, "get_base_model") and hasattr(module, "peft_config")


def base_llm(llm: nn.Module) -> nn.Module:
    """The transformers model itself: under the adapters of a peft-wrapped LLM, else ``llm``."""
    return llm.get_base_model() if is_peft(llm) else llm
