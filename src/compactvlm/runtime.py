"""Process settings an entry point fixes once, before it builds a model: CPU threads and the device.

Every entry point (the commands, training, the lmms-eval plugin, the scripts) calls ``set_threads`` once with its
``--threads`` / ``threads`` setting and ``check_device`` for its ``--device``, so a bad value is refused before
any model load, with the same message everywhere.
"""

from __future__ import annotations

import torch

from .errors import CompactVLMError


def check_threads(threads) -> int | None:
    """``threads`` as a positive int, or None (torch's default)."""
    if threads is None:
        return None
    try:
        n = int(threads)
    except (TypeError, ValueError):
        n = 0
    if isinstance(threads, bool) or n < 1 or str(n) != str(threads).strip():
        raise CompactVLMError(f"--threads must be >= 1, got {threads}", "leave it out for torch's default")
    return n


def set_threads(threads=None) -> int:
    """Fix torch's intra-op CPU threads for this process (None: leave torch's default); returns the count in use.
    Timings (``efficiency.timing``) read it back with ``torch.get_num_threads()``."""
    n = check_threads(threads)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def check_device(device: str | torch.device | None = "cpu", allow_meta: bool = False) -> torch.device:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``; ``meta`` when ``allow_meta``) as a torch device, refused with a
    message when this machine cannot run it."""
    name = str(device or "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise CompactVLMError(f"--device {name!r} is not supported", "use cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CompactVLMError(f"--device {name} but this torch has no usable CUDA GPU",
                                  "use --device cpu (the default), or install a CUDA build of torch")
    elif dev.type != "cpu" and not (allow_meta and dev.type == "meta"):
        raise CompactVLMError(f"--device {name!r} is not supported", "use cpu or cuda[:N]")
    return dev
