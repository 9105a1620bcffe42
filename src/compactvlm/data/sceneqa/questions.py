"""Question families of SceneQA. Each generator reads a placed scene and returns question records
(or None when the scene cannot support the family); ``full=True`` (evaluation splits) returns the whole
set a benchmark asks (POPE: a positive and a negative per negative-sampling split; MMBench: every
circular shift; MME: the yes/no pair), ``full=False`` (training) one of them at random."""

from __future__ import annotations

import numpy as np

from .scene import Obj, Scene
from .vocab import (CANVAS, COLOUR_NAMES, ITEM_PHRASE, ITEM_PLURAL, ITEMS, LETTER, MC_KINDS, MME_CATEGORIES,
                    NUMBER_WORDS, POPULARITY, QUADRANTS, SHAPE_PLURAL, SHAPES, SHORT, UNANSWERABLE, WORDS, YES_NO,
                    cooccurrence)

LETTERS = "ABCD"
POPE_SPLITS = ("random", "popular", "adversarial")


def _qa(family: str, question: str, text: str, answer: str, n_choices: int, metric: str, *, vqa: bool = False,
        subset: str | None = None, **extra) -> dict:
    d = {"family": family, "subset": subset or family, "question": question, "text": text, "answer": answer,
         "answers": [answer] * 10 if vqa else [answer], "metric": metric, "n_choices": n_choices}
    d.update(extra)
    return d


def _pick(rng: np.random.Generator, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))] if seq else None


def _one_or_all(rng, qas: list[dict], full: bool) -> list[dict]:
    return qas if full else [qas[int(rng.integers(len(qas)))]]


def _phrase(name: str) -> str:
    return ITEM_PHRASE.get(name, name)


def _plural(name: str) -> str:
    return ITEM_PLURAL.get(name) or SHAPE_PLURAL.get(name) or name + "s"


def _countable(scene: Scene) -> list[str]:
    """Names to count, one entry per object (so larger groups are asked about more often, which keeps
    training counts from being mostly "1")."""
    return [o.name for o in scene.objects if o.kind != "sign" and 1 <= len(scene.named(o.name)) <= 4]


def _unique_shapes(scene: Scene) -> list[Obj]:
    return [o for o in scene.objects if o.kind == "shape" and len(scene.named(o.name)) == 1]


def _separated_pairs(scene: Scene) -> list[tuple[Obj, Obj, str]]:
    """(a, b, relation of a to b) for uniquely named objects whose boxes do not overlap along an axis."""
    objs = [o for o in scene.objects if scene.refname(o)]
    out = []
    for a in objs:
        for b in objs:
            if a is b:
                continue
            if a.box[2] + 2 <= b.box[0]:
                out.append((a, b, "left"))
            if a.box[3] + 2 <= b.box[1]:
                out.append((a, b, "above"))
    return out


# ----------------------------------------------------------------------------------------- families
def existence(scene: Scene, rng, spec: dict, full: bool):
    present = sorted(scene.item_names(), key=ITEMS.index)
    if not present:
        return None
    absent = [n for n in ITEMS if n not in present]
    pos = _pick(rng, present)
    negatives = {
        "random": _pick(rng, absent),
        "popular": next(n for n in POPULARITY if n in absent),
        "adversarial": max(absent, key=lambda n: (sum(cooccurrence(n, p) for p in present), -POPULARITY.index(n))),
    }
    qas = []
    for split in POPE_SPLITS:
        for name, label in ((pos, "yes"), (negatives[split], "no")):
            q = f"Is there a {_phrase(name)} in the image?"
            qas.append(_qa("existence", q, f"{q}\n{SHORT}", label, 2, "pope", subset=split))
    return _one_or_all(rng, qas, full)


def counting(scene: Scene, rng, spec: dict, full: bool):
    if spec.get("target"):
        name = spec["target"]
    else:  # an extra training turn: only groups, or most training counts would be "1" (evaluation is uniform)
        name = _pick(rng, [n for n in _countable(scene) if len(scene.named(n)) >= 2])
    if name is None or not 1 <= len(scene.named(name)) <= 4:
        return None
    q = f"How many {_plural(name)} are there in the image?"
    return [_qa("counting", q, f"{q}\n{SHORT}", str(len(scene.named(name))), 4, "vqa_accuracy", vqa=True)]


