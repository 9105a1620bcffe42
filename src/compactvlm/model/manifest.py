"""``manifest.json`` of a compact-model / training-checkpoint folder: every file with its size and SHA-256.

``save_pretrained`` writes it last, inside the temporary folder, before the folder is renamed into place (the
files are fsync'ed while they are hashed), so a folder that has a manifest was written completely. Loading
verifies it: a flipped byte, a truncated or a missing file is named in a ``CompactVLMError`` instead of
being loaded as silently different weights. Folders written before manifests existed load unchecked.

    {"format": 1, "algorithm": "sha256",
     "files": {"compressor.safetensors": {"size": 1234, "sha256": "ab12..."}, ...}}

Files that are not listed (added to the folder later by hand) are not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import CompactVLMError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


def _hash_file(path: Path, sync: bool = False) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            size += len(block)
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    return size, h.hexdigest()


def build_manifest(folder: str | os.PathLike, sync: bool = False) -> dict:
    """Size and SHA-256 of every file under ``folder`` (sub-folders included; POSIX relative names)."""
    root = Path(folder)
    files = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        rel = p.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        size, digest = _hash_file(p, sync=sync)
        files[rel] = {"size": size, "sha256": digest}
    return {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": files}


def write_manifest(folder: str | os.PathLike) -> Path:
    """Hash (and fsync) every file of ``folder`` and write ``manifest.json`` (fsync'ed too)."""
    root = Path(folder)
    data = build_manifest(root, sync=True)
    out = root / MANIFEST_NAME
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    return out


def _damaged(folder: Path, what: str) -> CompactVLMError:
    return CompactVLMError(
        f"checkpoint {folder} is damaged: {what}",
        "do not use this folder; re-save the model, or resume / re-train from an earlier checkpoint "
        "(e.g. resume=OUT/checkpoints/step-N of a previous step)",
    )


def verify_manifest(folder: str | os.PathLike) -> bool:
    """Check every file the manifest lists (size first, then SHA-256). Returns False for a folder without a
    manifest (written by an older version; loaded unchecked), True when all listed files match."""
    root = Path(folder)
    mf = root / MANIFEST_NAME
    if not mf.exists():
        return False
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _damaged(root, f"{MANIFEST_NAME} is unreadable ({e})") from None
    for rel, want in files.items():
        p = root / rel
        if not p.is_file():
            raise _damaged(root, f"file {rel} listed in {MANIFEST_NAME} is missing")
        size = p.stat().st_size
        if size != int(want["size"]):
            raise _damaged(root, f"file {rel} is {size} bytes, the manifest says {want['size']} (truncated or "
                                 "overwritten)")
        _, digest = _hash_file(p)
        if digest != want["sha256"]:
            raise _damaged(root, f"file {rel} is corrupted (its SHA-256 does not match {MANIFEST_NAME})")
    return True
