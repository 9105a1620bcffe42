"""What differs between the transformers versions compactvlm runs on (pyproject: >= 5.17, < 6).

Tested on 5.25 (CI, the CPU machines) and 5.17 (the GPU machines' image, where the bench ran):
- recent versions renamed the KV-cache keyword of the decoder stacks and layers from ``past_key_values`` to
  ``cache``. Passing the wrong one is silently swallowed by ``**kwargs``: the cache stays empty, so a decode step
  would run without its prompt. Every call that hands transformers a cache names its keyword through
  ``cache_kwargs``;
- DINOv2's layers take an attention mask only in recent versions (CLIP's and SigLIP's always do): VisToG's
  isolated extra tokens and ToMe's proportional attention need one, so they refuse older DINOv2 layers with
  ``UPGRADE`` as the way out (``takes_attention_mask``), as VisionZip does for their older attention layout.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


UPGRADE = "upgrade transformers (5.25 is tested: pip install -U 'transformers>=5.25,<6')"


def version() -> str:
    import transformers

    return transformers.__version__


@functools.lru_cache(maxsize=None)
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def takes_attention_mask(layer) -> bool:
    """Whether a transformers encoder layer's ``forward`` takes ``attention_mask``."""
    return _forward_takes(type(layer), "attention_mask")


def cache_keyword(cls: type) -> str:
    """The KV-cache keyword of a transformers module class's ``forward``: ``cache`` or ``past_key_values``."""
    return "cache" if _forward_takes(cls, "cache") else "past_key_values"


def cache_kwargs(module, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for calling ``module`` (a causal LM, its decoder stack or one decoder layer; a PEFT
    wrapper, whose ``forward`` takes ``**kwargs`` only, is asked for the model it wraps). Called at every decoding
    step: the signature lookups are cached per class."""
    cls = type(module)
    if not (_forward_takes(cls, "cache") or _forward_takes(cls, "past_key_values")) and hasattr(module, "get_base_model"):
        cls = type(module.get_base_model())
    return {cache_keyword(cls): cache}
