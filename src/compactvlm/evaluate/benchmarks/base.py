"""What every benchmark reader shares: the uniform :class:`EvalItem`, the :class:`Benchmark` base class,
the ``BENCHMARKS`` registry and small file helpers.

A reader turns a benchmark folder laid out as LLaVA's ``playground/data/eval/<name>`` into a list of
``EvalItem`` (``items()``), scores predictions with the benchmark's official metric (``score()``), and
may write the files an evaluation server wants (``export()``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CompactVLMError
from ..metrics.rules import DEFAULT_RULES, check_rules
from ..metrics.vqa import vqa_score

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."

BENCHMARKS: dict[str, type[Benchmark]] = {}


def register(name: str):
    """Class decorator: ``@register("gqa")``. (A plain dict, not ``compactvlm.registry``, so that reading
    benchmarks does not import torch through the compressor registry.)"""

    def deco(cls):
        if name in BENCHMARKS and BENCHMARKS[name] is not cls:
            raise RuntimeError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = cls
        return cls

    return deco


@dataclass
class EvalItem:
    """One question. ``prompt`` is the full text given to the model (no ``<image>`` token; the model
    places the image). ``answers`` is the ground truth (empty where it is not public); ``meta`` holds
    what the scorer needs (split, options, pair/group ids, ...)."""

    question_id: str | int
    image_path: str | None
    prompt: str
    category: str = "default"
    answers: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.question_id)

    def load_image(self):
        """The image as an RGB PIL image."""
        from ...data.images import load_image  # EXIF orientation, 16-bit/float modes, clear errors

        if not self.image_path:
            raise CompactVLMError(f"question {self.question_id!r} has no image", "skip text-only questions")
        return load_image(self.image_path)

    def to_dict(self) -> dict:
        return asdict(self)


class Benchmark:
    """Base class of the readers. Subclasses set ``name``, ``headline`` (the metric tables and PRT use)
    and implement ``load_items`` and ``score``."""

    name: str = ""
    headline: str | None = None
    rules: str = DEFAULT_RULES  # the scoring rule set (metrics.rules); get_benchmark(..., rules=) sets it

    def __init__(self, data_dir: str | Path, image_dir: str | Path | None = None):
        self.data_dir = Path(data_dir).expanduser()
        if not self.data_dir.is_dir():
            raise CompactVLMError(f"benchmark folder not found: {self.data_dir}",
                                  f"pass the folder that holds the {self.name or 'benchmark'} files")
        self.image_dir = Path(image_dir).expanduser() if image_dir else None
        self._items: list[EvalItem] | None = None

    # -- to implement -------------------------------------------------------------------------------
    def load_items(self) -> list[EvalItem]:
        raise NotImplementedError

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str] | Sequence[str]) -> dict:
        raise NotImplementedError

    def export(self, items: Sequence[EvalItem], predictions: Mapping[str, str] | Sequence[str],
               out_dir: Path) -> list[Path]:
        """Write submission/prediction files in the benchmark's own format; returns the paths."""
        return []

    def baselines(self, items: Sequence[EvalItem]) -> dict[str, tuple[float, float | None]] | None:
        """What guessing scores on ``items``, per component: (chance, majority or None) in the component's headline
        units; None where the benchmark does not know (the default)."""
        return None

    # -- shared ------------------------------------------------------------------------------------
    def items(self) -> list[EvalItem]:
        if self._items is None:
            try:
                items = self.load_items()
            except UnicodeDecodeError as e:
                raise CompactVLMError(f"{self.name}: a file in {self.data_dir} is not UTF-8 text ({e.reason})", "re-save the benchmark files as UTF-8, or re-download them") from None
            except (KeyError, TypeError, AttributeError, IndexError) as e:  # a row without a field the reader needs
                what = f"missing {e.args[0]!r}" if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: {e}"
                raise CompactVLMError(
                    f"{self.name}: the files in {self.data_dir} are incomplete or malformed ({what}; e.g. a question "
                    "without its answer row, or a row without a field the benchmark needs)",
                    "rebuild or re-download the benchmark folder so every question has its answer and every row "
                    "its fields") from None
            self._items = unique_ids(items)
        return self._items

    def check_image_paths(self, items: Sequence[EvalItem]) -> None:
        """The one image-root rule (``data.images.resolve_in_root``) for every item, before any model load:
        images are read only from inside the data folder (or ``image_dir``); symlinks inside it are followed."""
        from ...data.images import resolve_in_root

        root = self.image_dir if self.image_dir is not None else self.data_dir
        for it in items:
            if it.image_path:
                resolve_in_root(Path.cwd() / it.image_path, root, where=f" of question {it.question_id!r}")
        return None

    def find(self, *candidates: str, what: str = "file") -> Path:
        """The first of ``candidates`` (relative to the data folder) that exists."""
        for c in candidates:
            p = self.data_dir / c
            if p.exists():
                return p
        raise CompactVLMError(
            f"{self.name}: no {what} in {self.data_dir} (looked for {', '.join(candidates)})",
            f"lay the folder out like LLaVA's playground/data/eval/{self.name} or pass the right --data",
        )

    def images_in(self, *candidates: str) -> Path:
        """The image folder: ``image_dir`` if given, else the first candidate that exists (else the first,
        LLaVA's usual place, so that a missing image is reported where it was expected)."""
        if self.image_dir is not None:
            return self.image_dir
        for c in candidates:
            p = self.data_dir / c
            if p.is_dir():
                return p
        return self.data_dir / candidates[0] if candidates else self.data_dir


