"""One spec syntax for a method everywhere: NAME[:key=value,...][+REDUCTION[:key=value,...]] (compactvlm.spec),
parsed once onto the CLI's options."""

import argparse

import pytest
from PIL import Image

from compactvlm.cli import main
from compactvlm.commands._common import add_model_args, compressor_params, resolve_spec
from compactvlm.errors import CompactVLMError
from compactvlm.spec import MethodSpec, format_options, parse_options


def test_parse():
    s = MethodSpec.parse("mlp2x_gelu+fastv:budget=16,k=2")
    assert (s.compressor, s.reduction, s.budget, s.reduction_options) == ("mlp2x_gelu", "fastv", 16, {"k": 2})
    s = MethodSpec.parse("stf:k=2,E=1,mbtf_layers=3,6,9")
    assert s.compressor_params == {"k": 2, "E": 1, "mbtf_layers": (3, 6, 9)} and s.reduction is None
    assert parse_options("vistog:tokens=32") == ("vistog", {"tokens": 32})
    with pytest.raises(CompactVLMError, match="not key=value"):
        MethodSpec.parse("stf:k")
    with pytest.raises(CompactVLMError, match="no reduction"):
        MethodSpec.parse("stf+")


@pytest.mark.parametrize("opts", [{"k": 2, "E": 1}, {"k": 4, "mbtf_layers": (3, 6, 9), "lr": 1e-3},
                                  {"pivots": "cls", "budget": 16}, {}])
def test_format_options_reads_back(opts):
    text = format_options(opts)
    assert parse_options(f"stf:{text}" if text else "stf") == ("stf", opts)
    assert format_options({"k": 4, "mbtf_layers": (3, 6, 9)}) == "k=4,mbtf_layers=3,6,9"


def _args(*argv):
    p = argparse.ArgumentParser()
    add_model_args(p)
    return p.parse_args(list(argv))


def test_cli_options_from_a_spec():
    a = resolve_spec(_args("--compressor", "mlp2x_gelu+fastv:budget=16,k=2"))
    assert (a.compressor, a.reduce, a.budget, a.reduce_params) == ("mlp2x_gelu", "fastv", 16, {"k": 2})
    a = _args("--compressor", "stf:k=2,E=1")
    assert compressor_params(a) == {"k": 2, "E": 1} and a.compressor == "stf"
    a = resolve_spec(_args("--compressor", "mlp2x_gelu", "--reduce", "fastv:k=3", "--budget", "16"))
    assert (a.reduce, a.budget, a.reduce_params) == ("fastv", 16, {"k": 3})
    with pytest.raises(CompactVLMError, match="budget once"):
        resolve_spec(_args("--compressor", "mlp2x_gelu+fastv:budget=16", "--budget", "8"))
    with pytest.raises(CompactVLMError, match="reduction once"):
        resolve_spec(_args("--compressor", "mlp2x_gelu+fastv:budget=16", "--reduce", "random"))


@pytest.mark.parametrize("spec", ["stf:k=2,E=1", "mlp2x_gelu+fastv:budget=16,k=1", "mlp2x_gelu+random:budget=16"])
def test_viz_takes_the_spec(tmp_path, spec):
    img = tmp_path / "i.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    out = tmp_path / "o.png"
    assert main(["viz", "--tiny", "--image", str(img), "--out", str(out), "--repeats", "0", "--compressor", spec]) == 0
    assert out.exists()


