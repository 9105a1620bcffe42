"""Checkpoints in without a tokenizer, and the image-token conventions of llava-hf / LLaVA accepted in input_ids."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from compactvlm.errors import CompactVLMError
from compactvlm.interop.image_tokens import to_compact_ids
from compactvlm.model.prompting import IGNORE_INDEX, IMAGE_TOKEN_ID
from compactvlm.testing import random_images
from test_interop import _cli, make_llava_hf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "added_tokens.json")


def _strip_tokenizer(folder: Path, keep: Path | None = None) -> None:
    for n in TOKENIZER_FILES:
        if (folder / n).exists():
            if keep is not None:
                keep.mkdir(exist_ok=True)
                (keep / n).write_bytes((folder / n).read_bytes())
            (folder / n).unlink()


def _ids(img_id: int, n_img: int) -> torch.Tensor:
    return torch.tensor([[5, 6, 7] + [img_id] * n_img + [8, 9, 10]])


def test_to_compact_ids_maps_and_widens():
    ids = torch.tensor([[1, 99, 2, 3], [4, 5, 99, 6]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    labels = torch.tensor([[1, 99, 2, 3], [4, 5, 99, 6]])
    new, m, lab = to_compact_ids(ids, 3, 99, mask, labels)
    assert new.tolist() == [[1, -200, -200, -200, 2, 3], [4, 5, -200, -200, -200, 6]]
    assert m.tolist() == [[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert lab.tolist() == [[1, -100, -100, -100, 2, 3], [4, 5, -100, -100, -100, 6]]
    full = torch.tensor([[1, 99, 99, 99, 2]])
    assert to_compact_ids(full, 3, 99)[0].tolist() == [[1, -200, -200, -200, 2]]  # already one per vision token
    assert to_compact_ids(torch.tensor([[1, -200, 2]]), 2)[0].tolist() == [[1, -200, -200, 2]]  # LLaVA's single -200
    with pytest.raises(CompactVLMError, match="fit neither"):
        to_compact_ids(torch.tensor([[1, 99, 99, 2]]), 3, 99)
    assert IGNORE_INDEX == -100 and IMAGE_TOKEN_ID == -200


def test_llava_hf_image_token_index_accepted_in_input_ids(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from compactvlm.interop import load_model
    from compactvlm.model.checkpoint import load_pretrained

    src = tmp_path / "hf"
    img_id = make_llava_hf(src)
    ref = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    ours = load_model(src)
    assert ours.image_token_index == img_id
    n = ours.num_image_tokens()
    pix = ours.processor(random_images(1))
    with torch.no_grad():
        want = ref(input_ids=_ids(img_id, n), pixel_values=pix).logits
        by_index = ours(input_ids=_ids(img_id, n), pixel_values=pix).logits          # llava-hf processor's ids
        by_ours = ours(_ids(IMAGE_TOKEN_ID, n), None, pix).logits                     # compactvlm's -200
        once = ours(input_ids=_ids(img_id, 1), attention_mask=torch.ones(1, 7, dtype=torch.long),
                    pixel_values=pix).logits                                            # once per image (older processors)
        llava_once = ours(input_ids=_ids(IMAGE_TOKEN_ID, 1), pixel_values=pix).logits  # LLaVA's single -200
    for got in (by_index, by_ours, once, llava_once):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    out = tmp_path / "compact"
    assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(out)) == 0
    meta = json.loads((out / "compactvlm.json").read_text())
    assert meta["converted_from"]["image_token_index"] == img_id
    with torch.no_grad():
        reloaded = load_model(out, dtype="float32")
        torch.testing.assert_close(reloaded(input_ids=_ids(img_id, n), pixel_values=pix).logits, want, atol=1e-5, rtol=0)
    plain = load_pretrained(out, dtype="float32", progress=False)  # the model layer's loader reads converted_from too
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=_ids(img_id, n), pixel_values=pix).logits, want, atol=1e-5, rtol=0)
    meta.pop("converted_from")  # a compact folder of compactvlm's own: -200 only
    (out / "compactvlm.json").write_text(json.dumps(meta))
    from compactvlm.model.manifest import write_manifest

    write_manifest(out)  # the edit above is ours: re-record the folder's checksums
    native = load_pretrained(out, dtype="float32", progress=False)
    with pytest.raises(CompactVLMError, match="image positions"), torch.no_grad():
        native(input_ids=_ids(img_id, n), pixel_values=pix)


def test_convert_without_tokenizer_warns_and_runs_on_ids(tmp_path, capsys):
    from transformers import LlavaForConditionalGeneration

    from compactvlm.interop import load_model

    src, out, kept = tmp_path / "hf", tmp_path / "compact", tmp_path / "tok"
    img_id = make_llava_hf(src)
    _strip_tokenizer(src, keep=kept)
    ref = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    with pytest.warns(UserWarning, match="no tokenizer files"):
        assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(out)) == 0
    assert "no tokenizer" in capsys.readouterr().out
    assert not (out / "tokenizer").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = load_model(out, dtype="float32")
    assert ours.tokenizer is None
    pix = ours.processor(random_images(1))
    ids = _ids(img_id, ours.num_image_tokens())
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, pixel_values=pix).logits,
                                   ref(input_ids=ids, pixel_values=pix).logits, atol=1e-5, rtol=0)

    # --tokenizer supplies one; the folder then has it and can build prompts
    out2 = tmp_path / "compact2"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "no tokenizer" warning this time
        assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(out2), "--tokenizer", str(kept)) == 0
    assert (out2 / "tokenizer").is_dir()
    assert int((torch.tensor(load_model(out2).prompt_ids("what is in the image ?")) == IMAGE_TOKEN_ID).sum()) == 64


def test_tokenizer_errors_are_whole_and_clear(tmp_path, capsys):
    src = tmp_path / "hf"
    make_llava_hf(src)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(tmp_path / "o"), "--tokenizer", str(empty)) == 2
    err = capsys.readouterr().err
    assert "holds no tokenizer files" in err
    broken = tmp_path / "broken"  # tokenizer files that cannot be read: the whole reason, on one line
    broken.mkdir()
    (broken / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizerFast"}))
    (broken / "tokenizer.json").write_text("{not json")
    assert _cli("convert", "--from", "llava-hf", str(src), "--out", str(tmp_path / "o"), "--tokenizer", str(broken)) == 2
    err = capsys.readouterr().err
    assert "no usable tokenizer" in err and not err.rstrip().endswith("one of:")