def unique_ids(items: list[EvalItem]) -> list[EvalItem]:
    """Make question ids unique (some LLaVA files reuse an id, e.g. the image id): later repeats get '#k'."""
    seen: dict[str, int] = {}
    for it in items:
        k = it.key
        if k in seen:
            seen[k] += 1
            it.meta.setdefault("original_question_id", it.question_id)
            it.question_id = f"{k}#{seen[k]}"
        else:
            seen[k] = 0
    return items


def predictions_for(items: Sequence[EvalItem], predictions: Mapping[str, str] | Sequence[str]) -> tuple[list[str], int]:
    """Predictions aligned with ``items`` (missing ones become "" and count as wrong) and how many were missing."""
    if isinstance(predictions, Mapping):
        preds = {str(k): v for k, v in predictions.items()}
        out = [preds.get(it.key) for it in items]
    else:
        if len(predictions) != len(items):
            raise CompactVLMError(f"{len(predictions)} predictions for {len(items)} questions",
                                  "pass one prediction per item, or a question_id -> answer mapping")
        out = list(predictions)
    missing = sum(p is None for p in out)
    return ["" if p is None else str(p) for p in out], missing


def score_vqa_or_upload(bench: Benchmark, items: Sequence[EvalItem], predictions, task: str | None = None) -> dict:
    """VQA accuracy (``bench.rules``) over the items that carry answers; when none do (a test split whose answers
    only the evaluation server holds), a "not scored" record that points at the upload file ``export`` writes."""
    preds, missing = predictions_for(items, predictions)
    have = [i for i, it in enumerate(items) if it.answers]
    if not have:
        return with_headline(None, {"rules": bench.rules, "n": len(items), "missing": missing, "scored": False,
                                    "note": "answers not public: upload answers_upload.json to EvalAI"})
    out = vqa_score([preds[i] for i in have], [items[i].answers for i in have], rules=bench.rules, task=task)
    out.update(missing=missing, scored=True)
    return with_headline(bench.headline, out, bench.rules)


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CompactVLMError(f"{path}:{n} is not valid JSON ({e.msg})", "fix or re-download the file")
    return rows


def read_text(path: Path) -> str:
    """A benchmark file as UTF-8 text, with a clear error for another encoding (or a folder / loop)."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise CompactVLMError(f"{path} is a folder, not a file", "lay the benchmark folder out as its reader expects") from None
    except OSError as e:
        raise CompactVLMError(f"cannot read {path}: {e.strerror or e}", "check the file and its permissions") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CompactVLMError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                              "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or re-download it") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise CompactVLMError(f"{path} is not valid JSON ({e.msg})", "fix or re-download the file")


def question_text(prompt: str) -> str:
    """The question of a LLaVA prompt: its first line (instructions and OCR hints follow on later lines)."""
    return prompt.split("\n")[0].strip()


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
    tmp.replace(path)
    return path


def get_benchmark(name: str, data_dir: str | Path, **kwargs: Any) -> Benchmark:
    """A reader by name (``compactvlm.evaluate.list_benchmarks()`` lists them)."""
    from . import _load_all

    _load_all()
    if name not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(name, list(BENCHMARKS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CompactVLMError(f"unknown benchmark {name!r}", f"{hint}available: {', '.join(sorted(BENCHMARKS))}")
    cls = BENCHMARKS[name]
    rules = check_rules(kwargs.pop("rules", None))
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    bad = sorted(k for k in kwargs if k not in accepted)
    if bad:
        takes = sorted(n for n, c in BENCHMARKS.items() if all(k in inspect.signature(c.__init__).parameters for k in bad))
        raise CompactVLMError(f"benchmark {name!r} has no {', '.join(bad)} option",
                              f"leave it out (only {', '.join(takes) or 'no benchmark'} take it)")
    reader = cls(data_dir=data_dir, **kwargs)
    reader.rules = rules
    return reader


def list_benchmarks() -> list[str]:
    from . import _load_all

    _load_all()
    return sorted(BENCHMARKS)


def with_headline(name: str | None, metrics: dict, rules: str | None = None) -> dict:
    """Add ``headline`` / ``headline_metric`` (the number tables and PRT use) and the scoring ``rules`` to a
    score dict."""
    if rules is not None:
        metrics["rules"] = rules
    metrics["headline_metric"] = name
    metrics["headline"] = _dig(metrics, name) if name else None
    return metrics


def _dig(d: dict, dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def iter_batches(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
