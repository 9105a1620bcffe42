"""Memory: what weights, KV caches and one run take, and what the device has free (the bench's peak memory and
KV-cache columns, the "will it fit" checks before building random-weight backbones).

- ``weight_bytes`` / ``exclusive_bytes``: bytes of a model's parameters and buffers (shared tensors once);
- ``cache_bytes``: keys + values held by a transformers cache (also on ``meta`` tensors);
- ``peak_memory``: peak bytes while a call runs: on CUDA ``torch.cuda.max_memory_allocated`` (weights included);
  on the CPU the weights' bytes plus the peak of the tensor allocations the profiler records
  (``profile_memory=True``);
- ``available_bytes``: free memory of a device (CUDA ``mem_get_info``, else ``MemAvailable`` of /proc/meminfo).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable

import torch


def available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cache_bytes(cache) -> int:
    """Bytes of keys + values held by a transformers cache (works on meta tensors)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _tensors(*modules):
    for m in modules:
        yield from m.parameters()
        yield from m.buffers()


def _unique_bytes(tensors, seen: set) -> int:
    """Bytes of ``tensors`` not on ``meta`` whose storage is not in ``seen`` (which collects them)."""
    total = 0
    for t in tensors:
        if t.device.type == "meta" or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def weight_bytes(model) -> int:
    """Bytes of a model's parameters and buffers, shared tensors counted once."""
    return _unique_bytes(_tensors(model), set())


def exclusive_bytes(others: list, model) -> int:
    """Bytes of the weights of ``others`` that ``model`` does not share."""
    return _unique_bytes(_tensors(*others), {t.data_ptr() for t in _tensors(model)})


@contextlib.contextmanager
def quiet_stderr_fd():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the duration."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(model, fn: Callable[[], Any], device: torch.device) -> tuple[int | None, str]:
    """Peak bytes while ``fn`` runs (weights included) and how they were measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr_fd(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = top = 0
    for e in events:
        cur += e.nbytes()
        top = max(top, cur)
    return weight_bytes(model) + int(top), "weights + peak of profiled CPU allocations"
