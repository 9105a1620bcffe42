"""A SceneQA scene: a crop of a real photo with Fashion-MNIST items, coloured shapes and a sign with a
rendered word placed on it without overlap; rendered to a 224x224 RGB image and a label map (pixel =
object id, 0 = background). ``plan_objects`` decides what goes in (per question family, so every family
gets the content it needs); ``place`` and ``render`` are family-agnostic."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import sources
from .vocab import (CANVAS, COLOUR_NAMES, COLOURS, COUNT_RANGE, ITEMS, MC_KINDS, MME_CATEGORIES, SHAPES,
                    SIGN_STYLES, THEME_P, THEMES, WORDS)

ITEM_SIZE = (28, 56)   # px on the 224 canvas: 2x2 to 4x4 patches of a 14-px ViT
SHAPE_SIZE = (20, 40)
FONT_SIZE = (13, 20)
MARGIN = 4             # free pixels between objects
ITEM_THRESHOLD = 20    # grey level above which a Fashion-MNIST pixel belongs to the item


@dataclass
class Obj:
    kind: str                     # "item" | "shape" | "sign"
    name: str                     # item name, shape type or "sign"
    colour: str | None = None     # shapes
    word: str | None = None       # signs
    source: int | None = None     # Fashion-MNIST index (items)
    font: int = 0                 # signs: font index and size, board style
    font_size: int = 0
    style: int = 0
    frame: tuple[int, int, int, int] = (0, 0, 0, 0)  # where it is drawn: x0, y0, x1, y1 (exclusive)
    box: tuple[int, int, int, int] = (0, 0, 0, 0)    # tight box of its pixels
    id: int = 0
    pixels: np.ndarray | None = field(default=None, repr=False)  # items: resized grey values (h, w)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def to_dict(self, pool_tag: str) -> dict:
        d = {"id": self.id, "kind": self.kind, "name": self.name, "box": list(self.box)}
        if self.colour:
            d["color"] = self.colour
        if self.word:
            d["word"] = self.word
        if self.source is not None:
            d["source"] = f"{pool_tag}:{self.source}"
        return d


@dataclass
class Scene:
    background: str
    theme: str
    crop: tuple[int, int, int, bool]
    objects: list[Obj] = field(default_factory=list)

    def named(self, name: str) -> list[Obj]:
        return [o for o in self.objects if o.name == name]

    def item_names(self) -> set[str]:
        return {o.name for o in self.objects if o.kind == "item"}

    def signs(self) -> list[Obj]:
        return [o for o in self.objects if o.kind == "sign"]

    def refname(self, o: Obj) -> str | None:
        """A phrase that picks out ``o`` alone ("bag", "star", "red star", "sign"), or None."""
        same = self.named(o.name)
        if len(same) == 1:
            return o.name
        if o.kind == "shape" and sum(x.colour == o.colour for x in same) == 1:
            return f"{o.colour} {o.name}"
        return None


class Pool:
    """The Fashion-MNIST items a split may use (disjoint across splits)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, start: int, stop: int, tag: str):
        self.images, self.tag = images, tag
        lab = labels[start:stop]
        self.by_class = [np.flatnonzero(lab == c) + start for c in range(len(ITEMS))]

    def sample(self, rng: np.random.Generator, name: str, k: int = 1) -> list[int]:
        idx = self.by_class[ITEMS.index(name)]
        return [int(i) for i in rng.choice(idx, size=k, replace=False)]


# ---------------------------------------------------------------------------------------------- plan
def _items(rng, pool: Pool, theme: str, n: int, exclude: set[str] = frozenset()) -> list[Obj]:
    names: list[str] = []
    for _ in range(50):
        if len(names) == n:
            break
        cands = THEMES[theme] if rng.random() < THEME_P else ITEMS
        name = str(rng.choice(cands))
        if name not in names and name not in exclude:
            names.append(name)
    return [Obj("item", nm, source=pool.sample(rng, nm)[0]) for nm in names]


def _shapes(rng, n: int, exclude: set[str] = frozenset()) -> list[Obj]:
    types = [s for s in SHAPES if s not in exclude]
    picked = rng.choice(len(types), size=min(n, len(types)), replace=False)
    return [Obj("shape", types[i], colour=str(rng.choice(COLOUR_NAMES))) for i in picked]


