"""Adding a compressor is one file plus its test: a compressor written into a temporary module (registered with
``@COMPRESSORS.register`` and a named variant, nothing else in compactvlm edited) is trained, asked, evaluated,
drawn and benchmarked on tiny models through the command line."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from compactvlm.cli import main
from compactvlm.registry import COMPRESSORS
from compactvlm.train.fixtures import write_llava_json, write_tiny_models

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: the whole new method: one file, as it would sit in src/compactvlm/compressors/
METHOD_FILE = '''
"""rowpool_test: the patch grid averaged over groups of ``stride`` rows, then one linear projection."""

import torch
from torch import nn

from compactvlm.compressors.base import Compressor
from compactvlm.errors import CompactVLMError
from compactvlm.registry import COMPRESSORS


@COMPRESSORS.register("rowpool_test")
class RowPool(Compressor):
    def __init__(self, enc, llm_dim, stride: int = 1):
        super().__init__(enc, llm_dim)
        if enc.grid[0] % stride:
            raise CompactVLMError(f"stride={stride} does not divide the {enc.grid[0]} patch rows", "pick a divisor")
        self.stride = stride
        self.proj = nn.Linear(enc.hidden_size, llm_dim)

    def num_output_tokens(self, grid=None):
        return (grid or self.enc.grid)[0] // self.stride

    def forward(self, feats):
        x = feats.patch_grid(-2)  # (B, C, H, W)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // self.stride, self.stride * w).mean(dim=3)  # (B, C, H/stride)
        return self.proj(x.transpose(1, 2))  # (B, H/stride, D)


COMPRESSORS.variant("rowpool_test_s2", "rowpool_test:stride=2")
'''


@pytest.fixture
def new_method(tmp_path):
    """Import the method file from a temporary folder; unregister it afterwards (other tests list every method)."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "my_rowpool.py").write_text(METHOD_FILE)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("my_rowpool")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_rowpool", None)
        COMPRESSORS.unregister("rowpool_test")


def test_a_new_compressor_runs_through_every_command(new_method, tmp_path, capsys):
    assert "rowpool_test" in COMPRESSORS and COMPRESSORS.get_variant("rowpool_test_s2") is not None
    threads = torch.get_num_threads()
    enc, llm = write_tiny_models(tmp_path / "models")
    train_json = write_llava_json(tmp_path / "data", 4)
    out = tmp_path / "run"
    try:
        # train (stage 1: the new compressor alone), named by its variant through the config's model.compressor
        assert main(["train", "--config", str(CONFIGS / "train" / "cpu_stage1.yaml"), f"model.encoder={enc}",
                     f"model.llm={llm}", "model.image_size=32", "model.compressor=rowpool_test_s2",
                     f"data.train={train_json}", "data.val=null", f"output_dir={out}", "logging.progress=false",
                     "device=cpu", "threads=1", "optim.max_steps=2", "optim.batch_size=2",
                     "optim.per_device_batch_size=2"]) == 0
        ckpt = out / "final"
        saved = json.loads((ckpt / "compactvlm.json").read_text())["model"]
        assert (saved["compressor"], saved["compressor_params"]) == ("rowpool_test", {"stride": 2})
        capsys.readouterr()

        img = tmp_path / "i.png"
        Image.new("RGB", (40, 40), (200, 40, 40)).save(img)
        model = ["--checkpoint", str(ckpt), "--threads", "1"]
        assert main(["ask", "--image", str(img), "--question", "what colour is in the image ?",
                     "--max-new-tokens", "2", *model]) == 0
        assert "vision tokens: 4 " in capsys.readouterr().out  # 8 patch rows / stride 2

        from tiny_sceneqa import write_tiny_sceneqa

        data = write_tiny_sceneqa(tmp_path / "sq")
        assert main(["eval", "--benchmark", "sceneqa", "--data", str(data), "--out", str(tmp_path / "ev"),
                     "--max-new-tokens", "2", "--quiet", "--with-controls", *model]) == 0
        assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["run"]["vision_tokens"] == 4
        gap = json.loads((tmp_path / "ev" / "blind_gap.json").read_text())  # --with-controls: both controls, paired
        assert set(gap["controls"]) == {"shuffled", "blank"} and "family_mean" in gap["sees"]
        for c in ("shuffled", "blank"):
            assert json.loads((tmp_path / "ev" / f"control-{c}" / "metrics.json").read_text())["control"] == c
        out = capsys.readouterr().out
        assert "real-shuffled" in out and "chance / majority per family" in out and "no blind control" not in out

        assert main(["viz", "--image", str(img), "--out", str(tmp_path / "map.png"), "--repeats", "1", *model]) == 0
        assert "4 vision tokens" in capsys.readouterr().out and (tmp_path / "map.png").stat().st_size > 0

        # bench: the trained checkpoint (its real weights) against the full-token reference, and the spec syntax
        assert main(["bench", "--model", str(ckpt), "--dtype", "float32", "--warmup", "0", "--repeats", "1",
                     "--decode-tokens", "0", "--compressor", "rowpool_test:stride=2", "rowpool_test:stride=4",
                     "--json", str(tmp_path / "b.json"), "--threads", "1"]) == 0
        rows = {r["label"]: r for r in json.loads((tmp_path / "b.json").read_text())["rows"]}
        assert [rows[k]["flops"]["vision_tokens"] for k in rows] == [64, 4, 2]
        assert rows["rowpool_test:stride=2"]["timing"]["ttft_ms"]["median"] > 0

        # serve's method list takes it by its variant name
        from compactvlm.testing import tiny_vlm
        from compactvlm.viz.app import MethodPool

        pool = MethodPool(tiny_vlm(), ["rowpool_test_s2"], repeats=1)
        res = pool.run("rowpool_test_s2", Image.open(img), "what colour is in the image ?", max_new_tokens=2)
        assert res.error is None and res.num_tokens == 4 and res.picture is not None

        # the method's own checks show in info's table like a built-in's
        capsys.readouterr()
        assert main(["info", "--compressor", "rowpool_test:stride=5"]) == 0
        table = capsys.readouterr().out
        assert "stride=5 does not divide the 24 patch rows" in table and "the 16 patch rows" in table
    finally:
        torch.set_num_threads(threads)
