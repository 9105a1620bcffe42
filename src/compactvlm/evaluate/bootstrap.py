"""Test-set uncertainty of a SceneQA score: a cluster bootstrap over test images.

Seeds measure how much a score moves with the training run; this measures how much it moves with *which
questions* were asked. SceneQA's questions come in per-image groups (MME's yes/no pairs, circular
multiple-choice rotations) and questions about one image are not independent, so we resample whole images
with replacement (percentile bootstrap, Efron & Tibshirani ch. 13) and re-score every draw with the
benchmark's own scorer (``score_rows``), so MME acc+ and circular accuracy stay correct.

``paired``: the same draws score two runs' answers, giving a CI on their *difference* (row minus reference)
and on PRT; this is much tighter than comparing two separate CIs because both runs answer the same questions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import CompactVLMError
from .benchmarks.sceneqa import percent_headline, score_rows


def _aligned(rows: Sequence[dict], preds: Mapping[str, str], what: str) -> list[str]:
    missing = [r["question_id"] for r in rows if str(r["question_id"]) not in preds]
    if missing:
        raise CompactVLMError(f"{what} has no answer for {len(missing)} of {len(rows)} questions "
                              f"(e.g. {missing[:3]})", "evaluate the run on the whole test split first")
    return [str(preds[str(r["question_id"])]) for r in rows]


def _prt(c: Mapping[str, float], ref: Mapping[str, float], keys: Sequence[str] | None = None) -> float | None:
    used = [k for k in (ref if keys is None else keys) if ref.get(k) and k in c]
    return 100.0 * sum(c[k] / ref[k] for k in used) / len(used) if used else None


def resample_images(rows: Sequence[dict], by_image: Mapping[str, Sequence[int]],
                    draw: Sequence[str]) -> tuple[list[dict], list[int]]:
    """The answer records of the images in ``draw`` (repeats allowed) and their indices into ``rows``. Each copy
    of a repeated image is its own cluster: its MME pair / circular group ids get the copy's position, so
    acc+ and circular accuracy count it once per copy."""
    out, idx = [], []
    for j, img in enumerate(draw):
        for i in by_image[img]:
            r = dict(rows[i])
            if "group" in r:
                r["group"] = f"{r['group']}#{j}"
            out.append(r)
            idx.append(i)
    return out, idx


def bootstrap_sceneqa(rows: Sequence[dict], preds: Sequence[Mapping[str, str]],
                      ref_preds: Sequence[Mapping[str, str]] | None = None, n: int = 1000, seed: int = 0,
                      level: float = 0.95, prt_components: Sequence[str] | None = None) -> dict:
    """Percentile CIs for the family mean of a row (``rows``: SceneQA answer records; ``preds``: one
    question_id -> answer mapping per training seed, averaged over seeds on every draw). With ``ref_preds``
    (the reference's answers, same seeds in the same order), also the paired difference (row - reference)
    and PRT vs the reference (over ``prt_components``, e.g. the families the reference sees; None: every
    component the reference scores above 0). Returns ``{"family_mean": [lo, hi], "delta": [point, lo, hi],
    "prt": [point, lo, hi], "n": n, ...}``."""
    if n < 10:
        raise CompactVLMError(f"bootstrap needs at least 10 draws, got n={n}", "use e.g. n=1000")
    if not 0.5 < level < 1.0:
        raise CompactVLMError(f"level must be in (0.5, 1), got {level}", "use e.g. 0.95")
    if not preds:
        raise CompactVLMError("bootstrap_sceneqa got no run's answers", "pass one answer mapping per seed")
    if ref_preds is not None and len(ref_preds) != len(preds):
        raise CompactVLMError(f"{len(preds)} runs but {len(ref_preds)} reference runs",
                              "pair each seed of the row with the same seed of the reference")
    ps = [_aligned(rows, p, "the run") for p in preds]
    qs = [_aligned(rows, q, "the reference") for q in ref_preds] if ref_preds is not None else None
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_image[r["image"]].append(i)
    images = list(by_image)
    rng = random.Random(seed)

    def stats(rs: Sequence[dict], idx: Sequence[int]) -> tuple[float, float | None, float | None]:
        """(family mean, delta, PRT) averaged over seeds, for the questions ``idx`` with records ``rs``."""
        m, d, t = [], [], []
        for k, p in enumerate(ps):
            s = score_rows(rs, [p[i] for i in idx])
            m.append(s["family_mean"])
            if qs is not None:
                s_ref = score_rows(rs, [qs[k][i] for i in idx])
                d.append(s["family_mean"] - s_ref["family_mean"])
                v = _prt(s["components"], s_ref["components"], prt_components)
                if v is not None:
                    t.append(v)
        avg = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return avg(m), avg(d), (avg(t) if len(t) == len(ps) else None)

    point = stats(rows, range(len(rows)))
    means, deltas, prts = [], [], []
    for _ in range(n):
        m, d, t = stats(*resample_images(rows, by_image, rng.choices(images, k=len(images))))
        means.append(m)
        if d is not None:
            deltas.append(d)
        if t is not None:
            prts.append(t)
    ends = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]  # percentiles of the interval's ends (linear interpolation)

    def ci(xs: list[float]) -> list[float]:
        return [float(v) for v in np.percentile(xs, ends)]

    out: dict = {"n": n, "level": level, "clusters": len(images), "unit": "test image", "seeds": len(ps),
                 "family_mean": [point[0], *ci(means)]}
    if qs is not None:
        out["delta"] = [point[1], *ci(deltas)]
        out["prt"] = [point[2], *ci(prts)] if point[2] is not None and prts else None
    return out


def family_headlines(rows: Sequence[dict], preds: Sequence[str]) -> dict[str, float]:
    """Each SceneQA family's headline on the 0-100 scale (MME as a percentage of its maximum) and ``family_mean``,
    for answers ``preds`` aligned with ``rows``."""
    s = score_rows(rows, preds)
    out = {f: percent_headline(f, v) for f, v in s["families"].items()}
    out["family_mean"] = s["family_mean"]
    return out


def paired_family_deltas(rows: Sequence[dict], preds: Mapping[str, str], other: Mapping[str, str], n: int = 1000,
                         seed: int = 0, level: float = 0.95) -> dict:
    """Per SceneQA family (and the family mean): ``preds`` minus ``other`` on the same questions (e.g. real
    images minus a blind control), with a paired percentile CI from the test-image cluster bootstrap. Returns
    ``{"families": {family: {"a", "b", "delta": [point, lo, hi]}}, "family_mean": {...}, "n", "level",
    "clusters"}``; headlines on the 0-100 scale (MME as a percentage of its maximum)."""
    if n < 10:
        raise CompactVLMError(f"bootstrap needs at least 10 draws, got n={n}", "use e.g. n=1000")
    a, b = _aligned(rows, preds, "the run"), _aligned(rows, other, "the control")
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_image[r["image"]].append(i)
    images = list(by_image)

    def scores(rs: Sequence[dict], idx: Sequence[int]) -> tuple[dict[str, float], dict[str, float]]:
        return family_headlines(rs, [a[i] for i in idx]), family_headlines(rs, [b[i] for i in idx])

    pa, pb = scores(rows, range(len(rows)))
    rng = random.Random(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    for _ in range(n):
        da, db = scores(*resample_images(rows, by_image, rng.choices(images, k=len(images))))
        for k in da:
            if k in db:
                draws[k].append(da[k] - db[k])
    ends = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    res = {k: {"a": pa[k], "b": pb[k], "delta": [pa[k] - pb[k], *[float(v) for v in np.percentile(draws[k], ends)]]}
           for k in pa}
    mean = res.pop("family_mean")
    return {"families": res, "family_mean": mean, "n": n, "level": level, "clusters": len(images),
            "unit": "test image"}
