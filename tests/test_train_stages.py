"""Stages as configuration: trainability per module prefix, LoRA, learning-rate groups, stage-1 -> stage-2 init."""

import pytest
import torch
from safetensors.torch import load_file

from compactvlm.config import from_dict
from compactvlm.errors import CompactVLMError
from compactvlm.model.checkpoint import load_pretrained, read_config
from compactvlm.testing import tiny_vlm
from compactvlm.train import train
from compactvlm.train.config import StageConfig, load_train_config
from compactvlm.train.fixtures import tiny_train_config
from compactvlm.train.stages import apply_stage


def stage(**modules):
    return from_dict(StageConfig, {"modules": modules})


def test_prefixes_modes_and_learning_rates():
    model = tiny_vlm("vistog", tokens=4, grouping=True)
    groups, rows = apply_stage(model, stage(encoder="frozen", compressor={"mode": "full", "lr": 2e-5},
                                            **{"compressor.grouping": {"mode": "full", "lr": 1e-3}}, llm="frozen"),
                               base_lr=5e-4)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"compressor", "compressor.grouping"}
    assert by["compressor"]["lr"] == 2e-5 and by["compressor.grouping"]["lr"] == 1e-3
    grouping = {id(p) for p in model.compressor.grouping.parameters()}
    assert {id(p) for p in by["compressor.grouping"]["params"]} == grouping
    assert not grouping & {id(p) for p in by["compressor"]["params"]}
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert {r.prefix: r.trainable for r in rows}["llm"] == 0


