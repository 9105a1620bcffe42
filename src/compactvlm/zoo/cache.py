"""Where converted weights live: ``$COMPACTVLM_CACHE`` or ``~/.cache/compactvlm``."""

from __future__ import annotations

import os
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
