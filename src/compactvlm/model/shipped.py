"""Short names for the weights shipped inside the package: ``demo:NAME`` is the folder
``compactvlm/assets/demo/NAME`` (``demo:stf-k2e1``, ``demo:full-mlp2x``).

``resolve_checkpoint`` is the one place a checkpoint argument becomes a folder: every loader of the library
(``checkpoint.read_config`` / ``load_pretrained`` / ``load_weights``, ``interop.detect_layout`` / ``load_model``)
and every command option that takes a checkpoint (``--checkpoint`` of ask / eval / viz / serve, the model
folder of ``export``, ``convert`` and ``bench --model``) passes it through here. Anything not starting with
``demo:`` is returned unchanged (as a Path); an unknown short name is an error that lists the known ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CompactVLMError

PREFIX = "demo:"


def shipped_dir() -> Path:
    """The folder holding the shipped checkpoints (one sub-folder per short name)."""
    return Path(__file__).resolve().parents[1] / "assets" / "demo"


def shipped_names() -> list[str]:
    """The short names (``demo:NAME``) of the shipped checkpoints, sorted."""
    root = shipped_dir()
    if not root.is_dir():
        return []
    return sorted(PREFIX + p.name for p in root.iterdir() if p.is_dir() and (p / "compactvlm.json").is_file())


def is_short_name(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve_checkpoint(value: str | os.PathLike) -> Path:
    """``demo:NAME`` -> the shipped folder; any other value -> ``Path(value)`` (not checked here)."""
    if not is_short_name(value):
        return Path(value)
    name = value[len(PREFIX):]
    known = shipped_names()
    if not name or "/" in name or "\\" in name or PREFIX + name not in known:
        raise CompactVLMError(f"unknown shipped checkpoint {value!r}",
                              f"use one of {', '.join(known) or '(none shipped in this install)'}, or a folder path")
    return shipped_dir() / name
