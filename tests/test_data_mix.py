"""The stage-2 mix of instruction conversations and captions (compactvlm.data.mix, scripts/make_mix.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compactvlm.data.mix import mix_records, write_mix
from compactvlm.errors import CompactVLMError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def build(tmp_path):
    conv = [{"id": f"qa-{i}", "image": f"images/train/{i}.jpg", "conversations": []} for i in range(10)]
    caps = [{"id": f"caption-{i}", "image": f"images/caption/{i}.jpg", "conversations": []} for i in range(8)]
    (tmp_path / "train.json").write_text(json.dumps(conv))
    (tmp_path / "caption.json").write_text(json.dumps(caps))
    return tmp_path


def test_mix_takes_the_asked_records_shuffled_and_reproducibly(build):
    mix = mix_records(build, 6, (5, 8), seed=0)
    ids = [r["id"] for r in mix]
    assert sorted(ids) == sorted([f"qa-{i}" for i in range(6)] + ["caption-5", "caption-6", "caption-7"])
    assert ids != [f"qa-{i}" for i in range(6)] + ["caption-5", "caption-6", "caption-7"]  # shuffled
    assert [r["id"] for r in mix_records(build, 6, (5, 8), seed=0)] == ids
    assert [r["id"] for r in mix_records(build, 6, (5, 8), seed=1)] != ids


def test_mix_refuses_what_the_build_does_not_hold(build):
    with pytest.raises(CompactVLMError, match="has 10 and 8"):
        mix_records(build, 11, (0, 1))
    with pytest.raises(CompactVLMError, match="captions 5:9"):
        mix_records(build, 1, (5, 9))
    with pytest.raises(CompactVLMError, match="start <= stop"):
        mix_records(build, 1, (5, 4))
    with pytest.raises(CompactVLMError, match="caption.json"):
        mix_records(build / "nowhere", 0, (0, 2))


def test_script_writes_and_never_overwrites(build, tmp_path):
    out = tmp_path / "mix.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "make_mix.py"), "--data", str(build), "--qa", "4",
           "--captions", "0:2", "--out", str(out)]
    env = {"PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())) == 6
    out.write_text("mine")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "exists" in r.stderr and out.read_text() == "mine"
    assert write_mix(build, out, 2, (0, 0)) == out and len(json.loads(out.read_text())) == 2
