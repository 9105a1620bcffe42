"""The encoder ceiling: what a frozen vision encoder's features say about SceneQA's images, read by linear probes.

A VLM cannot answer better than its encoder lets it see. Each probe is a multinomial logistic regression
(scikit-learn, standardised features) fitted on the frozen encoder's features of SceneQA *train* images and scored
on *test* images, for what one question family needs:

=================  ===========================================  ==============================================
probe              features                                     serves
=================  ===========================================  ==============================================
item presence      CLS + mean patch token, one probe per class  existence (POPE), mme
                   (balanced accuracy, averaged over classes)
item class         mean of the patch tokens under the item      existence, counting, multiple choice
shape colour       mean of the patch tokens under the shape     attribute
sign word          mean of the patch tokens under the sign      ocr
object quadrant    mean of the patch tokens under the object    spatial, multiple choice ("where is ...")
object count       CLS + mean patch token                       counting
object vs ground   one patch token (covered by an object?)      all (localisation), balanced accuracy
=================  ===========================================  ==============================================

"Under" = the patches whose 14-px cell overlaps the object's box by at least half of the cell. Local probes show
what the tokens at an object's place encode; the LLM sees all tokens, so they are an upper bound only in the sense
that a projector must keep this information for the LLM to use it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import CompactVLMError

#: probe name -> the SceneQA families it serves
SERVES = {"item presence": "existence, mme", "item class": "existence, counting, multiple_choice",
          "shape colour": "attribute", "sign word": "ocr", "object quadrant": "spatial, multiple_choice",
          "object count": "counting", "object vs ground": "all (localisation)"}


@dataclass
class ImageFeatures:
    cls: np.ndarray  # (C,)
    patches: np.ndarray  # (H, W, C)
    objects: list[dict]  # SceneQA scene objects (kind, name, box, color / word)


def read_scenes(data_dir: Path, split: str, limit: int | None) -> list[dict]:
    path = data_dir / f"{split}_scenes.jsonl"
    if not path.is_file():
        raise CompactVLMError(f"{path} not found: the probe reads a SceneQA build's {split} scenes",
                              f"build one with `compactvlm data build sceneqa --out {data_dir}` (with --{split} N > 0)")
    rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    return rows[:limit] if limit else rows


def encode_scenes(encoder, processor, data_dir: Path, scenes: Sequence[dict], layer: int, batch: int = 32,
                  progress: bool = True) -> list[ImageFeatures]:
    import torch
    from tqdm.auto import tqdm

    from ..data.images import load_image

    out: list[ImageFeatures] = []
    bar = tqdm(total=len(scenes), desc="encode", unit="img", disable=not progress)
    with torch.inference_mode():
        for i in range(0, len(scenes), batch):
            chunk = scenes[i : i + batch]
            pix = processor([load_image(data_dir / s["image"]) for s in chunk])
            f = encoder(pix.to(encoder.dtype), layers=[layer])
            h = f.hidden[encoder.info.normalize_layer(layer)].float()  # (B, P + H*W, C)
            gh, gw = f.grid
            for j, s in enumerate(chunk):
                cls = h[j, 0] if f.num_prefix else h[j, f.num_prefix:].mean(0)
                patches = h[j, f.num_prefix : f.num_prefix + gh * gw].reshape(gh, gw, -1)  # (H, W, C)
                out.append(ImageFeatures(cls.numpy(), patches.numpy(), s["objects"]))
            bar.update(len(chunk))
    bar.close()
    return out


def cells_under(box: Sequence[float], grid: tuple[int, int], image_size: int) -> list[tuple[int, int]]:
    """Grid cells whose area is at least half covered by ``box`` (x0, y0, x1, y1 in pixels); the centre cell if
    none is."""
    gh, gw = grid
    ch, cw = image_size / gh, image_size / gw
    x0, y0, x1, y1 = box
    cells = []
    for r in range(gh):
        for c in range(gw):
            ix = max(0.0, min(x1, (c + 1) * cw) - max(x0, c * cw))
            iy = max(0.0, min(y1, (r + 1) * ch) - max(y0, r * ch))
            if ix * iy >= 0.5 * cw * ch:
                cells.append((r, c))
    if not cells:
        cells = [(min(int((y0 + y1) / 2 / ch), gh - 1), min(int((x0 + x1) / 2 / cw), gw - 1))]
    return cells


def _local(f: ImageFeatures, box, image_size: int) -> np.ndarray:
    cells = cells_under(box, f.patches.shape[:2], image_size)
    return np.mean([f.patches[r, c] for r, c in cells], axis=0)


def _global(f: ImageFeatures) -> np.ndarray:
    return np.concatenate([f.cls, f.patches.reshape(-1, f.patches.shape[-1]).mean(0)])


def _quadrant(box, image_size: int) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return ("top" if cy < image_size / 2 else "bottom") + " " + ("left" if cx < image_size / 2 else "right")


def probe_datasets(feats: Sequence[ImageFeatures], image_size: int, items: Sequence[str],
                   rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list]]:
    """Per probe: (X, y). ``object vs ground`` samples 4 object and 4 background patches per image."""
    d: dict[str, tuple[list, list]] = {k: ([], []) for k in SERVES if k != "item presence"}

    def add(name, x, y):
        d[name][0].append(x)
        d[name][1].append(y)

    for f in feats:
        gh, gw = f.patches.shape[:2]
        covered = np.zeros((gh, gw), bool)
        for o in f.objects:
            x = _local(f, o["box"], image_size)
            if o["kind"] == "item":
                add("item class", x, o["name"])
            elif o["kind"] == "shape":
                add("shape colour", x, o["color"])
            elif o["kind"] == "sign":
                add("sign word", x, o["word"])
            add("object quadrant", x, _quadrant(o["box"], image_size))
            for r, c in cells_under(o["box"], (gh, gw), image_size):
                covered[r, c] = True
        add("object count", _global(f), min(len(f.objects), 8))
        for want in (True, False):
            cells = np.argwhere(covered == want)
            for r, c in cells[rng.permutation(len(cells))[:4]]:
                add("object vs ground", f.patches[r, c], "object" if want else "ground")
    out = {k: (np.asarray(x, np.float32), y) for k, (x, y) in d.items()}
    out["item presence"] = (np.asarray([_global(f) for f in feats], np.float32),
                            [[int(any(o["kind"] == "item" and o["name"] == n for o in f.objects)) for n in items]
                             for f in feats])
    return out


def _fit_score(xtr, ytr, xte, yte, balanced: bool, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
    clf.fit(xtr, ytr)
    pred = clf.predict(xte)
    return 100.0 * (balanced_accuracy_score(yte, pred) if balanced else float(np.mean(np.asarray(pred) == np.asarray(yte))))


def run_probes(train: Sequence[ImageFeatures], test: Sequence[ImageFeatures], image_size: int,
               seed: int = 0) -> list[dict]:
    """Fit every probe on ``train`` and score it on ``test``: rows of probe, serves, n_train, n_test, chance,
    majority (the most frequent train label's test accuracy), probe accuracy."""
    items = sorted({o["name"] for f in train for o in f.objects if o["kind"] == "item"})
    tr = probe_datasets(train, image_size, items, np.random.default_rng(seed))
    te = probe_datasets(test, image_size, items, np.random.default_rng(seed + 1))
    rows = []
    for name in SERVES:
        (xtr, ytr), (xte, yte) = tr[name], te[name]
        if name == "item presence":
            ytr, yte = np.asarray(ytr), np.asarray(yte)
            accs = [_fit_score(xtr, ytr[:, k], xte, yte[:, k], True, seed) for k in range(len(items))
                    if 0 < ytr[:, k].sum() < len(ytr) and 0 < yte[:, k].sum() < len(yte)]
            rows.append({"probe": name, "serves": SERVES[name], "n_train": int(len(xtr)), "n_test": int(len(xte)),
                         "metric": "balanced accuracy (mean over classes)", "chance": 50.0, "majority": 50.0,
                         "accuracy": float(np.mean(accs)) if accs else float("nan")})
            continue
        if len(set(ytr)) < 2 or not len(yte):
            continue
        balanced = name == "object vs ground"
        top = Counter(ytr).most_common(1)[0][0]
        rows.append({"probe": name, "serves": SERVES[name], "n_train": int(len(xtr)), "n_test": int(len(xte)),
                     "metric": "balanced accuracy" if balanced else "accuracy",
                     "chance": 50.0 if balanced else 100.0 / len(set(ytr)),
                     "majority": 50.0 if balanced else 100.0 * float(np.mean(np.asarray(yte) == top)),
                     "accuracy": _fit_score(xtr, ytr, xte, yte, balanced, seed)})
    return rows


def format_probe_table(rows: Sequence[dict]) -> str:
    lines = ["| probe | serves | train / test samples | chance | majority | linear probe |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['probe']} | {r['serves']} | {r['n_train']} / {r['n_test']} | {r['chance']:.1f} | "
                     f"{r['majority']:.1f} | **{r['accuracy']:.1f}** |")
    return "\n".join(lines) + "\n"
