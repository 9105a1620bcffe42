"""Object masks of SceneQA images, in the form the ``given`` mask source of the Mask-LLaVA method
reads (``extra_state["masks"]``: one bool ``(K, H, W)`` array per image).

Each image ``images/<split>/<n>.jpg`` has a label map ``masks/<split>/<n>.png`` (pixel = object id,
0 = background) and a record in ``<split>_scenes.jsonl`` listing the objects (id, kind, name, box).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import CompactVLMError


@lru_cache(maxsize=8)
def _scenes(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as f:
        return {s["image"]: s for s in (json.loads(line) for line in f if line.strip())}


def scene_of(data_dir: str | os.PathLike, image: str) -> dict:
    """The scene record of ``image`` (a path relative to the SceneQA folder, e.g. "images/test/000007.jpg")."""
    split = Path(image).parent.name
    path = Path(data_dir) / f"{split}_scenes.jsonl"
    if not path.exists():
        raise CompactVLMError(f"no scene file {path}", "pass the folder `compactvlm data build sceneqa` wrote")
    scenes = _scenes(str(path))
    if image not in scenes:
        raise CompactVLMError(f"{image} is not in {path.name}", "pass the image path as written in the question file")
    return scenes[image]


def object_masks(data_dir: str | os.PathLike, image: str, size: tuple[int, int] | None = None,
                 kinds: tuple[str, ...] = ("item", "shape", "sign")) -> tuple[np.ndarray, list[dict]]:
    """(masks (K, H, W) bool, objects) for the objects of ``kinds`` in ``image``; ``size`` (H, W)
    resizes the label map first (nearest), e.g. to the model's preprocessed image size."""
    scene = scene_of(data_dir, image)
    lab = Image.open(Path(data_dir) / scene["mask"])
    if size is not None and lab.size != (size[1], size[0]):
        lab = lab.resize((size[1], size[0]), Image.NEAREST)
    lab = np.asarray(lab)                                            # (H, W) object ids
    objs = [o for o in scene["objects"] if o["kind"] in kinds]
    masks = np.stack([lab == o["id"] for o in objs]) if objs else np.zeros((0, *lab.shape), dtype=bool)
    keep = masks.reshape(len(objs), -1).any(1) if objs else np.zeros(0, dtype=bool)  # resizing can erase tiny ones
    return masks[keep], [o for o, k in zip(objs, keep) if k]


def object_words(obj: dict[str, Any]) -> list[str]:
    """The words a SceneQA object is named by: its name, then its colour (shapes) or its word (signs)."""
    words = [str(obj["name"])]
    if obj.get("color"):
        words.append(str(obj["color"]))
    if obj.get("word"):
        words.append(str(obj["word"]))
    return words


def scene_objects(root: str | Path, image: str, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The objects of a SceneQA image as grounding targets read them: ``{"box": [x0, y0, x1, y1], "words": [...]}``
    with the box as fractions of the image (``size`` = the image's (width, height) in pixels)."""
    w, h = size
    return [{"box": [o["box"][0] / w, o["box"][1] / h, o["box"][2] / w, o["box"][3] / h], "words": object_words(o)}
            for o in scene_of(root, image).get("objects", [])]
