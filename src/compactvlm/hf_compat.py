"""What differs between the transformers versions compactvlm runs on (pyproject: >= 5.17, < 6).

Tested on 5.25 (CI, the CPU machines) and 5.17 (the GPU machines' image, where the bench ran): recent versions
renamed the KV-cache keyword of the decoder stacks and layers from ``past_key_values`` to ``cache``. Passing the
wrong one is silently swallowed by ``**kwargs``: the cache stays empty, so a decode step would run without its
prompt. Every call that hands transformers a cache names its keyword through ``cache_kwargs``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def cache_keyword(cls: type) -> str:
    """The KV-cache keyword of a transformers module class's ``forward``: ``cache`` or ``past_key_values``."""
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(module, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for calling ``module`` (a causal LM, its decoder stack or one decoder layer; a PEFT
    wrapper, whose ``forward`` takes ``**kwargs`` only, is asked for the model it wraps)."""
    params = inspect.signature(type(module).forward).parameters
    if "cache" not in params and "past_key_values" not in params and hasattr(module, "get_base_model"):
        module = module.get_base_model()
    return {cache_keyword(type(module)): cache}
