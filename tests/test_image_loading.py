"""Images load the way a photo viewer shows them (issue 22): EXIF orientation applied, high-bit-depth modes mapped
by their type's range (never by the image's own maximum), and one image-root rule for training and evaluation
(symlinked folders inside the data folder allowed and followed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compactvlm.data.images import check_image, load_image, resolve_in_root
from compactvlm.errors import CompactVLMError


def _two_colour(w: int = 40, h: int = 20) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (230, 20, 20)  # left half red
    arr[:, w // 2:] = (20, 20, 230)  # right half blue
    return Image.fromarray(arr)


@pytest.mark.parametrize("orientation,size,top_left,bottom_right", [
    (1, (40, 20), "red", "blue"),   # as stored
    (6, (20, 40), "red", "blue"),   # rotate 90° clockwise to view: the left (red) half goes to the top
    (8, (20, 40), "blue", "red"),   # rotate 90° counter-clockwise: the right (blue) half goes to the top
    (3, (40, 20), "blue", "red"),   # upside down
])
def test_exif_orientation_is_applied(tmp_path, orientation, size, top_left, bottom_right):
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "phone.jpg"
    _two_colour().save(p, quality=95, exif=exif.tobytes())
    img = load_image(p)
    assert img.size == size
    arr = np.asarray(img).astype(int)
    colour = lambda px: "red" if px[0] > px[2] else "blue"  # noqa: E731
    assert colour(arr[1, 1]) == top_left and colour(arr[-2, -2]) == bottom_right
    assert 0x0112 not in img.getexif() or img.getexif()[0x0112] == 1  # not applied twice downstream


@pytest.mark.parametrize("make,want", [
    (lambda: Image.fromarray(np.full((16, 16), 1000, dtype=np.uint16)), 4),         # I;16: dark stays dark
    (lambda: Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)), 255),     # I;16 full scale: white
    (lambda: Image.frombytes("I;16B", (16, 16), np.full((16, 16), 32768, dtype=">u2").tobytes()), 128),
    (lambda: Image.fromarray(np.full((16, 16), 1000, dtype=np.int32)), 4),          # I (16-bit PNG/TIFF data)
    (lambda: Image.fromarray(np.full((16, 16), -5, dtype=np.int32)), 0),            # clipped below
    (lambda: Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)), 128),       # F: 0..1
    (lambda: Image.fromarray(np.full((16, 16), 0.0, dtype=np.float32)), 0),         # F black stays black
    (lambda: Image.fromarray(np.full((16, 16), 7.0, dtype=np.float32)), 255),       # F clipped above
    (lambda: Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)), 100),         # L unchanged
], ids=["I16-dark", "I16-white", "I16B-mid", "I-dark", "I-negative", "F-half", "F-black", "F-over", "L"])
def test_high_bit_depth_is_mapped_by_the_type_range(make, want):
    im = make()
    out = check_image(im)
    arr = np.asarray(out)
    assert out.mode == "RGB" and (arr == want).all(), (im.mode, arr[0, 0].tolist())


@pytest.mark.parametrize("arr,suffix,want", [
    (np.full((16, 16), 1000, dtype=np.uint16), ".png", 4),
    (np.full((16, 16), 0.25, dtype=np.float32), ".tif", 64),
    (np.full((16, 16), 1000, dtype=np.int32), ".tif", 4),
], ids=["16-bit PNG", "float TIFF", "32-bit int TIFF"])
def test_high_bit_depth_files(tmp_path, arr, suffix, want):
    p = tmp_path / f"img{suffix}"
    Image.fromarray(arr).save(p)
    got = np.asarray(load_image(p))
    assert (got == want).all(), got[0, 0].tolist()


def test_gradient_keeps_its_contrast():
    """A 16-bit image using only the bottom of its range is not stretched to full contrast."""
    arr = np.linspace(0, 4095, 256, dtype=np.uint16).reshape(16, 16)  # a 12-bit sensor's values
    out = np.asarray(check_image(Image.fromarray(arr)))[..., 0]
    assert out.max() == round(4095 / 65535 * 255) and out.min() == 0


# ---- one image-root rule ----------------------------------------------------------------------------------------
def _img(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(p)
    return p


def test_symlinked_images_folder_is_followed_for_training(tmp_path):
    from compactvlm.data.llava import LlavaDataset
    from compactvlm.testing import tiny_vlm

    _img(tmp_path / "elsewhere" / "pics" / "0.png")
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(tmp_path / "elsewhere" / "pics", target_is_directory=True)
    (data / "train.json").write_text(json.dumps([{"id": "a", "image": "images/0.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat ?"}, {"from": "gpt", "value": "grey ."}]}]))
    m = tiny_vlm()
    ds = LlavaDataset(data / "train.json", m.tokenizer, m.num_image_tokens(), m.processor)
    assert ds[0]["pixel_values"].shape[0] == 3
    assert resolve_in_root("images/0.png", data) == (tmp_path / "elsewhere" / "pics" / "0.png").resolve()


def test_symlinked_images_folder_is_followed_for_evaluation(tmp_path):
    from compactvlm.evaluate.benchmarks.base import get_benchmark

    _img(tmp_path / "store" / "000000.jpg")
    d = tmp_path / "sq"
    (d / "images").mkdir(parents=True)
    (d / "images" / "test").symlink_to(tmp_path / "store", target_is_directory=True)
    row = {"question_id": "q0", "image": "images/test/000000.jpg"}
    (d / "test_questions.jsonl").write_text(json.dumps({**row, "text": "What?"}) + "\n")
    (d / "test_answers.jsonl").write_text(json.dumps({**row, "family": "attribute", "answers": ["x"]}) + "\n")
    reader = get_benchmark("sceneqa", d)
    reader.check_image_paths(reader.items())  # allowed
    assert load_image(reader.items()[0].image_path, root=d).size == (16, 16)


def test_escapes_are_refused_the_same_way_for_both(tmp_path):
    _img(tmp_path / "secret.png")
    (tmp_path / "data").mkdir()
    for bad in ("../secret.png", str(tmp_path / "secret.png"), "images/../../secret.png"):
        with pytest.raises(CompactVLMError, match="escapes the data root"):
            resolve_in_root(bad, tmp_path / "data")
    with pytest.raises(CompactVLMError, match="escapes the data root"):
        load_image("../secret.png", root=tmp_path / "data")
    # a data folder named with '..' (eval --data ../sq) and paths under it are fine
    _img(tmp_path / "data" / "images" / "a.png")
    sub = tmp_path / "data" / "images"
    assert resolve_in_root(sub / ".." / "images" / "a.png", sub / ".." ) == (tmp_path / "data" / "images" / "a.png")
    assert resolve_in_root("images/../images/a.png", tmp_path / "data").name == "a.png"
