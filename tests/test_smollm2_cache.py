"""The SmolLM2 cache is published safely when two processes convert at the same time."""

from pathlib import Path

import pytest

from compactvlm.zoo import smollm2
from compactvlm.zoo.cache import publish_dir


def _fake_conversion(root: Path, marker: str) -> Path:
    tmp = root / f".tmp-{marker}"
    tmp.mkdir()
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        (tmp / f).write_text(marker)
    return tmp


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPACTVLM_CACHE", str(tmp_path))
    return tmp_path


def test_first_conversion_is_published(cache):
    tmp = _fake_conversion(cache, "a")
    publish_dir(tmp, smollm2.cached_dir(), smollm2.is_cached)
    assert smollm2.is_cached() and (smollm2.cached_dir() / "tokenizer.json").read_text() == "a"
    assert not tmp.exists()


def test_complete_copy_of_another_process_is_kept(cache):
    publish_dir(_fake_conversion(cache, "first"), smollm2.cached_dir(), smollm2.is_cached)
    tok = smollm2.cached_dir() / "tokenizer.json"
    inode = tok.stat().st_ino
    publish_dir(_fake_conversion(cache, "second"), smollm2.cached_dir(), smollm2.is_cached)  # a slower, concurrent conversion
    assert tok.read_text() == "first" and tok.stat().st_ino == inode  # untouched while others may read it


def test_incomplete_leftover_is_replaced(cache):
    target = smollm2.cached_dir()
    target.mkdir()
    (target / "config.json").write_text("partial")  # no weights, no tokenizer
    publish_dir(_fake_conversion(cache, "new"), target, smollm2.is_cached)
    assert smollm2.is_cached() and (target / "config.json").read_text() == "new"