def test_lora_only_adapters_train():
    model = tiny_vlm("mlp2x_gelu")
    s = stage(encoder="frozen", compressor="full", llm="lora")
    s.lora.target_modules = ["q_proj", "v_proj"]
    s.lora.r = 2
    groups, _ = apply_stage(model, s, base_lr=1e-4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    llm_names = [n for n in names if n.startswith("llm.")]
    assert llm_names and all("lora_" in n for n in llm_names)
    assert any("q_proj" in n for n in llm_names) and not any("k_proj" in n for n in llm_names)
    assert sum(len(g["params"]) for g in groups) == len(names)


@pytest.mark.parametrize("modules, match", [
    ({"compresor": "full"}, "matches no parameter"),
    ({"compressor": "frozen", "llm": "frozen"}, "trains no parameter"),
])
def test_stage_errors(modules, match):
    with pytest.raises(CompactVLMError, match=match):
        apply_stage(tiny_vlm("mlp2x_gelu"), stage(**modules), base_lr=1e-3)


def test_stage_config_errors():
    with pytest.raises(CompactVLMError, match="not one of"):
        stage(llm="half")
    with pytest.raises(CompactVLMError, match="only supported on the whole LLM"):
        stage(compressor="lora")
    bad = stage(llm="lora")
    bad.lora.target_modules = ["nope"]
    with pytest.raises(CompactVLMError, match="not modules of the LLM"):
        apply_stage(tiny_vlm("mlp2x_gelu"), bad, base_lr=1e-3)


def test_stage2_new_modules_are_explicit(tmp_path):
    """VisToG: stage 1 without grouping, stage 2 adds semantic tokens + grouping layer from init.new_modules."""
    s1 = train(tiny_train_config(tmp_path, ["model.compressor=vistog", "model.compressor_params={tokens: 4, grouping: false}",
                                            "optim.max_steps=2", "output_dir=" + str(tmp_path / "s1"),
                                            "eval.at_start=false"]))
    proj1 = load_file(str(s1.final_dir / "compressor.safetensors"))
    assert "semantic_tokens" not in proj1
    stage2 = ["model.compressor=vistog", "model.compressor_params={tokens: 4, grouping: true}", "optim.max_steps=2",
              f"init.from={s1.final_dir}", "stage.modules={encoder: frozen, compressor: full, llm: frozen}",
              "output_dir=" + str(tmp_path / "s2"), "eval.at_start=false", "optim.lr=1e-12"]
    # without naming the new modules: a clear error, not a silent partial load
    with pytest.raises(CompactVLMError, match="missing .*(grouping|semantic_tokens)"):
        train(tiny_train_config(tmp_path, stage2))
    with pytest.raises(CompactVLMError, match="names no weight"):
        train(tiny_train_config(tmp_path, stage2 + ["init.new_modules=[compressor.groupin]"]))
    res = train(tiny_train_config(tmp_path, stage2 + ["init.new_modules=[compressor.grouping, compressor.semantic_tokens]"]))
    w2 = load_file(str(res.final_dir / "compressor.safetensors"))
    assert "semantic_tokens" in w2 and any(k.startswith("grouping.") for k in w2)
    for k, v in proj1.items():  # the stage-1 projector was loaded (and barely moved at lr 1e-12)
        torch.testing.assert_close(w2[k], v, rtol=0, atol=1e-6)
    # an unexpected weight (stage-2 checkpoint into a model without grouping) is an error too
    with pytest.raises(CompactVLMError, match="unexpected"):
        train(tiny_train_config(tmp_path, ["model.compressor=vistog", "model.compressor_params={tokens: 4, grouping: false}",
                                           f"init.from={res.final_dir}", "output_dir=" + str(tmp_path / "s3")]))


def test_lora_stage_checkpoint_loads_merged(tmp_path):
    res = train(tiny_train_config(tmp_path, [
        "stage.modules={encoder: frozen, compressor: full, llm: lora}", "stage.lora.r=2", "stage.lora.dropout=0.0",
        "stage.lora.target_modules=[q_proj, v_proj]", "optim.max_steps=2", "optim.lr=1e-2", "eval.at_start=false"]))
    _, meta = read_config(res.final_dir)
    assert meta["llm_weights"]["kind"] == "lora" and meta["train"]["stage"]["modules"]["llm"]["mode"] == "lora"
    sd = load_file(str(res.final_dir / "llm.safetensors"))
    assert sd and all("lora_" in k for k in sd)  # only the trained adapters are stored
    merged = load_pretrained(res.final_dir, progress=False)
    assert not hasattr(merged.llm, "peft_config")
    base = load_pretrained(res.final_dir, progress=False)
    # the merged LLM differs from the base LLM (the adapters moved at lr 1e-2)
    from compactvlm.model.build import load_llm

    plain, _ = load_llm(read_config(res.final_dir)[0].llm)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (merged.llm.state_dict()[q] - plain.state_dict()[q]).abs().max() > 0
    assert torch.equal(merged.llm.state_dict()[q], base.llm.state_dict()[q])


def test_shipped_stage_recipes():
    s1 = load_train_config("configs/train/llava15_stage1.yaml")
    s2 = load_train_config("configs/train/llava15_stage2.yaml")
    assert (s1.optim.lr, s1.optim.batch_size, s1.optim.epochs, s1.optim.warmup_ratio) == (1e-3, 256, 1, 0.03)
    assert (s2.optim.lr, s2.optim.batch_size, s2.optim.weight_decay, s2.optim.schedule) == (2e-5, 128, 0.0, "cosine")
    assert s1.stage.specs()["llm"].mode == "frozen" and s1.stage.specs()["compressor"].mode == "full"
    assert s2.stage.specs()["llm"].mode == "full" and s2.init.from_
    c1 = load_train_config("configs/train/cpu_stage1.yaml")
    assert c1.optim.lr == 1e-3 and c1.precision == "auto" and c1.model.system_prompt == "" and c1.logits == "labels"


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_uses_bf16_only_where_native(tmp_path, monkeypatch, capsys, native):
    """precision=auto resolves to bf16 only where the device runs bf16 matmuls natively (on an AVX2-only CPU bf16 is
    emulated, tens of times slower than fp32); an explicit bf16 there is kept but warned about. The run logs the
    precision it used."""
    import json

    from compactvlm.train import trainer as trainer_mod
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config

    monkeypatch.setattr(trainer_mod, "bf16_is_fast", lambda device="cpu": native)
    assert trainer_mod.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert trainer_mod.resolve_precision("fp32", "cpu") == "fp32"
    assert trainer_mod.resolve_precision("bf16", "cpu") == "bf16"
    for asked, used in (("auto", "bf16" if native else "fp32"), ("bf16", "bf16")):
        out = tmp_path / asked
        train(tiny_train_config(tmp_path, ["optim.max_steps=1", "optim.batch_size=2", "optim.per_device_batch_size=2",
                                           f"precision={asked}", f"output_dir={out}", "threads=1"]))
        start = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][0]
        assert start["event"] == "start" and start["precision"] == used
        err = capsys.readouterr().err
        assert ("WARNING: precision=bf16" in err) == (asked == "bf16" and not native)


