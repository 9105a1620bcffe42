"""Check that installing an extra (default: demo) into this interpreter's environment would change no installed
package's version: `pip install --dry-run --report` resolves it, nothing is installed.

    .venv/bin/python scripts/check_extras.py            # .[demo]
    .venv/bin/python scripts/check_extras.py demo dev

Exit 0: every package pip would install is new to the environment or already at that version; 1: it would
replace installed versions (each named, with a "downgrade"/"upgrade" word); 2: pip could not resolve (no package
index reachable, or a conflict), with pip's message. The project itself (compactvlm) is ignored. Needs a package
index (or pip's cache) for the extra's packages and the build backend.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "compactvlm"


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_versions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def version_key(v: str):
    try:
        from packaging.version import Version

        return Version(v)
    except Exception:  # noqa: BLE001 - packaging missing or a non-PEP-440 version: compare as text
        return v


def changes(report: dict, installed: dict[str, str]) -> list[str]:
    """One line per installed package whose version the ``pip --report`` JSON would change."""
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, new = canonical(meta.get("name", "")), meta.get("version", "")
        old = installed.get(name)
        if name == PROJECT or old is None or old == new:
            continue
        try:
            word = "downgrade" if version_key(new) < version_key(old) else "upgrade"
        except TypeError:
            word = "change"
        out.append(f"{meta.get('name')}: {old} -> {new} ({word})")
    return out


def dry_run(extras: list[str]) -> dict:
    target = f"{ROOT}[{','.join(extras)}]"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), target]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not report.exists():
            tail = "\n".join(line for line in (res.stderr or res.stdout).splitlines()
                             if not line.startswith("WARNING: Location"))[-2000:]
            raise RuntimeError(f"pip could not resolve {target} (exit {res.returncode}):\n{tail}")
        return json.loads(report.read_text())


def main(argv: list[str]) -> int:
    extras = argv or ["demo"]
    try:
        report = dry_run(extras)
    except RuntimeError as e:
        print(f"check_extras: {e}", file=sys.stderr)
        return 2
    bad = changes(report, installed_versions())
    spec = f".[{','.join(extras)}]"
    if bad:
        print(f"check_extras: pip install {spec} would change installed packages:\n  " + "\n  ".join(bad)
              + "\nwiden or cap the requirement in pyproject.toml so that the installed versions satisfy the extra",
              file=sys.stderr)
        return 1
    new = [i["metadata"]["name"] for i in report.get("install", []) if canonical(i["metadata"]["name"]) != PROJECT]
    print(f"check_extras: pip install {spec} adds {len(new)} package(s) and changes no installed version")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