def _sign(rng, word: str | None = None) -> Obj:
    return Obj("sign", "sign", word=word or str(rng.choice(WORDS)), font=int(rng.integers(0, 4)),
               font_size=int(rng.integers(FONT_SIZE[0], FONT_SIZE[1] + 1)), style=int(rng.integers(len(SIGN_STYLES))))


def _group(rng, pool: Pool, theme: str) -> tuple[list[Obj], str, int]:
    """k (1..4) copies of one item or shape type, for counting questions."""
    k = int(rng.integers(COUNT_RANGE[0], COUNT_RANGE[1] + 1))
    if rng.random() < 0.5:
        name = str(rng.choice(THEMES[theme]))
        objs = [Obj("item", name, source=s) for s in pool.sample(rng, name, k)]
    else:
        name = str(rng.choice(SHAPES))
        objs = [Obj("shape", name, colour=str(rng.choice(COLOUR_NAMES))) for _ in range(k)]
    return objs, name, k


def plan_objects(rng: np.random.Generator, family: str, pool: Pool, theme: str) -> tuple[list[Obj], dict]:
    """The objects a scene for ``family`` holds (required ones first) and the family's choice of
    sub-question (``spec``), so that the question asked fits the content."""
    spec: dict = {}
    n_items = int(rng.integers(1, 4))
    n_shapes = int(rng.integers(0, 3))
    sign = rng.random() < 0.4
    kind = None
    if family == "multiple_choice":
        kind = spec["kind"] = str(rng.choice(MC_KINDS))
    elif family == "mme":
        kind = spec["category"] = str(rng.choice(MME_CATEGORIES))
    elif family == "unanswerable":
        spec["answerable"] = bool(rng.random() >= 1 / 3)
        kind = spec["kind"] = str(rng.choice(("word", "color")))
    if family == "counting" or kind == "count":
        group, name, k = _group(rng, pool, theme)
        spec.update(target=name, k=k)
        others = _items(rng, pool, theme, min(n_items, 2), exclude={name}) + _shapes(rng, min(n_shapes, 2), {name})
        return group + others + ([_sign(rng)] if sign else []), spec
    if family in ("attribute",) or kind == "color":
        n_shapes = max(n_shapes, 1)
    if family == "ocr" or kind in ("word", "OCR"):
        sign = True
    if family == "unanswerable" and kind == "word" and not spec["answerable"]:
        sign = False
    if kind == "item":
        n_items = 1
    if family == "spatial" or kind in ("position",):
        n_shapes = max(n_shapes, 1)
    shapes = _shapes(rng, n_shapes)
    objs = ([_sign(rng)] if sign else []) + shapes + _items(rng, pool, theme, n_items)
    return objs, spec


# --------------------------------------------------------------------------------------------- place
def _size(o: Obj, rng, scale: float = 1.0) -> tuple[int, int]:
    if o.kind == "item":
        s = int(rng.integers(ITEM_SIZE[0], ITEM_SIZE[1] + 1))
        return round(s * scale), round(s * scale)
    if o.kind == "shape":
        s = int(rng.integers(SHAPE_SIZE[0], SHAPE_SIZE[1] + 1))
        return round(s * scale), round(s * scale)
    if scale != 1.0:
        o.font_size = round(o.font_size * scale)
    x0, y0, x1, y1 = sources.font(o.font, o.font_size).getbbox(o.word)
    return x1 - x0 + 10, y1 - y0 + 10


def place(rng: np.random.Generator, objs: list[Obj], required: int, pool: Pool, scale: float = 1.0) -> list[Obj] | None:
    """Non-overlapping positions; the first ``required`` objects must fit (else None), later ones are dropped if not.
    ``scale`` multiplies object sizes (training curricula; 1.0 = the sizes every evaluation split uses)."""
    boxes: list[tuple[int, int, int, int]] = []
    placed = []
    for i, o in enumerate(objs):
        w, h = _size(o, rng, scale)
        ok = False
        for _ in range(60):
            x = int(rng.integers(2, CANVAS - w - 1))
            y = int(rng.integers(2, CANVAS - h - 1))
            if all(x >= b[2] + MARGIN or x + w + MARGIN <= b[0] or y >= b[3] + MARGIN or y + h + MARGIN <= b[1]
                   for b in boxes):
                ok = True
                break
        if not ok:
            if i < required:
                return None
            continue
        o.frame = o.box = (x, y, x + w, y + h)
        if o.kind == "item":
            o.pixels = np.asarray(Image.fromarray(pool.images[o.source]).resize((w, h), Image.BILINEAR))
            ys, xs = np.nonzero(o.pixels > ITEM_THRESHOLD)
            if len(xs):
                o.box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        boxes.append(o.frame)
        placed.append(o)
    for k, o in enumerate(placed, 1):
        o.id = k
    return placed


