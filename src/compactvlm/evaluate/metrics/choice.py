"""Multiple choice: reading an option letter out of free text (the project's :func:`extract_option`;
ScienceQA-IMG's and MMBench's readings under each rule set), accuracy, and MMBench's circular evaluation
(a question counts only if every circular shift of its options is answered right)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from .normalize import normalize_answer
from .rules import check_rules

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


def sqa_option(text: str, n_choices: int, rules: str = "llava") -> str | None:
    """The option letter a ScienceQA answer picks, or None (always wrong).

    ``llava`` (LLaVA's ``eval_science_qa.py``; options A-E): the stripped answer is a letter, or starts "B. ",
    or contains "The answer is B" followed by any character exactly once; the letter must be one of the
    question's options. ``lmms-eval`` (its ``scienceqa_img`` task): the stripped answer, lower-cased, is the
    letter (``b`` counts), or it starts with an upper-case character and a period (``B.``, ``B.5``)."""
    letters = LETTERS[:n_choices]
    t = str(text).strip()
    if check_rules(rules) == "lmms-eval":
        if len(t) == 1:
            return next((x for x in letters if t.lower() == x.lower()), None)
        if len(t) >= 2 and t[0].isupper() and t[1] == ".":
            return next((x for x in letters if t[0].lower() == x.lower()), None)
        return None
    valid = LLAVA_SQA_OPTIONS[:n_choices]
    if t in LLAVA_SQA_OPTIONS:
        pick = t
    elif len(t) >= 3 and t[0] in LLAVA_SQA_OPTIONS and t[1:3] == ". ":
        pick = t[0]
    else:
        found = _THE_ANSWER_IS.findall(t)
        pick = found[0] if len(found) == 1 else None
    return pick if pick is not None and pick in valid else None


def mmbench_option(text: str, options: Sequence[str] | Mapping[str, str] | int, rules: str = "llava") -> str | None:
    """The option letter an MMBench answer picks. ``llava``: :func:`extract_option`. ``lmms-eval``: its
    ``mmbench_en_dev_static`` task -- MMBench's own matching (a lone option letter, else one in a form like
    "B." / "(B)" / ":B", else exactly one option text inside the answer), else :func:`mcq_letter`."""
    if check_rules(rules) != "lmms-eval":
        return extract_option(text, options)
    opts = {k: v for k, v in _valid(options).items() if k in "ABCD"}
    t = str(text).strip()
    return _mmbench_letter(t) or _mmbench_text(t, opts) or mcq_letter(t, sorted(opts)) or None


_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
LLAVA_SQA_OPTIONS = ("A", "B", "C", "D", "E")
_MMBENCH_LETTERS = "ABCDE"
_MMBENCH_WRAPS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                  (":", ","), (":", "."), (":", ")"), (":", ")."))


def _mmbench_letter(answer: str) -> str | None:
    """MMBench's option matching on the answer's whitespace-separated words: one bare letter A-E among them
    (unless "A" is one of more than three words: it may be the article), else exactly one letter in one
    wrapping form, tried in order."""
    if "Failed to obtain answer via API" in answer:
        return None
    words = set(answer.split())

    def hits(pre: str, post: str) -> list[str]:
        return [c for c in _MMBENCH_LETTERS if pre + c + post in words]

    n_words = len(answer.split())
    bare = hits("", "")
    if len(bare) == 1 and not ("A" in words and n_words > 3):
        return bare[0]
    for pre, post in _MMBENCH_WRAPS:
        found = hits(pre, post)
        if len(found) == 1:
            return found[0]
    return None


def _mmbench_text(answer: str, options: Mapping[str, str]) -> str | None:
    low = answer.lower()
    found = [k for k, v in options.items() if str(v).lower() in low]
    return found[0] if len(found) == 1 else None


_MCQ_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
# how sure each form is that it names the answer (higher wins; then the later position)
_MCQ_RANK = {"start": 10, "end": 9, "phrase": 7, "paren": 6, "period": 5, "colon": 4, "close": 3, "space": 2,
             "any": 0}


def mcq_letter(response: str, letters: Sequence[str] = tuple("ABCDEFGH")) -> str:
    """lmms-eval's general multiple-choice reading (``extract_mcq_answer``): every place a letter appears in
    a known form -- "(B)", "B.", "B:", "B)", "B " (its last occurrence), after an answer phrase (its first
    occurrence after the phrase's first), alone at the start or end -- ranked by form, then by position;
    a letter anywhere only when none of those occurs. "" when no letter is found."""
    if not response or not response.strip():
        return ""
    letters = list(letters) or list("ABCDEFGH")
    t = response.strip()
    for ch in ",.!?;:'\"":
        t = t.strip(ch)
    t = f" {t} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for form, (pre, post) in (("paren", ("(", ")")), ("period", ("", ".")), ("colon", ("", ":")),
                              ("close", ("", ")")), ("space", ("", " "))):
        found += [(_MCQ_RANK[form], t.rfind(pre + c + post), c) for c in letters if pre + c + post in t]
    low = t.lower()
    for phrase in _MCQ_PHRASES:
        at = low.find(phrase)
        if at >= 0:
            found += [(_MCQ_RANK["phrase"], t.find(c, at + len(phrase)), c) for c in letters
                      if t.find(c, at + len(phrase)) >= 0]
    core = t.strip()
    found += [(_MCQ_RANK["start"], 0, c) for c in letters
              if core.startswith(c) and (len(core) == 1 or not core[1].isalpha())]
    found += [(_MCQ_RANK["end"], len(t) - 1, c) for c in letters
              if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha())]
    if not found:
        found = [(_MCQ_RANK["any"], t.rfind(c), c) for c in letters if c in t]
    if not found:
        return ""
    best = max(found, key=lambda f: (f[0], f[1]))
    return best[2]


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