# ---- every command takes the one syntax (named variants too) ------------------------------------------------
EVERYWHERE = ["stf:k=2,E=1", "mlp2x_gelu+fastv:budget=16,k=2"]


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Tiny saved models (8 x 8 patches, a 4-layer LLM so that FastV's k=2 can prune) per compressor."""
    from compactvlm.testing import tiny_vlm

    root = tmp_path_factory.mktemp("spec-ck")
    return {"stf": tiny_vlm("stf_k2e1", llm_layers=4).save_pretrained(root / "stf"),
            "mlp2x_gelu": tiny_vlm("mlp2x_gelu", llm_layers=4).save_pretrained(root / "mlp")}


def test_variants_resolve_to_their_method_and_options():
    from compactvlm.registry import COMPRESSORS

    s = MethodSpec.parse("stf_k2e1")
    assert (s.compressor, s.compressor_params, s.label) == ("stf", {"k": 2, "E": 1}, "stf_k2e1")
    assert MethodSpec.parse("stf_k2e1:E=2+fastv:budget=16").compressor_params == {"k": 2, "E": 2}
    names = [v.name for v in COMPRESSORS.variants()]
    assert {"stf_k2e1", "stf_k2e2", "stf_k4e1", "vistog_16", "vistog_32", "avgpool_k2", "avgpool_k4", "concat_k2",
            "qformer_64"} <= set(names) and len(names) == len(set(names))
    for v in COMPRESSORS.variants():  # every variant names a registered method with options it accepts
        assert v.method in COMPRESSORS and MethodSpec.parse(v.name).compressor == v.method
    with pytest.raises(CompactVLMError, match="(?s)unknown compressor 'stf_k3'.*did you mean"):
        MethodSpec.parse("stf_k3")
    with pytest.raises(CompactVLMError, match="unknown reduction 'fastvv'"):
        MethodSpec.parse("mlp2x_gelu+fastvv:budget=4")


def test_combine_is_the_plugin_s_and_the_cli_s_parser():
    a = MethodSpec.combine('"mlp2x_gelu+fastv:budget=16,k=2"')  # lmms-eval keeps the quotes of a quoted value
    b = MethodSpec.combine("mlp2x_gelu", reduce="fastv:k=2", budget=16)
    assert (a.compressor, a.reduction, a.reduction_params) == (b.compressor, b.reduction, b.reduction_params) \
        == ("mlp2x_gelu", "fastv", {"budget": 16, "k": 2})
    own = MethodSpec.combine(None, budget=12)  # no spec: the model's own compressor, with its own budget
    assert (own.compressor, own.reduction, own.own_budget) == ("", None, 12)
    with pytest.raises(CompactVLMError, match="budget once"):
        MethodSpec.combine("mlp2x_gelu+fastv:budget=16", budget=8)
    with pytest.raises(CompactVLMError, match="whole number"):
        MethodSpec.combine(None, budget="many")


@pytest.mark.parametrize("spec", EVERYWHERE)
def test_every_command_takes_the_spec(spec, tiny_checkpoints, tmp_path, capsys):
    import json

    import torch

    from compactvlm.cli import build_parser
    from compactvlm.commands.serve import method_specs
    from compactvlm.model.checkpoint import load_pretrained
    from compactvlm.viz.app import MethodPool
    from tiny_sceneqa import write_tiny_sceneqa

    parsed = MethodSpec.parse(spec)
    ck = str(tiny_checkpoints[parsed.compressor])
    tokens = 16 if parsed.reduction is None else 64  # fastv keeps every token in the prompt, prunes in the LLM
    img = tmp_path / "i.png"
    Image.new("RGB", (40, 40), (30, 160, 90)).save(img)
    model = ["--checkpoint", ck, "--compressor", spec, "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert main(["ask", "--image", str(img), "--question", "what is in the image ?", "--max-new-tokens", "2",
                     *model]) == 0
        assert f"vision tokens: {tokens} " in capsys.readouterr().out
        data = write_tiny_sceneqa(tmp_path / "sq")
        assert main(["eval", "--benchmark", "sceneqa", "--data", str(data), "--out", str(tmp_path / "ev"),
                     "--max-new-tokens", "2", "--quiet", *model]) == 0
        producer = json.loads((tmp_path / "ev" / "run.json").read_text())["producer"]
        assert (producer["compressor"], producer["compressor_params"]) == (parsed.compressor, parsed.compressor_params)
        assert (producer["reduce"], producer["reduce_params"]) == (parsed.reduction, parsed.reduction_options)
        assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["run"]["vision_tokens"] == tokens
        assert main(["viz", "--image", str(img), "--out", str(tmp_path / "v.png"), "--repeats", "0", *model]) == 0
        assert f"{tokens} vision tokens" in capsys.readouterr().out
        assert main(["info", "--compressor", spec]) == 0
        assert main(["bench", "--model", ck, "--flops-only", "--compressor", spec, "--json",
                     str(tmp_path / "b.json"), "--threads", "1"]) == 0
        rows = {r["label"]: r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
        assert list(rows) == ["mlp2x_gelu", spec] and rows[spec]["flops"]["vision_tokens"] == tokens
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    # serve: its --methods parsed before any model load, then the methods built on one model
    args = build_parser().parse_args(["serve", "--tiny", "--methods", spec, "mlp2x_gelu"])
    pool = MethodPool(load_pretrained(tiny_checkpoints["mlp2x_gelu"], progress=False), method_specs(args), repeats=1)
    assert list(pool.methods) == [spec, "mlp2x_gelu"]
    assert pool.activate(pool.methods[spec]).num_image_tokens() == tokens
    # the lmms-eval plugin: method=SPEC (quoted in --model_args), parsed by MethodSpec.combine, then applied
    m = load_pretrained(ck, progress=False)
    plugin = MethodSpec.combine(f'"{spec}"')
    assert (plugin.compressor, plugin.compressor_params) == (parsed.compressor, parsed.compressor_params)
    plugin.apply(m)
    assert m.num_image_tokens() == tokens
    assert (m.reduction is None) == (parsed.reduction is None)
    if parsed.reduction:
        assert m.reduction.params["k"] == 2 and m.reduction.budget == 16
