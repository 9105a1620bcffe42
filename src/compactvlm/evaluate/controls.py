"""Blind controls: the same evaluation with each question's image replaced, to tell whether a model reads the
image at all.

- ``shuffled``: every question about image ``U[k]`` gets image ``U[(k + n//2) mod n]`` instead (``U``: the
  benchmark's distinct images in order of first appearance, ``n = len(U)``), a fixed permutation without fixed
  points, so a question never sees its own image and the control's questions and answer distribution are the
  real run's. A model that answers from the text alone scores the same with real and shuffled images.
- ``blank``: every image is a uniform picture of the ImageNet mean colour (which the DINOv2/CLIP processors map
  to ~0): what the model says with no visual content at all.

A model "sees" on a family only where real-image accuracy minus shuffled-image accuracy has a 95 % CI above 0
(``evaluate.bootstrap.paired_family_deltas``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from ..encoders.preprocessing import IMAGENET_MEAN
from ..errors import CompactVLMError
from .benchmarks.base import EvalItem

CONTROLS = ("shuffled", "blank")
BLANK_FILE = "control_blank.png"
#: ImageNet mean colour x 255, rounded: (124, 116, 104), the colour the processors normalise to ~0
BLANK_RGB = tuple(round(m * 255) for m in IMAGENET_MEAN)


def check_control(control: str | None) -> None:
    if control is not None and control not in CONTROLS:
        raise CompactVLMError(f"unknown control {control!r}", f"use one of {', '.join(CONTROLS)} (or none)")


def shuffled_images(items: Sequence[EvalItem]) -> dict[str, str]:
    """image path -> the image it is replaced by (a permutation of the distinct images without fixed points)."""
    distinct = list(dict.fromkeys(it.image_path for it in items if it.image_path))
    n = len(distinct)
    if n < 2:
        raise CompactVLMError(f"the shuffled control needs at least 2 distinct images, this run has {n}",
                              "evaluate more questions (drop --limit) or use --control blank")
    return {img: distinct[(k + n // 2) % n] for k, img in enumerate(distinct)}


def apply_control(items: Sequence[EvalItem], control: str | None, out_dir: str | Path) -> list[EvalItem]:
    """The items with their images replaced by ``control`` (unchanged for None). ``meta['image']`` (the relative
    path SceneQA's mask reader uses) moves with the image. ``blank`` writes its image into ``out_dir``."""
    check_control(control)
    if control is None:
        return list(items)
    if control == "shuffled":
        swap = shuffled_images(items)
        rel = {it.image_path: it.meta.get("image") for it in items}
        out = []
        for it in items:
            if not it.image_path:
                out.append(it)
                continue
            new = swap[it.image_path]
            meta = dict(it.meta)
            if "image" in meta:
                meta["image"] = rel[new]
            meta["control"] = control
            out.append(dataclasses.replace(it, image_path=new, meta=meta))
        return out
    from PIL import Image

    path = Path(out_dir) / BLANK_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (224, 224), BLANK_RGB).save(path)
    return [dataclasses.replace(it, image_path=str(path), meta={**it.meta, "control": control}) if it.image_path
            else it for it in items]


def blind_gap(rows: Sequence[dict], real: dict[str, str], controls: dict[str, dict[str, str]], n: int = 1000,
              seed: int = 0) -> dict:
    """SceneQA: real-image answers vs each control's answers, per family, with paired bootstrap CIs
    (``{control: paired_family_deltas(...)}``) and the families where the model sees (CI of real minus
    shuffled above 0)."""
    from .bootstrap import paired_family_deltas

    out: dict = {"controls": {c: paired_family_deltas(rows, real, p, n=n, seed=seed) for c, p in controls.items()}}
    ref = out["controls"].get("shuffled")
    if ref is not None:
        out["sees"] = {f: v["delta"][1] > 0 for f, v in ref["families"].items()}
        out["sees"]["family_mean"] = ref["family_mean"]["delta"][1] > 0
    return out


def format_blind_table(gap: dict, chance: dict[str, float] | None = None) -> str:
    """Plain-text table: family, real, each control with (real - control) [95 % CI], chance, and whether the
    model sees on that family."""
    ctrls = list(gap["controls"])
    first = gap["controls"][ctrls[0]]
    fams = list(first["families"]) + ["family_mean"]
    head = f"{'family':17s} {'real':>6s}" + "".join(f" {c:>8s} {'real-' + c + ' [95% CI]':>28s}" for c in ctrls)
    head += (f" {'chance':>7s}" if chance else "") + ("  sees?" if "sees" in gap else "")
    lines = [head]
    for f in fams:
        pick = lambda c: (gap["controls"][c]["families"].get(f) if f != "family_mean"  # noqa: E731
                          else gap["controls"][c]["family_mean"])
        base = pick(ctrls[0])
        if base is None:
            continue
        line = f"{f:17s} {base['a']:6.1f}"
        for c in ctrls:
            v = pick(c)
            d = v["delta"]
            line += f" {v['b']:8.1f} {f'{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]':>28s}"
        if chance:
            line += f" {chance[f]:7.1f}" if f in chance else f" {'':7s}"
        if "sees" in gap:
            line += "  " + ("yes" if gap["sees"].get(f) else "no")
        lines.append(line)
    return "\n".join(lines)
