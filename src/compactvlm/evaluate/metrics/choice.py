"""Multiple choice: reading an option letter out of free text, ScienceQA-IMG's strict reading and
accuracy, and MMBench's circular evaluation (a question counts only if every circular shift of its
options is answered right)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from .normalize import normalize_answer

LETTERS = "ABCDEFGHIJ"


def _valid(options: Sequence[str] | Mapping[str, str] | int) -> dict[str, str]:
    if isinstance(options, int):
        return {LETTERS[i]: "" for i in range(options)}
    if isinstance(options, Mapping):
        return {str(k): str(v) for k, v in options.items()}
    return {LETTERS[i]: str(o) for i, o in enumerate(options)}


def extract_option(text: str, options: Sequence[str] | Mapping[str, str] | int) -> str | None:
    """The option letter a free-form answer picks, or None when it picks none or several.

    ``options``: the option texts in letter order, a letter -> text mapping, or just their number.
    Tried in order: the answer is an option's text; it starts with a bare letter ("B", "B.", "(B)",
    "B)"); "answer/option is B"; exactly one option text occurs in it; exactly one standalone
    capital option letter occurs in it (a leading article "A " is not read as option A).
    """
    opts = _valid(options)
    t = str(text).strip()
    if not t:
        return None
    norm = normalize_answer(t)
    by_text = [k for k, v in opts.items() if v and normalize_answer(v) == norm]
    if len(by_text) == 1:
        return by_text[0]
    m = re.match(r"^\(?([A-J])\)?(?:[.:)]|$)", t)
    if m and m.group(1) in opts:
        return m.group(1)
    m = re.search(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\)?(?![A-Za-z])", t, flags=re.IGNORECASE)
    if m and m.group(1).upper() in opts and m.group(1).isupper():
        return m.group(1)
    hits = [k for k, v in opts.items()
            if v and re.search(rf"(?<![a-z0-9]){re.escape(normalize_answer(v))}(?![a-z0-9])", norm)]
    if len(hits) == 1:
        return hits[0]
    body = t[2:] if re.match(r"^A [a-z]", t) else t  # "A bag" is an article, not option A
    letters = {x for x in re.findall(r"(?<![A-Za-z])([A-J])(?![A-Za-z])", body) if x in opts}
    if len(letters) == 1:
        return letters.pop()
    return None


def sqa_option(text: str, n_choices: int) -> str | None:
    """LLaVA's ScienceQA reading: the whole answer is a letter, or it starts "B. ", or says
    "The answer is B"; anything else fails (returns None)."""
    letters = LETTERS[:n_choices]
    t = str(text).replace("\n", ". ")
    s = t.strip()
    if s in letters:
        return s
    if len(t) >= 3 and t[0] in letters and t[1:3] == ". ":
        return t[0]
    m = re.search(r"The answer is ([A-J])", t)
    if m and m.group(1) in letters:
        return m.group(1)
    return None


def option_accuracy(picked: Sequence[str | None], answers: Sequence[str]) -> dict:
    if len(picked) != len(answers):
        raise ValueError(f"{len(picked)} predictions for {len(answers)} questions")
    hits = [p is not None and p == a for p, a in zip(picked, answers)]
    return {"accuracy": 100.0 * sum(hits) / len(hits) if hits else 0.0, "n": len(hits),
            "unparsed": sum(p is None for p in picked)}


def circular_accuracy(picked: Sequence[str | None], answers: Sequence[str], groups: Sequence,
                      categories: Sequence[str] | None = None) -> dict:
    """MMBench CircularEval: a group (one question, all its option shifts) is right only if every
    member is right. Also reports the first-pass accuracy (the first member of each group)."""
    if not (len(picked) == len(answers) == len(groups)):
        raise ValueError("picked, answers and groups must have the same length")
    members: dict = defaultdict(list)
    first: dict = {}
    cat_of: dict = {}
    for i, (p, a, g) in enumerate(zip(picked, answers, groups)):
        hit = p is not None and p == a
        members[g].append(hit)
        first.setdefault(g, hit)
        if categories is not None:
            cat_of.setdefault(g, categories[i])
    n = len(members)
    out: dict = {
        "circular_accuracy": 100.0 * sum(all(v) for v in members.values()) / n if n else 0.0,
        "vanilla_accuracy": 100.0 * sum(first.values()) / n if n else 0.0,
        "n_questions": n, "n": len(picked),
    }
    if categories is not None:
        per: dict = defaultdict(list)
        for g, v in members.items():
            per[cat_of[g]].append(all(v))
        out["per_category"] = {c: 100.0 * sum(v) / len(v) for c, v in sorted(per.items())}
    return out
