"""Real image content for SceneQA: Fashion-MNIST items, photo backgrounds shipped with scikit-image,
scikit-learn and matplotlib, and DejaVu fonts. Everything is read from local files (no downloads)
and cached per process."""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...errors import CompactVLMError

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
FONT_FILES = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans.ttf")

# background name -> (caption phrase "a photo of ...", loader)
BACKGROUND_PHRASES = {
    "astronaut": "an astronaut", "coffee": "a cup of coffee", "chelsea": "a cat", "rocket": "a rocket",
    "hubble": "a starry sky", "cells": "cells under a microscope", "china": "a temple", "flower": "a flower",
    "grace_hopper": "a woman in uniform", "grass": "grass", "gravel": "gravel", "brick": "a brick wall",
    "camera": "a man with a camera", "moon": "the moon",
}


def fashion_mnist_dir(override: str | os.PathLike | None = None) -> Path:
    cands = [override, os.environ.get("COMPACTVLM_FASHION_MNIST"), *FMNIST_DIRS]
    for c in cands:
        if c and (Path(c) / "t10k-images-idx3-ubyte.gz").exists():
            return Path(c)
    raise CompactVLMError(
        "Fashion-MNIST not found (looked in " + ", ".join(str(c) for c in cands if c) + ")",
        "install it: `sudo apt-get install dataset-fashion-mnist`, or point COMPACTVLM_FASHION_MNIST "
        "(or fmnist_dir=) at a folder with the four *-ubyte.gz files",
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format): a big-endian header, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@lru_cache(maxsize=4)
def load_fashion_mnist(part: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``part`` "train" (60k) or "t10k" (10k): (images (N, 28, 28) uint8, labels (N,) uint8)."""
    d = fashion_mnist_dir(root)
    return _read_idx(d / f"{part}-images-idx3-ubyte.gz"), _read_idx(d / f"{part}-labels-idx1-ubyte.gz")


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (255 * (a.astype(np.float64) / max(float(a.max()), 1.0))).astype(np.uint8)
    return a


def _loaders() -> dict:
    def sk(name):
        def f():
            import skimage.data

            return getattr(skimage.data, name)()
        return f

    def sklearn_image(fname):
        def f():
            from sklearn.datasets import load_sample_image

            return load_sample_image(fname)
        return f

    def hopper():
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))

    return {"astronaut": sk("astronaut"), "coffee": sk("coffee"), "chelsea": sk("chelsea"), "rocket": sk("rocket"),
            "hubble": sk("hubble_deep_field"), "cells": sk("immunohistochemistry"), "china": sklearn_image("china.jpg"),
            "flower": sklearn_image("flower.jpg"), "grace_hopper": hopper, "grass": sk("grass"),
            "gravel": sk("gravel"), "brick": sk("brick"), "camera": sk("camera"), "moon": sk("moon")}


@lru_cache(maxsize=1)
def load_backgrounds(short_side: int = 256) -> dict[str, np.ndarray]:
    """name -> RGB uint8 photo, resized so its short side is ``short_side``. Photos a machine lacks are skipped."""
    from PIL import Image

    out = {}
    for name, loader in _loaders().items():
        try:
            a = _rgb(loader())
        except Exception:  # a missing optional sample photo is not fatal
            continue
        im = Image.fromarray(a)
        s = short_side / min(im.size)
        im = im.resize((max(short_side, round(im.size[0] * s)), max(short_side, round(im.size[1] * s))),
                       Image.BILINEAR)
        out[name] = np.asarray(im)
    if not out:
        raise CompactVLMError("no background photos could be loaded", "install scikit-image and scikit-learn")
    return out


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    found = []
    for d in FONT_DIRS:
        for f in FONT_FILES:
            if (Path(d) / f).exists():
                found.append(str(Path(d) / f))
    return tuple(found)


@lru_cache(maxsize=256)
def font(index: int, size: int):
    """A TrueType font: DejaVu ``font_files()[index]``, or Pillow's built-in font when DejaVu is missing."""
    from PIL import ImageFont

    files = font_files()
    if files:
        return ImageFont.truetype(files[index % len(files)], size)
    return ImageFont.load_default(size)
