"""Loading and validating images, and turning them into pixel tensors.

Policy (documented, tested): an image loads the way a photo viewer shows it. Its EXIF orientation is applied
(``ImageOps.exif_transpose``: a phone photo taken sideways is upright). Any mode PIL can open is converted to
RGB — palette and grey images by ``convert("RGB")``, alpha (RGBA/LA/PA) composited on white, CMYK through
PIL's conversion. High-bit-depth grey is mapped by its type's range, never by the image's own maximum (a
uniformly dark 16-bit image stays dark): 16-bit (``I;16*``) and 32-bit integer (``I``, which PIL uses for
16-bit PNG and TIFF data) as 0..65535, float (``F``) as 0.0..1.0; values outside are clipped. Images smaller than
``MIN_SIDE`` pixels or larger than ``MAX_PIXELS`` are refused with a message, before decoding the pixels
(decompression-bomb guard).

Image paths of a dataset or benchmark follow one rule (``resolve_in_root``): relative paths (or absolute ones)
that spell a place inside the data folder (``..`` is applied to the text of the path, never through a
symlink); symlinks inside the folder (a linked ``images/``) are followed, and a message about a missing file or
a loop names the symlink involved.
"""

from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..encoders.preprocessing import (DEFAULT_ASPECT, IMAGENET_MEAN, IMAGENET_STD, check_aspect,
                                    square_image)
from ..errors import CompactVLMError

MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # ~8000 x 8000
#: the value that maps to white, per high-bit-depth mode (0 maps to black)
MODE_RANGE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in MODE_RANGE:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=MODE_RANGE[img.mode], neginf=0.0)
        arr = np.clip(np.rint(arr / MODE_RANGE[img.mode] * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


def _symlinks(root: Path, rel: Path) -> list[str]:
    """The symlinks on the way from ``root`` to ``root / rel`` ('images -> /elsewhere/pics')."""
    out, cur = [], root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            try:
                out.append(f"{cur.relative_to(root).as_posix()} -> {os.readlink(cur)}")
            except OSError:
                out.append(cur.relative_to(root).as_posix())
    return out


def resolve_in_root(path: str | os.PathLike, root: str | os.PathLike, where: str = "") -> Path:
    """The one image-root rule for training and evaluation: ``path`` (relative to ``root``, or absolute and
    spelling a place inside it) may not leave ``root`` by ``..`` or by being elsewhere; symlinks inside ``root``
    are allowed and followed. Returns the resolved file; a missing file, a folder or a symlink loop is an error
    that names the symlinks involved."""
    root_p = Path(os.path.abspath(Path(root).expanduser()))
    p = Path(path)
    escape = CompactVLMError(f"image path {str(path)!r}{where} escapes the data root {str(root_p)!r}",
                             "image paths in a dataset must be relative paths inside its folder (no '..' out of "
                             "it, no absolute paths elsewhere); link outside folders in with a symlink inside it")
    # '..' is resolved on the text of the path (never through a symlink), so the file read is the one checked
    spelled = Path(os.path.abspath(p if p.is_absolute() else root_p / p))
    try:
        rel = spelled.relative_to(root_p)
    except ValueError:
        raise escape from None
    full = root_p / rel
    links = _symlinks(root_p, rel)
    via = f" (via symlink {', '.join(links)})" if links else ""
    try:
        st = os.stat(full)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CompactVLMError(f"image path {str(path)!r}{where} is a symlink loop{via}",
                                  "fix or remove the symlink so that it points at an image file") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CompactVLMError(f"image file not found: {full}{where}{via}",
                                  "check the path (relative paths are resolved from the data folder)"
                                  + ("; the symlink may point to a missing place" if links else "")) from None
        raise CompactVLMError(f"cannot read {full}{via}: {e.strerror}", "check the file and its permissions") from None
    if os.path.isdir(full):
        raise CompactVLMError(f"{full} is a folder, not an image file{via}", "pass the path of one image file")
    del st
    return Path(os.path.realpath(full))


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
    """Open an image file as RGB, upright (EXIF orientation applied), with clear errors. With ``root``, ``path``
    follows the image-root rule of ``resolve_in_root``."""
    p = Path(path)
    if root is not None:
        p = resolve_in_root(p, root)
    else:
        try:
            os.stat(p)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CompactVLMError(f"image path {p} is a symlink loop",
                                      "fix or remove the symlink so that it points at an image file") from None
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                link = " (a symlink to a missing place)" if p.is_symlink() else ""
                raise CompactVLMError(f"image file not found: {p}{link}",
                                      "check the path (relative paths are resolved from the data folder)") from None
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
                img = ImageOps.exif_transpose(im)  # as a photo viewer shows it (a copy, orientation tag dropped)
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
    """Make the image square (``aspect``: ``pad`` | ``resize`` | ``crop``, see ``encoders.preprocessing``) at
    ``size`` x ``size`` (bicubic), scale to [0, 1], normalise with mean/std.

    ``pad`` (LLaVA-1.5's mean-colour padding) is the default of new models; a processor read from a checkpoint
    written before the mode existed is ``resize`` (what those checkpoints were trained with)."""

    size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    aspect: str = DEFAULT_ASPECT

    def __post_init__(self) -> None:
        check_aspect(self.aspect, "image processor aspect")

    def square(self, img: Image.Image) -> Image.Image:
        """The ``size`` x ``size`` RGB image the encoder sees (before scaling and normalisation)."""
        if not isinstance(img, Image.Image):
            raise CompactVLMError(f"expected a PIL image, got {type(img).__name__}", "load images with load_image()")
        return square_image(check_image(img), int(self.size), self.aspect, self.mean)

    def __call__(self, images: Iterable[Image.Image]) -> torch.Tensor:
        arrs = [np.asarray(self.square(img), dtype=np.float32) / 255.0 for img in images]  # each (S, S, 3)
        if not arrs:
            raise CompactVLMError("no images given", "pass at least one image")
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "aspect": self.aspect}