def attribute(scene: Scene, rng, spec: dict, full: bool):
    o = _pick(rng, _unique_shapes(scene))
    if o is None:
        return None
    q = f"What color is the {o.name}?"
    return [_qa("attribute", q, f"{q}\n{SHORT}", o.colour, len(COLOUR_NAMES), "exact_match")]


def spatial(scene: Scene, rng, spec: dict, full: bool):
    pairs = _separated_pairs(scene)
    if not pairs:
        return None
    a, b, rel = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:  # ask about b relative to a instead
        a, b, rel = b, a, {"left": "right", "above": "below"}[rel]
    ra, rb = scene.refname(a), scene.refname(b)
    if rel in ("left", "right"):
        q = f"Is the {ra} to the left or to the right of the {rb}?"
    else:
        q = f"Is the {ra} above or below the {rb}?"
    return [_qa("spatial", q, f"{q}\n{SHORT}", rel, 2, "exact_match")]


def ocr(scene: Scene, rng, spec: dict, full: bool):
    signs = scene.signs()
    if len(signs) != 1:
        return None
    q = _pick(rng, ("What word is written on the sign?", "What does the sign say?"))
    return [_qa("ocr", q, f"{q}\n{SHORT}", signs[0].word, len(WORDS), "vqa_accuracy", vqa=True)]


def _quadrant(o: Obj) -> str | None:
    cx, cy = o.center
    mid = CANVAS / 2
    if abs(cx - mid) < 16 or abs(cy - mid) < 16:
        return None
    return ("top " if cy < mid else "bottom ") + ("left" if cx < mid else "right")


def multiple_choice(scene: Scene, rng, spec: dict, full: bool):
    kinds = [spec["kind"]] if spec.get("kind") else list(rng.permutation(MC_KINDS))
    for kind in kinds:
        items = [o for o in scene.objects if o.kind == "item"]
        if kind == "item" and len(items) == 1:
            q, right = "Which clothing item is shown in the image?", items[0].name
            wrong = list(rng.choice([n for n in ITEMS if n != right], size=3, replace=False))
        elif kind == "color" and _unique_shapes(scene):
            o = _pick(rng, _unique_shapes(scene))
            q, right = f"What color is the {o.name}?", o.colour
            wrong = list(rng.choice([c for c in COLOUR_NAMES if c != right], size=3, replace=False))
        elif kind == "where":
            cands = [o for o in scene.objects if scene.refname(o) and _quadrant(o)]
            if not cands:
                continue
            o = _pick(rng, cands)
            q, right = f"Where is the {scene.refname(o)} in the image?", _quadrant(o)
            wrong = [x for x in QUADRANTS if x != right]
        elif kind == "word" and len(scene.signs()) == 1:
            q, right = "Which word is written on the sign?", scene.signs()[0].word
            wrong = list(rng.choice([w for w in WORDS if w != right], size=3, replace=False))
        else:
            continue
        base = [str(x) for x in rng.permutation([right, *wrong])]
        qas = []
        for s in range(len(base)):
            opts = base[s:] + base[:s]
            text = q + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(opts)) + f"\n{LETTER}"
            qas.append(_qa("multiple_choice", q, text, LETTERS[opts.index(right)], len(opts), "choice",
                           subset=kind, options=opts, shift=s))
        return _one_or_all(rng, qas, full)
    return None


def mme(scene: Scene, rng, spec: dict, full: bool):
    cats = [spec["category"]] if spec.get("category") else list(rng.permutation(MME_CATEGORIES))
    for cat in cats:
        pair = _mme_pair(cat, scene, rng, spec)
        if pair:
            qas = [_qa("mme", q, f"{q} {YES_NO}\n{SHORT}", label, 2, "mme", subset=cat)
                   for q, label in zip(pair, ("yes", "no"))]
            return _one_or_all(rng, qas, full)
    return None


