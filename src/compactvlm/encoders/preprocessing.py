"""Image preprocessing facts shared by every layer: normalisation constants, ``preprocessor_config.json``, and
how a non-square image becomes the encoder's square.

One place for them (the encoder layer, so that compressors, models, interop and commands can all import it):
- ``IMAGENET_MEAN`` / ``IMAGENET_STD`` (DINOv2, and any folder without its own statistics) and ``CLIP_MEAN`` /
  ``CLIP_STD`` (OpenAI CLIP, the LLaVA-1.5 vision tower);
- ``read_preprocessor_config`` / ``norm_stats``: a model folder's ``preprocessor_config.json`` (HF's image
  processor settings) and the mean/std in it;
- ``square_image``: the image-to-square modes (``ASPECTS``), applied to a PIL image before the pixels are
  scaled and normalised (``data.images.ImageProcessor``):

  ``pad``     LLaVA-1.5's ``image_aspect_ratio: pad``: the image is pasted centred, at offset
              ((side - w) // 2, (side - h) // 2), on a square of side max(w, h) filled with the processor's
              mean colour (int(m * 255) per channel, as LLaVA's ``expand2square``), then resized (bicubic) to
              size x size. Nothing of the image is lost; the bars normalise to ~0.
  ``resize``  the whole image resized (bicubic) to size x size: the aspect ratio is not kept.
  ``crop``    CLIP's processor: the shorter side resized (bicubic) to size, the longer to
              int(size * long / short), then the centre size x size cut out: the sides of a wide image are lost.

  All three give the same pixels for a square image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import CompactVLMError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESSOR_CONFIG = "preprocessor_config.json"

ASPECTS = ("pad", "resize", "crop")
#: what a new model uses (LLaVA-1.5's default)
DEFAULT_ASPECT = "pad"
#: what a checkpoint written before the mode existed did (its processor resized the whole image)
LEGACY_ASPECT = "resize"


def check_aspect(aspect: str, where: str = "image_aspect") -> str:
    if aspect not in ASPECTS:
        raise CompactVLMError(f"{where} {aspect!r} is not an image-to-square mode",
                              f"use one of {', '.join(ASPECTS)} (pad: LLaVA-1.5's mean-colour padding)")
    return aspect


def read_preprocessor_config(path: str | Path) -> dict | None:
    """The settings in ``path`` (a ``preprocessor_config.json`` file, or a folder holding one); None when there is
    none. A file that is not a JSON object is an error naming it."""
    p = Path(path)
    if p.is_dir() or not p.name.endswith(".json"):
        p = p / PREPROCESSOR_CONFIG
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompactVLMError(f"{p} is not valid JSON: {e}", "re-save or re-download the model folder") from None
    if not isinstance(d, dict):
        raise CompactVLMError(f"{p} is not a JSON object", "re-save or re-download the model folder")
    return d


def norm_stats(folder: str | Path | None, default_mean: Sequence[float] = IMAGENET_MEAN,
               default_std: Sequence[float] = IMAGENET_STD) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``folder``'s ``preprocessor_config.json``; the defaults where it (or a key) is missing."""
    d = read_preprocessor_config(folder) if folder is not None else None
    d = d or {}
    return (tuple(float(v) for v in d.get("image_mean", default_mean)),
            tuple(float(v) for v in d.get("image_std", default_std)))


def pad_colour(mean: Sequence[float]) -> tuple[int, ...]:
    """The fill colour of ``pad``: LLaVA's ``tuple(int(x * 255) for x in image_processor.image_mean)``."""
    return tuple(int(m * 255) for m in mean)


def square_image(img, size: int, aspect: str, mean: Sequence[float] = IMAGENET_MEAN):
    """The ``size`` x ``size`` RGB PIL image the encoder sees for the RGB PIL image ``img`` (see the module doc)."""
    from PIL import Image

    check_aspect(aspect)
    w, h = img.size
    if aspect == "pad" and w != h:
        side = max(w, h)
        canvas = Image.new(img.mode, (side, side), pad_colour(mean))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    elif aspect == "crop" and w != h:
        short, long = min(w, h), max(w, h)
        new_long = int(size * long / short)
        nw, nh = (size, new_long) if w <= h else (new_long, size)
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    return img.resize((size, size), Image.BICUBIC)


def aspect_of_hf_processor(d: dict | None) -> str:
    """The mode that reproduces a transformers image processor's settings: ``do_pad`` (LlavaImageProcessor) ->
    pad; a shortest-edge resize with a centre crop (CLIPImageProcessor's default) -> crop; else resize."""
    if not d:
        return LEGACY_ASPECT
    if d.get("do_pad"):
        return "pad"
    size = d.get("size")
    shortest = isinstance(size, dict) and "shortest_edge" in size
    if d.get("do_center_crop", False) and (shortest or isinstance(size, int)):
        return "crop"
    return "resize"
