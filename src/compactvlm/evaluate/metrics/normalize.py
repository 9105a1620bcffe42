"""Answer normalisation of the VQA evaluation (VQAv2 / TextVQA / VizWiz), written from its description.

:func:`normalize_answer` is the EvalAI answer processor (the one LLaVA's ``m4c_evaluator``, the VQAv2 /
VizWiz servers and lmms-eval's TextVQA / VizWiz tasks apply to the prediction and every human answer):

1. lower-case; drop ``,`` and ``?``; split the possessive ``'s`` off its word; newlines/tabs -> spaces.
2. :func:`vqa_punctuation`: each mark in ``PUNCTUATION`` is deleted when it touches a space (or the
   answer has a digit-commas-digit group) and replaced by a space otherwise (``t-shirt`` -> ``t shirt``);
   then periods not followed by a digit are deleted -- the first 32 only: the processor passes
   ``re.UNICODE`` (= 32) where ``re.sub`` takes its replacement count.
3. :func:`vqa_digits_articles`: lower-case, split on whitespace, number words zero..ten -> digits
   (``none`` -> ``0``), articles a/an/the dropped, then each word looked up verbatim in the processor's
   contraction table (:data:`CONTRACTIONS`).

The contraction table, as the processor has it: every key is its contraction with exactly one apostrophe
dropped (``dont`` -> ``don't``; ``hadnt've`` and ``hadn'tve`` -> ``hadn't've``; ``twas`` -> ``'twas``). Its
keys for ``I'm``, ``I've`` and ``I'd've`` are capitalised (``Im``) and so never match a lower-cased word;
``she's`` and ``let's`` map to themselves (so ``shes`` and ``lets`` are left alone); one entry is reversed
(``somebody'd`` -> ``somebodyd``). The VQAv2 evaluation script (lmms-eval's ``vqav2`` task) runs steps 2-3
without step 1: :func:`vqa_eval_normalize`.
"""

from __future__ import annotations

import functools
import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# The contractions the processor restores, grouped by how many apostrophes they have.
_ONE = """ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll
how's I'm I've isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't
should've shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll that's there'd
there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're what's what've when's
where'd where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all you'd you'll
you're you've"""
_SEVERAL = """couldn't've hadn't've he'd've I'd've it'd've mightn't've she'd've shouldn't've somebody'd've
someone'd've something'd've there'd've they'd've we'd've who'd've wouldn't've y'all'll y'all'd've you'd've 'ow's'at"""
# entries that are not "one apostrophe dropped": identities (no effect) and one reversed entry
_ODD = {"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"}


def _contractions() -> dict[str, str]:
    table: dict[str, str] = {}
    for full in (_ONE + " " + _SEVERAL).split():
        cuts = [i for i, ch in enumerate(full) if ch == "'"]
        for i in cuts:  # drop exactly one of its apostrophes
            table[full[:i] + full[i + 1:]] = full
    table.update(_ODD)
    return table


CONTRACTIONS = _contractions()
_DIGIT_COMMAS_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
PERIOD_LIMIT = 32  # the processor's re.sub(..., count=re.UNICODE)


def vqa_punctuation(text: str) -> str:
    """Step 2: punctuation marks deleted or spaced, then (at most 32) periods not before a digit deleted."""
    out = text
    strip_all = _DIGIT_COMMAS_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=PERIOD_LIMIT)


def vqa_digits_articles(text: str) -> str:
    """Step 3: number words -> digits, articles dropped, contractions restored."""
    words = []
    for w in text.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Normalise one answer as the EvalAI processor does (see the module docstring)."""
    return _normalize(str(answer))


@functools.lru_cache(maxsize=1 << 16)  # a pure function of the string; re-scoring (bootstrap) repeats answers
def _normalize(answer: str) -> str:
    t = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digits_articles(vqa_punctuation(t))


@functools.lru_cache(maxsize=1 << 16)
def vqa_eval_normalize(answer: str) -> str:
    """The VQAv2 evaluation script's normalisation: newlines/tabs -> spaces, strip, then steps 2 and 3 (no
    lower-casing before punctuation, no ``,``/``?`` pre-removal, no ``'s`` split)."""
    t = str(answer).replace("\n", " ").replace("\t", " ").strip()
    return vqa_digits_articles(vqa_punctuation(t))
