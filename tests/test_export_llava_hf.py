"""compactvlm export --to llava-hf: the written folder loads in transformers' LlavaForConditionalGeneration and
LlavaProcessor and gives our logits; llava-hf -> convert -> export gives back the original model's logits."""

import json

import pytest
import torch

from compactvlm.model.prompting import IMAGE_TOKEN_ID
from compactvlm.testing import random_images, tiny_vlm
from test_interop import _cli, make_llava_hf

QUESTION = "what is in the image ?"


@pytest.mark.parametrize("encoder", ["clip", "dinov2"])
def test_export_round_trip_logits_equal(tmp_path, encoder):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model = tiny_vlm("mlp2x_gelu", encoder=encoder, seed=3)
    src = model.save_pretrained(tmp_path / "compact")
    out = tmp_path / "hf"
    assert _cli("export", "--to", "llava-hf", str(src), "--out", str(out)) == 0
    hf, info = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    proc = LlavaProcessor.from_pretrained(out)
    image_id = hf.config.image_token_index
    assert proc.tokenizer.convert_ids_to_tokens(image_id) == "<image>"

    img = random_images(1, seed=5)
    ids = torch.tensor([model.prompt_ids(QUESTION)])
    pix = model.processor(img)
    # the processor turns the chat text and the image into exactly our ids (image positions -> <image>) and pixels
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": f"<image>\n{QUESTION}"}], tokenize=False,
                                               add_generation_prompt=True)
    enc = proc(text=text, images=img, return_tensors="pt")
    assert torch.equal(enc["input_ids"], ids.masked_fill(ids == IMAGE_TOKEN_ID, image_id))
    torch.testing.assert_close(enc["pixel_values"], pix, atol=1e-6, rtol=0)
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), pix).logits
        theirs = hf(**enc).logits
    vocab = ours.shape[-1]
    torch.testing.assert_close(theirs[..., :vocab], ours, atol=1e-5, rtol=0)
    assert theirs.shape[-1] in (vocab, vocab + 1)          # + the added <image> row, whose logit is 0
    if theirs.shape[-1] > vocab:
        assert theirs[..., vocab:].abs().max().item() == 0
    assert ours.abs().max() > 0.1


def test_llava_hf_convert_export_gives_back_the_original(tmp_path):
    from transformers import LlavaForConditionalGeneration

    src, compact, out = tmp_path / "orig", tmp_path / "compact", tmp_path / "again"
    img_id = make_llava_hf(src)
    assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(compact), "--dtype", "float32") == 0
    assert _cli("export", "--to", "llava-hf", str(compact), "--out", str(out)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("image_token_index", cfg.get("image_token_id")) == img_id  # the source's own <image>, no new row
    a = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    b = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7] + [img_id] * 64 + [8, 9]])
    pix = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b(input_ids=ids, pixel_values=pix).logits, a(input_ids=ids, pixel_values=pix).logits,
                                   atol=1e-5, rtol=0)


def test_export_refuses_what_llava_hf_cannot_hold(tmp_path, capsys):
    stf = tiny_vlm("stf", encoder="clip", k=2, E=1).save_pretrained(tmp_path / "stf")
    assert _cli("export", "--to", "llava-hf", str(stf), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "'stf' compressor" in err and "no llava-hf form" in err
    assert not (tmp_path / "x").exists()

    from compactvlm.errors import CompactVLMError
    from compactvlm.interop.export_llava_hf import check_exportable

    with pytest.raises(CompactVLMError, match="no llava-hf form"):
        check_exportable(tiny_vlm("avgpool", encoder="clip"))
    ok = tiny_vlm("mlp2x_gelu", encoder="clip").save_pretrained(tmp_path / "ok")
    (tmp_path / "taken").mkdir()
    assert _cli("export", "--to", "llava-hf", str(ok), "--out", str(tmp_path / "taken")) == 2
    assert "already exists" in capsys.readouterr().err
