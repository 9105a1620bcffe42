"""Answer normalisation of the VQA evaluation (VQAv2 / TextVQA / VizWiz), written from its description.

Steps, in order (the EvalAI answer processor that LLaVA's TextVQA evaluator and the VQAv2 / VizWiz
servers apply to both the prediction and every human answer):

1. lower-case; drop ``,`` and ``?``; split the possessive ``'s`` off its word; newlines/tabs -> spaces.
2. punctuation: each mark in ``PUNCTUATION`` is deleted when it touches a space (or the answer has a
   digit-comma-digit group) and replaced by a space otherwise (``t-shirt`` -> ``t shirt``);
   then a period is deleted unless a digit follows it (``3.5`` stays, ``dog.`` -> ``dog``).
3. words: number words zero..ten -> digits (``none`` -> ``0``), articles a/an/the dropped, and
   apostrophe-less contractions restored (``dont`` -> ``don't``).

Deviation: the official script only normalises the human answers when they disagree (its annotation
files are already normalised); normalising both always gives the same result on those files.
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


def _contractions() -> dict[str, str]:
    """Apostrophe-less spellings -> the contraction (``dont`` -> ``don't``), built from word lists."""
    table: dict[str, str] = {}
    for stem in ("ain", "aren", "can", "couldn", "didn", "doesn", "don", "hadn", "hasn", "haven", "isn",
                 "mightn", "mustn", "needn", "shan", "shouldn", "wasn", "weren", "won", "wouldn"):
        table[stem + "t"] = stem + "'t"
    for stem in ("could", "should", "would", "might", "must", "i", "you", "we", "they", "who"):
        table[stem + "ve"] = stem + "'ve"
    for stem in ("you", "they", "what", "who"):
        table[stem + "re"] = stem + "'re"
    for stem in ("you", "they", "she", "he", "it", "we"):
        table[stem + "ll"] = stem + "'ll"
    for stem in ("what", "where", "who", "that", "there", "here", "how", "she", "he", "let", "somebody",
                 "someone", "something", "everyone", "nobody"):
        table[stem + "s"] = stem + "'s"
    for stem in ("you", "they", "she", "he", "we"):
        table[stem + "d"] = stem + "'d"
    table.update({"im": "i'm", "ive": "i've", "yall": "y'all", "oclock": "o'clock", "maam": "ma'am",
                  "couldntve": "couldn't've", "wouldntve": "wouldn't've", "shouldntve": "shouldn't've"})
    for word in ("wed", "shed", "shell", "hell", "well", "were", "its"):  # real words: leave them alone
        table.pop(word, None)
    return table


CONTRACTIONS = _contractions()
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _punctuation(text: str) -> str:
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _words(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w not in ARTICLES:
            words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """Normalise one answer the way the VQA evaluation does (see the module docstring)."""
    return _normalize(str(answer))


@functools.lru_cache(maxsize=1 << 16)  # a pure function of the string; re-scoring (bootstrap) repeats answers
def _normalize(answer: str) -> str:
    t = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(t))
