"""One spec syntax for a method everywhere: NAME[:key=value,...][+REDUCTION[:key=value,...]] (compactvlm.spec),
parsed once onto the CLI's options."""

import argparse

import pytest
from PIL import Image

from compactvlm.cli import main
from compactvlm.commands._common import add_model_args, compressor_params, resolve_spec
from compactvlm.errors import CompactVLMError
from compactvlm.spec import MethodSpec, parse_options


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