def test_training_with_a_reduction_active(tmp_path, capsys):
    """reduce.*: the run trains on the tokens a training-free reduction keeps (cached features included); the saved
    model is the compressor's alone, so it loads with all its tokens until the reduction is set again."""
    from compactvlm.train.logging import read_events

    res = train(tiny_train_config(tmp_path, ["reduce.name=dart", "reduce.budget=3", "reduce.params={pivots: 1}",
                                             "cache_features=true", "optim.max_steps=2", "optim.lr=1e-2",
                                             "eval.at_start=false"]))
    start = [e for e in read_events(res.output_dir) if e.get("event") == "start"][0]
    assert start["image_tokens"] == 3
    assert "training with reduction dart(budget=3, pivots=1, dup=0.999): 3 vision tokens" in capsys.readouterr().err
    model = load_pretrained(res.final_dir, progress=False)
    assert model.reduction is None and model.num_image_tokens() == 64  # the compressor's 8x8
    _, meta = read_config(res.final_dir)
    assert meta["train"]["reduce"] == {"name": "dart", "budget": 3, "params": {"pivots": 1}}
    model.set_budget(3, reduce="dart", pivots=1)
    assert model.num_image_tokens() == 3
    # the CLI says so when such a model runs without its reduction, and is quiet when it runs with it
    from PIL import Image

    from compactvlm.cli import main

    img = tmp_path / "q.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    ask = ["ask", "--checkpoint", str(res.final_dir), "--image", str(img), "--question", "what colour ?",
           "--max-new-tokens", "2"]
    capsys.readouterr()
    assert main(ask) == 0
    err = capsys.readouterr().err
    assert "was trained with reduction dart at budget 3 (pivots=1) active; it runs here with 64 vision tokens" in err
    assert "pass --reduce dart:pivots=1 --budget 3 to answer as it trained" in err
    assert main(ask + ["--reduce", "dart:pivots=2", "--budget", "3"]) == 0  # same budget, other options: still a note
    assert "was trained with reduction dart at budget 3 (pivots=1)" in capsys.readouterr().err
    assert main(ask + ["--reduce", "dart:pivots=1", "--budget", "3"]) == 0
    assert "was trained with reduction" not in capsys.readouterr().err


@pytest.mark.parametrize("overrides, match", [
    (["reduce.name=fastv", "reduce.budget=3"], "prunes inside the LLM"),
    (["reduce.name=dart"], "needs a token budget"),
    (["reduce.budget=3"], "reduce.name is not"),
    (["reduce.name=dartt", "reduce.budget=3"], "unknown reduction 'dartt'"),
    (["reduce.name=dart", "reduce.budget=3", "objective=grounding", "stage.modules={llm: frozen, compressor: full}"],
     "a reduction cannot be active"),
])
def test_training_reduction_config_errors(tmp_path, overrides, match):
    with pytest.raises(CompactVLMError, match=match):
        tiny_train_config(tmp_path, overrides)
