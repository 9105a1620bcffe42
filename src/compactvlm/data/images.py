"""Loading and validating images, and turning them into pixel tensors.

Policy (documented, tested): any mode PIL can open is converted to RGB — palette and grey images by
``convert("RGB")``, alpha (RGBA/LA/PA) composited on white, CMYK through PIL's conversion, 16-bit grey
(I;16 / I) scaled to 8 bit. Images smaller than ``MIN_SIDE`` pixels or larger than ``MAX_PIXELS`` are refused
with a message, before decoding the pixels (decompression-bomb guard).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import CompactVLMError

MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # ~8000 x 8000


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = np.clip(arr / (hi if hi > 255 else 255.0) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


def check_image(img: Image.Image, source: str = "image") -> Image.Image:
    """Validate size and convert to RGB."""
    w, h = img.size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise CompactVLMError(
            f"{source} is {w}x{h} pixels, too small to see anything",
            f"use an image of at least {MIN_SIDE}x{MIN_SIDE} pixels",
        )
    if w * h > MAX_PIXELS:
        raise CompactVLMError(
            f"{source} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), over the {MAX_PIXELS / 1e6:.0f} MP limit "
            "(decompression-bomb guard)",
            "downscale the image before using it",
        )
    return _to_rgb(img)


def load_image(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Image.Image:
    """Open an image file as RGB with clear errors. With ``root``, ``path`` must stay inside it."""
    p = Path(path)
    if root is not None:
        root_p = Path(root).resolve()
        p = (root_p / p).resolve() if not p.is_absolute() else p.resolve()
        if root_p != p and root_p not in p.parents:
            raise CompactVLMError(
                f"image path {str(path)!r} escapes the data root {str(root_p)!r}",
                "image paths in a dataset must be relative paths inside its folder",
            )
    if not p.exists():
        raise CompactVLMError(f"image file not found: {p}", "check the path (relative paths are resolved from the data folder)")
    if p.is_dir():
        raise CompactVLMError(f"{p} is a folder, not an image file", "pass the path of one image file")
    if p.stat().st_size == 0:
        raise CompactVLMError(f"image file {p} is empty (0 bytes)", "re-copy or re-download the file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise CompactVLMError(
                        f"{p} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), over the {MAX_PIXELS / 1e6:.0f} MP limit "
                        "(decompression-bomb guard)",
                        "downscale the image before using it",
                    )
                im.load()
                img = im.copy()
    except CompactVLMError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise CompactVLMError(f"{p} is too large to decode safely (decompression-bomb guard): {e}",
                              "downscale the image before using it") from None
    except UnidentifiedImageError:
        raise CompactVLMError(f"{p} is not an image PIL can read", "pass a PNG, JPEG, WebP, BMP, GIF or TIFF file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CompactVLMError(f"{p} is corrupt or truncated: {e}", "re-export or re-download the image") from None
    return check_image(img, str(p))


@dataclass
class ImageProcessor:
    """Resize to a square ``size`` (bicubic), scale to [0, 1], normalise with mean/std."""

    size: int = 224
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def __call__(self, images: Iterable[Image.Image]) -> torch.Tensor:
        arrs = []
        for img in images:
            if not isinstance(img, Image.Image):
                raise CompactVLMError(f"expected a PIL image, got {type(img).__name__}", "load images with load_image()")
            img = check_image(img)
            img = img.resize((self.size, self.size), Image.BICUBIC)
            arrs.append(np.asarray(img, dtype=np.float32) / 255.0)  # (S, S, 3)
        if not arrs:
            raise CompactVLMError("no images given", "pass at least one image")
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}
