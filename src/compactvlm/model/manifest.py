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
        for rel, want in files.items():
            if not isinstance(want, dict) or not isinstance(want.get("size"), int) or not isinstance(want.get("sha256"), str):
                raise TypeError(f"entry {rel!r} is not {{size, sha256}}")
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


# ---- ownership markers ---------------------------------------------------------------------------------
#: the marker file every folder compactvlm creates carries: {"compactvlm_artifact": KIND, "version": N, ...}
MARKER_NAME = ".compactvlm-artifact.json"
MARKER_VERSION = 1
LOCK_NAME = ".compactvlm.lock"  # held by the process writing a training output_dir or an eval --out folder
ARTIFACT_KINDS = ("sceneqa-build", "checkpoint", "eval-run", "training-run")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder`` (None when it has none or it is unreadable)."""
    p = Path(folder) / MARKER_NAME
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("compactvlm_artifact") in ARTIFACT_KINDS else None


def marker_kind(folder: str | os.PathLike) -> str | None:
    m = read_marker(folder)
    return m["compactvlm_artifact"] if m else None


def write_marker(folder: str | os.PathLike, kind: str, **info) -> Path:
    """Mark ``folder`` as a compactvlm ``kind`` artifact (commands replace or delete only what they marked)."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    from .. import __version__

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    out = root / MARKER_NAME
    tmp = root / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps({"compactvlm_artifact": kind, "version": MARKER_VERSION, "compactvlm": __version__,
                               **info}, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


_KIND_WORDS = {"sceneqa-build": "a SceneQA build", "checkpoint": "a compactvlm checkpoint",
               "eval-run": "an evaluation output folder", "training-run": "a training output folder"}


def describe_kind(kind: str | None) -> str:
    return _KIND_WORDS.get(kind or "", "no compactvlm artifact")


def folder_listing(folder: Path, limit: int = 5) -> str:
    """A few entries of ``folder`` for messages: 'a.jpg, notes/, ... (+3 more)'."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "?"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def refuse_foreign(folder: Path, want: str, option: str, found: str | None = None) -> CompactVLMError:
    """The error for a folder in the way that compactvlm cannot prove it wrote as a ``want`` artifact."""
    kind = found if found is not None else marker_kind(folder)
    what = (f"holds {describe_kind(kind)}, not {describe_kind(want)}" if kind
            else f"is not empty and was not written by compactvlm as {describe_kind(want)} (no {MARKER_NAME})")
    return CompactVLMError(
        f"{folder} {what}; it holds {folder_listing(folder)}. Nothing was changed",
        f"choose a new or empty folder for {option}: compactvlm only replaces folders it marked as its own")


def folder_digest(folder: str | os.PathLike) -> str:
    """A short identity of a model folder for records of what produced an output: the SHA-256 of its
    ``manifest.json`` (which hashes every file), or, for a folder without one, of its file names, sizes and
    modification times (cheap for multi-GB foreign checkpoints)."""
    root = Path(folder)
    mf = root / MANIFEST_NAME
    h = hashlib.sha256()
    if mf.is_file():
        h.update(b"manifest\0" + mf.read_bytes())
    else:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
