"""scripts/ship_demo_weights.py: a fully trained checkpoint becomes a shipped folder (compressor + extracted LoRA)
with the extracted model's own real / shuffled-image evaluation in provenance.json; foreign folders are kept."""

import importlib.util
import json
from pathlib import Path

import pytest

from compactvlm.data.sceneqa import build_sceneqa
from compactvlm.errors import CompactVLMError
from compactvlm.train import train
from compactvlm.train.fixtures import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("ship_demo_weights", ROOT / "scripts" / "ship_demo_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ship_a_fully_trained_checkpoint(tmp_path):
    from compactvlm.model.checkpoint import load_pretrained
    from compactvlm.model.manifest import verify_manifest

    cfg = tiny_train_config(tmp_path, ["stage.modules={encoder: frozen, compressor: full, llm: full}",
                                       "model.compressor=stf:k=2,E=1", "optim.max_steps=2", "eval.every_steps=0",
                                       "eval.at_start=false", "eval.at_end=false"])
    final = train(cfg).final_dir
    assert json.loads((final / "compactvlm.json").read_text())["llm_weights"]["kind"] == "full"
    sq = tmp_path / "sq"
    build_sceneqa(sq, seed=0, progress=False, sizes={"caption": 0, "train": 0, "val": 0, "test": 4})
    n = len((sq / "test_answers.jsonl").read_text().splitlines())
    dest = tmp_path / "assets"
    mod = _script()
    args = ["--checkpoint", str(final), "--rank", "2", "--data", str(sq), "--dest", str(dest),
            "--work", str(tmp_path / "work"), "--recipe", "stage 1 command", "--recipe", "stage 2 command"]
    assert mod.main(args + ["--row", "stf-k2e1"]) == 0
    shipped = dest / "stf-k2e1"
    prov = json.loads((shipped / "provenance.json").read_text())
    assert prov["recipe"] == ["stage 1 command", "stage 2 command"] and prov["source_checkpoint"] == str(final)
    assert prov["test"]["n_questions"] == n and set(prov["test"]["gap"]["controls"]) == {"shuffled"}
    assert prov["lora_extraction"]["rank"] == 2
    meta = json.loads((shipped / "compactvlm.json").read_text())
    assert meta["llm_weights"]["kind"] == "lora"
    assert not (shipped / "tokenizer").exists()  # the packaged tokenizer is the same one
    assert not [f.name for f in shipped.iterdir() if f.name.startswith(".")]  # package data globs skip dot files
    assert verify_manifest(shipped)
    load_pretrained(shipped, progress=False)
    # shipping again replaces the earlier shipped folder; a folder that is not one is refused and left alone
    assert mod.main(args + ["--row", "stf-k2e1"]) == 0
    (dest / "mine").mkdir()
    (dest / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(CompactVLMError, match="not a shipped folder"):
        mod.main(args + ["--row", "mine"])
    assert (dest / "mine" / "notes.txt").read_text() == "keep"
