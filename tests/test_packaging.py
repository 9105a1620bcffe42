"""``scripts/check_extras.py`` (run by CI: `pip install .[demo]` into the venv must change no installed version):
its comparison of pip's ``--report`` with what is installed, on canned reports (no network here)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_extras", ROOT / "scripts" / "check_extras.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def report(*pairs):
    return {"install": [{"metadata": {"name": n, "version": v}} for n, v in pairs]}


def test_a_downgrade_is_named(check):
    out = check.changes(report(("Pillow", "12.3.0"), ("gradio", "6.31.0")), {"pillow": "13.0.0"})
    assert out == ["Pillow: 13.0.0 -> 12.3.0 (downgrade)"]


def test_upgrades_count_too_and_new_or_equal_packages_do_not(check):
    installed = {"numpy": "2.4.6", "typing-extensions": "4.12.0", "compactvlm": "0.0.1"}
    out = check.changes(report(("numpy", "2.4.6"), ("typing_extensions", "4.15.0"), ("gradio", "6.31.0"),
                               ("compactvlm", "0.1.0")), installed)
    assert out == ["typing_extensions: 4.12.0 -> 4.15.0 (upgrade)"]


def test_pillow_cap_matches_the_demo_extra():
    """The core pillow requirement is capped where gradio caps it, so the demo extra keeps the installed one."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pillow = [d for d in deps if d.lower().startswith("pillow")]
    assert pillow == ["pillow>=10,<13"]
