"""Every shipped YAML under configs/ loads: train configs as TrainConfig, model configs as ModelConfig (and their
compressor builds on the default encoder/LLM shapes), accelerate configs through accelerate's own loader."""

from pathlib import Path

import pytest
import yaml

from compactvlm.config import load_config
from compactvlm.errors import CompactVLMError
from compactvlm.model.build import ModelConfig
from compactvlm.train.config import TrainConfig, load_train_config, to_plain, train_config_from_dict

ROOT = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(ROOT.glob("**/*.yaml"))


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_configs_exist():
    folders = {p.parent.name for p in ALL}
    assert {"train", "model", "accelerate"} <= folders


@pytest.mark.parametrize("path", [p for p in ALL if p.parent.name == "train"], ids=_id)
def test_train_config_loads(path):
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig) and cfg.data.train and cfg.output_dir
    assert cfg.optim.batch_size % cfg.optim.per_device_batch_size == 0
    assert any(s.mode != "frozen" for s in cfg.stage.specs().values())
    # the file spelling survives a round trip (what a checkpoint stores is loadable again)
    assert to_plain(train_config_from_dict(to_plain(cfg))) == to_plain(cfg)


@pytest.mark.parametrize("path", [p for p in ALL if p.parent.name == "model"], ids=_id)
def test_model_config_loads_and_compressor_builds(path):
    from compactvlm.compressors.base import create_compressor
    from compactvlm.encoders.base import EncoderInfo

    cfg = load_config(path, ModelConfig)
    # DINOv2-S/14 at the config's size, SmolLM2-135M's width: the compressor's options are valid
    enc = EncoderInfo(hidden_size=384, num_layers=12, patch_size=14, image_size=cfg.image_size, num_heads=6)
    comp = create_compressor(cfg.compressor, enc=enc, llm_dim=576, **cfg.compressor_params)
    assert comp.num_output_tokens(enc.grid) >= 1


@pytest.mark.parametrize("path", [p for p in ALL if p.parent.name == "accelerate"], ids=_id)
def test_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.mixed_precision in ("no", "bf16", "fp16")
    assert str(cfg.distributed_type.value) in ("MULTI_GPU", "FSDP", "DEEPSPEED", "MULTI_CPU", "NO")


@pytest.mark.parametrize("path", [p for p in ALL if p.parent.name not in ("train", "model", "accelerate")], ids=_id)
def test_other_configs_parse(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_overrides_and_errors(tmp_path):
    cfg = load_train_config(ROOT / "train" / "cpu_stage2.yaml",
                            ["optim.lr=3e-4", "init.from=somewhere", "model.compressor_params.k=4",
                             "stage.modules.llm=full"])
    assert cfg.optim.lr == 3e-4 and cfg.init.from_ == "somewhere" and cfg.model.compressor_params == {"k": 4, "E": 1}
    assert cfg.stage.specs()["llm"].mode == "full"
    assert cfg.data.train.endswith("train.json") and cfg.model.system_prompt == ""  # inherited / overridden
    with pytest.raises(CompactVLMError, match="optim.lrr"):
        load_train_config(ROOT / "train" / "cpu_stage1.yaml", ["optim.lrr=1"])
    with pytest.raises(CompactVLMError, match="must be a number"):
        load_train_config(ROOT / "train" / "cpu_stage1.yaml", ["optim.lr=fast"])
    with pytest.raises(CompactVLMError, match="multiple of"):
        load_train_config(ROOT / "train" / "cpu_stage1.yaml", ["optim.per_device_batch_size=3"])
    with pytest.raises(CompactVLMError, match="init.from is not"):
        load_train_config(None, ["init.new_modules=[compressor.grouping]"])
    loop = tmp_path / "a.yaml"
    loop.write_text("_base_: a.yaml\n")
    with pytest.raises(CompactVLMError, match="itself"):
        load_train_config(loop)


def test_cli_train_print_config_and_errors(capsys):
    from compactvlm.cli import main

    assert main(["train", "--config", str(ROOT / "train" / "cpu_stage2.yaml"), "--print-config", "optim.max_steps=7",
                 "init.from=runs/x/final"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["max_steps"] == 7 and printed["init"]["from"] == "runs/x/final"
    assert printed["stage"]["modules"]["llm"]["mode"] == "lora"
    assert main(["train", "--config", str(ROOT / "train" / "cpu_stage1.yaml"), "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err
