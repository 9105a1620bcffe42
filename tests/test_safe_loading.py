"""Safe loading: weights only through safetensors, no unpickling or code execution from user files, and
``trust_remote_code`` never on.

A static scan of ``src/`` (the AST of every module) fails on the patterns that run code from data, and runtime
tests hand every loader that could meet a pickle (HF model folders for the encoder, the LLM and detector_sam,
compactvlm checkpoints, training resume, configs) a file whose loading would create a marker file: each is
refused with a clear message and the marker never appears.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from compactvlm.errors import CompactVLMError


SRC = Path(__file__).resolve().parents[1] / "src" / "compactvlm"


# ---- static scan ---------------------------------------------------------------------------------------
def _const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


#: modules whose loaders unpickle (importing ``pickle`` for its exception types is fine), and their loaders
_UNPICKLERS = ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "pandas", "pd")
_UNPICKLING_CALLS = ("load", "loads", "Unpickler", "open", "read_pickle")

#: receivers of ``.from_pretrained`` that read no weights (configs, tokenizers, processors)
_NO_WEIGHTS = ("Config", "Tokenizer", "Processor", "FeatureExtractor")


def scan_source(text: str, name: str = "<src>") -> list[str]:
    """Problems in one module's source, as 'name:line: what'."""
    problems = []
    tree = ast.parse(text, filename=name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _UNPICKLERS:
            for a in node.names:
                if a.name in _UNPICKLING_CALLS:
                    problems.append(f"{name}:{node.lineno}: imports {node.module}.{a.name} (unpickling runs code)")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        fname = ast.unparse(f)
        where = f"{name}:{node.lineno}"
        if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile"):
            problems.append(f"{where}: builtin {f.id}() (never run code from data)")
        if isinstance(f, ast.Attribute) and f.attr in _UNPICKLING_CALLS and ast.unparse(f.value) in _UNPICKLERS:
            problems.append(f"{where}: {fname}() (unpickling user files runs code)")
        if fname == "torch.load" and not _const(_kw(node, "weights_only"), True):
            problems.append(f"{where}: torch.load without weights_only=True")
        if fname in ("torch.jit.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            if fname != "yaml.load" or "SafeLoader" not in ast.unparse(node):
                problems.append(f"{where}: {fname}() can construct arbitrary objects")
        wo = _kw(node, "weights_only")
        if wo is not None and not _const(wo, True):
            problems.append(f"{where}: weights_only={ast.unparse(wo)}")
        ap = _kw(node, "allow_pickle")
        if ap is not None and not _const(ap, False):
            problems.append(f"{where}: allow_pickle={ast.unparse(ap)}")
        trc = _kw(node, "trust_remote_code")
        if trc is not None and not _const(trc, False):
            problems.append(f"{where}: trust_remote_code={ast.unparse(trc)} (must never be switched on)")
        if isinstance(f, ast.Attribute) and f.attr == "from_pretrained":
            recv = ast.unparse(f.value)
            if not any(t in recv for t in _NO_WEIGHTS) and not _const(_kw(node, "use_safetensors"), True) \
                    and _kw(node, "gguf_file") is None:
                problems.append(f"{where}: {recv}.from_pretrained without use_safetensors=True (a folder with only "
                                "pytorch_model.bin would be unpickled)")
    return problems


def test_scanner_catches_each_pattern():
    bad = {
        "pickle.load(f)\n": "pickle.load() (unpickling",
        "x = pickle.loads(b)\n": "pickle.loads()",
        "pickle.Unpickler(f).load()\n": "pickle.Unpickler()",
        "from joblib import load\n": "imports joblib.load",
        "from pickle import loads\n": "imports pickle.loads",
        "shelve.open(p)\n": "shelve.open()",
        "pd.read_pickle(p)\n": "pd.read_pickle()",
        "x = eval(s)\n": "builtin eval()",
        "exec(code)\n": "builtin exec()",
        "torch.load(p)\n": "torch.load without weights_only=True",
        "torch.load(p, weights_only=False)\n": "weights_only=False",
        "torch.load(p, weights_only=flag)\n": "torch.load without weights_only=True",
        "yaml.load(t)\n": "yaml.load()",
        "yaml.unsafe_load(t)\n": "yaml.unsafe_load()",
        "np.load(p, allow_pickle=True)\n": "allow_pickle=True",
        "AutoModel.from_pretrained(p, trust_remote_code=True)\n": "trust_remote_code=True",
        "AutoConfig.from_pretrained(p, trust_remote_code=cfg.trust)\n": "trust_remote_code=cfg.trust",
        "AutoModelForCausalLM.from_pretrained(p)\n": "without use_safetensors=True",
        "kinds[t].from_pretrained(p)\n": "without use_safetensors=True",
    }
    for src, want in bad.items():
        found = scan_source(src)
        assert any(want in p for p in found), (src, found)
    ok = ("import pickle\nexcept_types = (pickle.UnpicklingError,)\nmodel.eval()\nx.load_state_dict(sd)\ntorch.load(p, weights_only=True)\nyaml.safe_load(t)\n"
          "AutoConfig.from_pretrained(p, trust_remote_code=False)\nAutoTokenizer.from_pretrained(p)\n"
          "AutoModelForCausalLM.from_pretrained(p, use_safetensors=True, trust_remote_code=False)\n"
          "M.from_pretrained(d, gguf_file=f)\n")
    assert scan_source(ok) == []


def test_source_tree_has_no_unsafe_loading():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    problems = [p for f in files for p in scan_source(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert not problems, "unsafe loading in src/:\n" + "\n".join(problems)


# ---- runtime: malicious files are refused and never executed --------------------------------------------
class _CreatesFile:
    """Unpickling this creates ``path`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": _CreatesFile(marker)}))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from compactvlm.train.fixtures import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"))


def test_the_evil_pickle_really_creates_the_file(tmp_path):
    """Sanity check of the fixture: plain pickle.load would run it (so 'marker absent' below means refused)."""
    marker = tmp_path / "PWNED"
    evil = write_evil_pickle(tmp_path / "evil.bin", marker)
    with open(evil, "rb") as f:
        pickle.load(f)  # noqa: S301 - on purpose, on our own file
    assert marker.exists()


def _pickle_only_folder(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of an HF folder whose weights are a malicious pytorch_model.bin instead of model.safetensors."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    write_evil_pickle(dst / "pytorch_model.bin", marker)
    return dst


@pytest.mark.parametrize("part", ["llm", "encoder"])
def test_pickle_only_model_folder_is_refused(part, models, tmp_path):
    from compactvlm.model.build import load_llm, load_vision_model

    enc, llm = models
    marker = tmp_path / "PWNED"
    folder = _pickle_only_folder(llm if part == "llm" else enc, tmp_path / part, marker)
    load = load_llm if part == "llm" else load_vision_model
    with pytest.raises(CompactVLMError, match=r"has only pickle-based weights \(pytorch_model.bin\).*only from "
                                              r"\.safetensors"):
        load(str(folder))
    assert not marker.exists()


def test_safetensors_win_over_a_malicious_bin_next_to_them(models, tmp_path):
    from compactvlm.model.build import load_llm

    marker = tmp_path / "PWNED"
    folder = Path(shutil.copytree(models[1], tmp_path / "llm"))
    write_evil_pickle(folder / "pytorch_model.bin", marker)
    llm, tok = load_llm(str(folder))
    assert llm.config.hidden_size == 32 and len(tok) > 10
    assert not marker.exists()


def test_detector_sam_folder_with_pickle_weights_is_refused(models, tmp_path):
    from compactvlm.compressors.masks.detector_sam import DetectorSAMMasks

    marker = tmp_path / "PWNED"
    folder = _pickle_only_folder(models[0], tmp_path / "detr", marker)
    with pytest.raises(CompactVLMError, match="has only pickle-based weights"):
        DetectorSAMMasks._folder(str(folder), "Deformable DETR", "detector_path", "SenseTime/deformable-detr")
    assert not marker.exists()


@pytest.mark.parametrize("part", ["llm", "encoder"])
def test_model_folder_with_custom_code_is_refused(part, models, tmp_path):
    """auto_map in config.json would make transformers import the folder's .py files (trust_remote_code)."""
    from compactvlm.model.build import load_llm, load_vision_model

    marker = tmp_path / "PWNED"
    folder = Path(shutil.copytree(models[1] if part == "llm" else models[0], tmp_path / part))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(cfg))
    for mod in ("configuration_evil.py", "modeling_evil.py"):
        (folder / mod).write_text(f"open({str(marker)!r}, 'w').close()\n")
    load = load_llm if part == "llm" else load_vision_model
    with pytest.raises(CompactVLMError, match=r"needs custom Python code .*trust_remote_code stays off"):
        load(str(folder))
    assert not marker.exists()


def _checkpoint(tmp_path: Path, with_manifest: bool) -> tuple[object, Path]:
    from compactvlm.model.checkpoint import save_pretrained
    from compactvlm.model.manifest import MANIFEST_NAME
    from compactvlm.testing import tiny_vlm

    model = tiny_vlm("stf", k=2, E=1)
    ck = save_pretrained(model, tmp_path / "ck", save_llm=True)
    if not with_manifest:
        (ck / MANIFEST_NAME).unlink()
    return model, ck


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "old-folder"])
@pytest.mark.parametrize("target", ["compressor.safetensors", "llm.safetensors"])
def test_checkpoint_weights_replaced_by_a_pickle_are_refused(tmp_path, with_manifest, target):
    from compactvlm.model.checkpoint import load_weights

    model, ck = _checkpoint(tmp_path, with_manifest)
    marker = tmp_path / "PWNED"
    write_evil_pickle(ck / target, marker)
    want = rf"file {target} is \d+ bytes, the manifest says" if with_manifest else rf"{target} is not a valid safetensors"
    with pytest.raises(CompactVLMError, match=want):
        load_weights(model, ck)
    assert not marker.exists()


def test_checkpoint_with_only_a_pickled_compressor_is_refused(tmp_path):
    from compactvlm.model.checkpoint import load_weights

    model, ck = _checkpoint(tmp_path, with_manifest=False)
    marker = tmp_path / "PWNED"
    (ck / "compressor.safetensors").unlink()
    write_evil_pickle(ck / "compressor.bin", marker)
    with pytest.raises(CompactVLMError, match="checkpoint weights missing: .*compressor.safetensors"):
        load_weights(model, ck)
    assert not marker.exists()


def test_resume_state_replaced_by_a_pickle_is_refused(tmp_path):
    """Training resume reads optimizer.safetensors of an old (manifest-less) checkpoint: never unpickled."""
    from compactvlm.model.manifest import MANIFEST_NAME
    from compactvlm.train import train
    from compactvlm.train.fixtures import tiny_train_config
    from compactvlm.train.state import read_checkpoint_state

    cfg = tiny_train_config(tmp_path, ["optim.max_steps=1", "checkpoint.every_steps=1", "eval.at_start=false",
                                       "eval.at_end=false", "threads=1"], n_train=4, n_val=2)
    train(cfg)
    ck = Path(cfg.output_dir) / "checkpoints" / "step-000001"
    (ck / MANIFEST_NAME).unlink()
    marker = tmp_path / "PWNED"
    write_evil_pickle(ck / "optimizer.safetensors", marker)
    with pytest.raises(CompactVLMError, match="optimizer.safetensors is not a valid safetensors file"):
        read_checkpoint_state(ck)
    assert not marker.exists()


def test_yaml_config_with_python_tags_is_refused(tmp_path):
    from compactvlm.train.config import load_train_config

    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"optim: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    with pytest.raises(CompactVLMError, match="cannot parse config"):
        load_train_config(cfg)
    assert not marker.exists()