# -------------------------------------------------------------------------------------------- render
def _shape_points(name: str, box: tuple[int, int, int, int]):
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if name == "square":
        d = 0.12 * (x1 - x0)
        return [(x0 + d, y0 + d), (x1 - d, y0 + d), (x1 - d, y1 - d), (x0 + d, y1 - d)]
    if name == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if name == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if name == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts
    return None  # circle


def render(scene: Scene, backgrounds: dict[str, np.ndarray]) -> tuple[Image.Image, Image.Image]:
    """The RGB image and the label map (mode "L", pixel = object id)."""
    bg = backgrounds[scene.background]
    x, y, side, flip = scene.crop
    im = Image.fromarray(bg[y:y + side, x:x + side]).resize((CANVAS, CANVAS), Image.BILINEAR)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = np.array(im)                                    # (224, 224, 3)
    labels = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for o in scene.objects:
        if o.kind != "item":
            continue
        x0, y0, x1, y1 = o.frame
        v = o.pixels                                          # (h, w) grey values
        mask = v > ITEM_THRESHOLD                             # (h, w) silhouette
        shadow = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        region[shadow] *= 0.3                                 # a dark halo makes the item stand out on any photo
        alpha = np.clip(v.astype(np.float32) / 60.0, 0.0, 1.0)[..., None]
        region = alpha * v[..., None].astype(np.float32) + (1 - alpha) * region
        canvas[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
        labels[y0:y1, x0:x1][mask] = o.id
    im = Image.fromarray(canvas)
    lab = Image.fromarray(labels)
    draw, ldraw = ImageDraw.Draw(im), ImageDraw.Draw(lab)
    for o in scene.objects:
        if o.kind == "shape":
            rgb = COLOURS[o.colour]
            edge = (0, 0, 0) if (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) > 110 else (255, 255, 255)
            pts = _shape_points(o.name, o.box)
            if pts is None:
                xy = [o.box[0], o.box[1], o.box[2] - 1, o.box[3] - 1]
                draw.ellipse(xy, fill=rgb, outline=edge, width=2)
                ldraw.ellipse(xy, fill=o.id, outline=o.id, width=2)
            else:
                draw.polygon(pts, fill=rgb, outline=edge, width=2)
                ldraw.polygon(pts, fill=o.id, outline=o.id, width=2)
        elif o.kind == "sign":
            board, ink = SIGN_STYLES[o.style]
            f = sources.font(o.font, o.font_size)
            bx0, by0, _, _ = f.getbbox(o.word)
            xy = [o.box[0], o.box[1], o.box[2] - 1, o.box[3] - 1]
            draw.rectangle(xy, fill=board, outline=ink, width=1)
            ldraw.rectangle(xy, fill=o.id)
            draw.text((o.box[0] + 5 - bx0, o.box[1] + 5 - by0), o.word, font=f, fill=ink)
    return im, lab


def sample_scene(rng: np.random.Generator, family: str, pool: Pool, backgrounds: dict[str, np.ndarray],
                 scale: float = 1.0) -> tuple[Scene, dict]:
    """Plan, place and crop (retried until the required objects fit); ``scale`` multiplies object sizes."""
    names = sorted(backgrounds)
    for _ in range(20):
        theme = str(rng.choice(sorted(THEMES)))
        objs, spec = plan_objects(rng, family, pool, theme)
        placed = place(rng, objs, required=spec.get("k", 1), pool=pool, scale=scale)
        if placed is None:
            continue
        bg = names[int(rng.integers(len(names)))]
        h, w = backgrounds[bg].shape[:2]
        side = int(rng.uniform(0.55, 1.0) * min(h, w))
        crop = (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side, bool(rng.random() < 0.5))
        return Scene(bg, theme, crop, placed), spec
    raise RuntimeError(f"could not place a SceneQA scene in 20 tries (object scale {scale})")  # not reached at scale 1


def scene_dict(scene: Scene, pool: Pool) -> dict:
    return {"background": scene.background, "theme": scene.theme,
            "objects": [o.to_dict(pool.tag) for o in scene.objects]}