def _mme_pair(cat: str, scene: Scene, rng, spec: dict) -> tuple[str, str] | None:
    if cat == "existence":
        present = sorted(scene.item_names(), key=ITEMS.index)
        if not present:
            return None
        absent = [n for n in ITEMS if n not in present]
        return tuple(f"Is there a {_phrase(n)} in this image?" for n in (_pick(rng, present), _pick(rng, absent)))
    if cat == "count":
        name = spec.get("target") or _pick(rng, _countable(scene))
        if name is None:
            return None
        k = len(scene.named(name))
        wrong = _pick(rng, [n for n in range(1, 5) if n != k])

        def ask(n):
            return (f"Is there only one {_phrase(name)} in this image?" if n == 1
                    else f"Are there {NUMBER_WORDS[n]} {_plural(name)} in this image?")
        return ask(k), ask(wrong)
    if cat == "position":
        pairs = _separated_pairs(scene)
        if not pairs:
            return None
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        ra, rb = scene.refname(a), scene.refname(b)
        if rel == "left":
            return f"Is the {ra} on the left of the {rb}?", f"Is the {ra} on the right of the {rb}?"
        return f"Is the {ra} above the {rb}?", f"Is the {ra} below the {rb}?"
    if cat == "color":
        o = _pick(rng, _unique_shapes(scene))
        if o is None:
            return None
        wrong = _pick(rng, [c for c in COLOUR_NAMES if c != o.colour])
        return f"Is the {o.name} {o.colour}?", f"Is the {o.name} {wrong}?"
    if cat == "OCR":
        if len(scene.signs()) != 1:
            return None
        w = scene.signs()[0].word
        wrong = _pick(rng, [x for x in WORDS if x != w])
        return f'Does the sign say "{w}"?', f'Does the sign say "{wrong}"?'
    return None


def unanswerable(scene: Scene, rng, spec: dict, full: bool):
    """One third of the questions cannot be answered from the image (as planned, or drawn here for
    extra training turns, so that training and evaluation share the proportion)."""
    answerable = spec.get("answerable", bool(rng.random() >= 1 / 3))
    signs, shapes = scene.signs(), _unique_shapes(scene)
    absent = [s for s in SHAPES if not scene.named(s)]
    if spec.get("kind"):
        kinds = [spec["kind"]]
    else:
        kinds = [k for k in rng.permutation(["word", "color"])]
    for kind in kinds:
        if kind == "word" and len(signs) <= 1 and bool(signs) == answerable:
            q, n = "What word is written on the sign?", len(WORDS) + 1
            answer = signs[0].word if signs else "unanswerable"
        elif kind == "color" and answerable and shapes:
            o = _pick(rng, shapes)
            q, answer, n = f"What color is the {o.name}?", o.colour, len(COLOUR_NAMES) + 1
        elif kind == "color" and not answerable and absent:
            q, answer, n = f"What color is the {_pick(rng, absent)}?", "unanswerable", len(COLOUR_NAMES) + 1
        else:
            continue
        return [_qa("unanswerable", q, f"{q}\n{UNANSWERABLE}\n{SHORT}", answer, n, "vqa_accuracy", vqa=True,
                    subset="unanswerable" if answer == "unanswerable" else "answerable")]
    return None


ASK = {"existence": existence, "counting": counting, "attribute": attribute, "spatial": spatial, "ocr": ocr,
       "multiple_choice": multiple_choice, "mme": mme, "unanswerable": unanswerable}


# ------------------------------------------------------------------------------------------- caption
def place(o: Obj) -> str:
    """Where an object is, in the words the spatial and multiple-choice questions use: 'at the top left', ...,
    'at the top' / 'on the left' when it is near the vertical / horizontal midline, 'in the centre' near both."""
    cx, cy = o.center
    mid = CANVAS / 2
    v = "" if abs(cy - mid) < 16 else ("top" if cy < mid else "bottom")
    h = "" if abs(cx - mid) < 16 else ("left" if cx < mid else "right")
    if v and h:
        return f"at the {v} {h}"
    if v:
        return f"at the {v}"
    return f"on the {h}" if h else "in the centre"


def caption(scene: Scene, phrase: str) -> str:
    """A dense caption: every object, left to right, with its colour or sign word and its place, e.g. 'A bag at
    the top left, a red circle at the bottom right and a sign saying "taxi" on the left, on a photo of a cat.'
    (Since 2026-12-02; earlier builds grouped identical objects without places: 'A bag, two red circles and a
    sign saying "taxi" on a photo of a cat.')"""
    parts = []
    for o in sorted(scene.objects, key=lambda o: (o.center[0], o.id)):
        key = (o.name if o.kind == "item" else f"{o.colour} {o.name}" if o.kind == "shape"
               else f'sign saying "{o.word}"')
        noun = _phrase(key) if key in ITEMS else key
        parts.append(("an " if noun[0] in "aeiou" else "a ") + noun + " " + place(o))
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed[0].upper()}{listed[1:]}, on a photo of {phrase}."
