"""Where converted weights live: ``$COMPACTVLM_CACHE`` or ``~/.cache/compactvlm``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("COMPACTVLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "compactvlm"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def package_file(package: str, relpath: str) -> Path | None:
    """Find a data file shipped in an installed package *without importing it*."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        f = Path(loc) / relpath
        if f.exists():
            return f
    return None


def publish_dir(tmp: Path, target: Path, complete: Callable[[], bool]) -> None:
    """Move a finished conversion in ``tmp`` to ``target``, safely when several processes convert at once.

    A complete copy (``complete()``) that another process published meanwhile is kept: it may be loading from it
    right now (deleting it made a concurrent run fail on a half-deleted tokenizer). Only an incomplete leftover is
    replaced. The caller removes ``tmp`` afterwards.
    """
    if complete():
        return
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)  # incomplete leftover (e.g. written by an old version)
    try:
        os.replace(tmp, target)
    except OSError:
        if not complete():  # nobody else finished first: a real error
            raise
