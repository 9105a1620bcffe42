"""Short names for the shipped weights (``--checkpoint demo:stf-k2e1``), and which methods are untrained.

The short name resolves in the library (``model.shipped.resolve_checkpoint``, used by every loader) and in every
command option that takes a checkpoint (an argparse ``type``), so nothing here loads the real models."""

import json
from pathlib import Path

import pytest

from compactvlm.cli import build_parser, main
from compactvlm.errors import CompactVLMError
from compactvlm.model.shipped import resolve_checkpoint, shipped_dir, shipped_names

STF = shipped_dir() / "stf-k2e1"


def test_shipped_names_are_the_asset_folders():
    names = shipped_names()
    assert {"demo:stf-k2e1", "demo:full-mlp2x"} <= set(names)
    assert names == sorted("demo:" + p.name for p in shipped_dir().iterdir() if (p / "compactvlm.json").is_file())
    assert resolve_checkpoint("demo:stf-k2e1") == STF
    assert resolve_checkpoint("runs/x/final") == Path("runs/x/final")  # paths pass unchanged


@pytest.mark.parametrize("bad", ["demo:nope", "demo:", "demo:../demo/stf-k2e1"])
def test_unknown_short_name_names_the_known_ones(bad):
    with pytest.raises(CompactVLMError) as e:
        resolve_checkpoint(bad)
    assert "unknown shipped checkpoint" in str(e.value)
    for name in shipped_names():
        assert name in str(e.value)


def test_library_loaders_accept_short_names():
    from compactvlm.interop import detect_layout
    from compactvlm.model.checkpoint import read_config

    cfg, meta = read_config("demo:stf-k2e1")
    assert cfg.compressor == "stf" and cfg.compressor_params == {"k": 2, "E": 1}
    assert detect_layout("demo:full-mlp2x") == "compactvlm"


@pytest.mark.parametrize("argv,attr", [
    (["ask", "--image", "x.png", "--question", "q", "--checkpoint", "demo:stf-k2e1"], "checkpoint"),
    (["eval", "--benchmark", "sceneqa", "--data", "d", "--out", "o", "--checkpoint", "demo:stf-k2e1"], "checkpoint"),
    (["viz", "--image", "x.png", "--out", "m.png", "--checkpoint", "demo:stf-k2e1"], "checkpoint"),
    (["serve", "--checkpoint", "demo:stf-k2e1"], "checkpoint"),
    (["bench", "--model", "demo:stf-k2e1"], "model"),
    (["export", "--to", "llava-hf", "demo:stf-k2e1", "--out", "o"], "src"),
    (["convert", "--from", "llava-hf", "demo:stf-k2e1", "--out", "o"], "src"),
])
def test_every_checkpoint_option_takes_short_names(argv, attr):
    args = build_parser().parse_args(argv)
    assert Path(getattr(args, attr)) == STF


def test_bench_presets_still_pass():
    assert build_parser().parse_args(["bench", "--model", "llava-1.5-7b"]).model == "llava-1.5-7b"


def test_unknown_short_name_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ask", "--image", "x.png", "--question", "q", "--checkpoint", "demo:stf-k9"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown shipped checkpoint 'demo:stf-k9'" in err and "demo:stf-k2e1" in err and "demo:full-mlp2x" in err


def test_info_lists_the_shipped_checkpoints(capsys):
    from compactvlm.commands.info import print_shipped

    print_shipped()
    out = capsys.readouterr().out
    for name in shipped_names():
        assert name in out
    cfg = json.loads((STF / "compactvlm.json").read_text())["model"]
    assert f"{cfg['compressor']} {cfg['compressor_params']}" in out


# ---- which parts are untrained --------------------------------------------------------------------------------
def test_untrained_marks_follow_the_weights(tmp_path):
    from compactvlm.model.checkpoint import load_compressor_weights
    from compactvlm.model.init_state import is_random, untrained_parts
    from compactvlm.testing import tiny_vlm

    model = tiny_vlm("stf", k=2, E=1)
    assert untrained_parts(model) == ["compressor 'stf'"]
    folder = model.save_pretrained(tmp_path / "ck")
    other = tiny_vlm("stf", k=2, E=1, seed=1)
    load_compressor_weights(other.compressor, folder / "compressor.safetensors")
    assert not is_random(other.compressor) and untrained_parts(other) == []


def test_warning_on_stderr_only_for_untrained(capsys, tmp_path):
    from compactvlm.commands._common import warn_untrained
    from compactvlm.model.init_state import mark_random
    from compactvlm.testing import tiny_vlm

    model = tiny_vlm("stf", k=2, E=1)
    warn_untrained(model)
    err = capsys.readouterr().err
    assert "random (untrained) weights" in err and "demo:stf-k2e1" in err
    mark_random(model.compressor, False)
    warn_untrained(model)
    assert capsys.readouterr().err == ""


def test_serve_marks_untrained_methods_without_a_browser():
    from compactvlm.model.init_state import mark_random
    from compactvlm.testing import tiny_vlm
    from compactvlm.viz.app import UNTRAINED_MARK, MethodPool

    base = tiny_vlm("stf", k=2, E=1)
    mark_random(base.compressor, False)  # as if loaded from --checkpoint
    pool = MethodPool(base, repeats=1, checkpoint_label="checkpoint: stf (stf-k2e1)")
    shown = dict((label, text) for text, label in pool.choices())
    assert shown["checkpoint: stf (stf-k2e1)"] == "checkpoint: stf (stf-k2e1)"  # trained: unmarked
    others = [lab for lab in pool.methods if lab != "checkpoint: stf (stf-k2e1)"]
    assert others and all(shown[lab] == lab + UNTRAINED_MARK for lab in others)
    # a method's compressor is judged by its own mark
    assert "stf_k2e1" in pool.methods and pool.untrained("stf_k2e1")
    mark_random(pool._compressor(pool.methods["stf_k2e1"]), False)
    assert not pool.untrained("stf_k2e1")


def test_serve_page_uses_the_marked_list():
    pytest.importorskip("gradio")
    from compactvlm.testing import tiny_vlm
    from compactvlm.viz.app import UNTRAINED_MARK, MethodPool, build_app

    pool = MethodPool(tiny_vlm(), repeats=1)
    app = build_app(pool)
    boxes = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "methods"]
    assert len(boxes) == 1
    names = [c[0] for c in boxes[0].choices]
    assert names and all(n.endswith(UNTRAINED_MARK) for n in names)
