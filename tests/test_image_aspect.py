"""Image-to-square modes (pad / resize / crop): pixels against LLaVA's expand2square + the CLIP processor, the
mode recorded in checkpoints (old ones keep ``resize``), token maps drawn on the square the model sees."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compactvlm.data.images import ImageProcessor
from compactvlm.encoders.preprocessing import (ASPECTS, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, aspect_of_hf_processor,
                                               square_image)
from compactvlm.errors import CompactVLMError
from compactvlm.testing import tiny_vlm

SIZES = [(45, 30), (30, 45), (451, 300), (37, 64), (33, 32)]  # non-square, both orientations, odd differences


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---- the reference, written here from LLaVA's description ------------------------------------------------------
def expand2square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's expand2square: a max(w, h) square of the background colour with the image pasted centred."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def clip_style(img: Image.Image, size: int, mean, std) -> torch.Tensor:
    """The CLIP processor on a square image: bicubic resize to size x size, /255, (x - mean) / std; (1, 3, S, S)."""
    x = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("mean,std", [(CLIP_MEAN, CLIP_STD), (IMAGENET_MEAN, (0.229, 0.224, 0.225))])
def test_pad_is_llava_expand2square_then_clip(w, h, mean, std):
    img = photo(w, h, seed=w * h)
    proc = ImageProcessor(32, mean, std, aspect="pad")
    ref_square = expand2square(img, tuple(int(m * 255) for m in mean))
    assert np.array_equal(np.asarray(proc.square(img)), np.asarray(ref_square.resize((32, 32), Image.BICUBIC)))
    assert torch.equal(proc([img]), clip_style(ref_square, 32, mean, std))


@pytest.mark.parametrize("w,h", SIZES)
def test_pad_and_crop_match_transformers_clip_processor(w, h):
    from transformers import CLIPImageProcessor

    img = photo(w, h, seed=1)
    hf = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                            resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    ref = expand2square(img, tuple(int(m * 255) for m in CLIP_MEAN))
    pad = ImageProcessor(32, CLIP_MEAN, CLIP_STD, aspect="pad")([img])
    assert torch.equal(pad, hf(images=ref, return_tensors="pt")["pixel_values"])
    crop = ImageProcessor(32, CLIP_MEAN, CLIP_STD, aspect="crop")([img])
    assert torch.equal(crop, hf(images=img, return_tensors="pt")["pixel_values"])


def test_pad_keeps_the_whole_image_and_crop_loses_the_sides():
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 8, 32))  # a blue strip on the left edge
    pad = np.asarray(square_image(img, 32, "pad", CLIP_MEAN))
    assert tuple(pad[2, 16]) == tuple(int(m * 255) for m in CLIP_MEAN)  # bar above the image: the mean colour
    assert pad[16, 1, 2] > 200  # the blue strip survives
    crop = np.asarray(square_image(img, 32, "crop", CLIP_MEAN))
    assert crop[:, :, 2].max() < 60  # the centre cut has no blue
    squash = np.asarray(square_image(img, 32, "resize", CLIP_MEAN))
    assert squash[2, 16, 0] > 200  # resized: red up to the top


def test_square_images_are_the_same_in_every_mode():
    img = photo(48, 48, seed=3)
    outs = [ImageProcessor(32, aspect=a)([img]) for a in ASPECTS]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_unknown_mode_is_refused():
    with pytest.raises(CompactVLMError, match="image-to-square"):
        ImageProcessor(32, aspect="letterbox")
    from compactvlm.config import from_dict
    from compactvlm.model.build import ModelConfig

    with pytest.raises(CompactVLMError, match="image_aspect"):
        from_dict(ModelConfig, {"image_aspect": "stretch"}, prefix="model.")


def test_new_models_pad():
    from compactvlm.model.build import ModelConfig

    assert ModelConfig().image_aspect == "pad"
    assert ImageProcessor().aspect == "pad"
    assert tiny_vlm().processor.aspect == "pad"


# ---- checkpoints -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aspect", ASPECTS)
def test_checkpoints_record_the_mode(tmp_path, aspect):
    from compactvlm.model.checkpoint import load_pretrained

    model = tiny_vlm("stf", k=2, E=1)
    model.processor.aspect = aspect
    folder = model.save_pretrained(tmp_path / "ck")
    meta = json.loads((folder / "compactvlm.json").read_text())
    assert meta["model"]["image_aspect"] == aspect
    assert json.loads((folder / "preprocessor_config.json").read_text())["compactvlm_processor"]["aspect"] == aspect
    back = load_pretrained(folder, progress=False)
    assert back.processor.aspect == aspect
    img = photo(45, 30)
    assert torch.equal(back.processor([img]), model.processor([img]))


def test_old_checkpoints_keep_resizing(tmp_path):
    """Folders written before the mode existed (no image_aspect, no processor aspect) load as ``resize``."""
    from compactvlm.model.checkpoint import load_pretrained, read_config
    from compactvlm.model.manifest import write_manifest

    model = tiny_vlm("stf", k=2, E=1)
    folder = model.save_pretrained(tmp_path / "old")
    meta = json.loads((folder / "compactvlm.json").read_text())
    del meta["model"]["image_aspect"]
    (folder / "compactvlm.json").write_text(json.dumps(meta))
    pp = json.loads((folder / "preprocessor_config.json").read_text())
    del pp["compactvlm_processor"]["aspect"]
    (folder / "preprocessor_config.json").write_text(json.dumps(pp))
    (folder / "manifest.json").unlink()
    write_manifest(folder)
    back = load_pretrained(folder, progress=False)
    assert back.processor.aspect == "resize"
    img = photo(45, 30)
    assert torch.equal(back.processor([img]), clip_style(img, 32, back.processor.mean, back.processor.std))
    assert load_pretrained(folder, progress=False, image_aspect="pad").processor.aspect == "pad"  # override


def test_hf_processor_settings_map_to_modes():
    assert aspect_of_hf_processor({"do_pad": True, "size": {"height": 336, "width": 336}}) == "pad"
    assert aspect_of_hf_processor({"size": {"shortest_edge": 336}, "do_center_crop": True}) == "crop"
    assert aspect_of_hf_processor({"size": {"height": 336, "width": 336}, "do_center_crop": False}) == "resize"
    assert aspect_of_hf_processor(None) == "resize"
    from compactvlm.interop.common import llava_aspect

    assert llava_aspect({"image_aspect_ratio": "pad"}) == "pad" and llava_aspect({}) == "crop"


@pytest.mark.parametrize("aspect", ASPECTS)
def test_llava_hf_export_processor_gives_the_same_pixels(aspect):
    from compactvlm.interop.export_llava_hf import image_processor

    model = tiny_vlm("mlp2x_gelu")
    model.processor.aspect = aspect
    hf = image_processor(model)
    for w, h in SIZES:
        img = photo(w, h, seed=w)
        torch.testing.assert_close(hf(images=img, return_tensors="pt")["pixel_values"], model.processor([img]),
                                   atol=1e-6, rtol=0)


# ---- token maps on the square the model sees -------------------------------------------------------------------
def test_token_map_is_drawn_on_the_padded_square():
    from compactvlm.viz import visualize

    model = tiny_vlm("mlp2x_gelu")  # 32 px, 8 x 8 patches, pad
    img = Image.new("RGB", (64, 32), (255, 0, 0))  # wide: pad adds bars above and below
    picture, tmap, _ = visualize(model, img, measure=False, cell=10)
    arr = np.asarray(picture)
    bar = tuple(int(m * 255) for m in model.processor.mean)
    assert np.abs(arr[5, 45].astype(int) - bar).max() <= 2  # top patch row: the pad colour, not the image
    assert arr[45, 45][0] > 200 and arr[45, 45][1] < 40  # the middle: the red image
    model.processor.aspect = "resize"
    arr = np.asarray(visualize(model, img, measure=False, cell=10)[0])
    assert arr[5, 45][0] > 200  # resized: red up to the top
