"""Instruction conversations mixed with dense captions: stage 2 of the recipe that makes the testbed see
(docs/recipe.md). Stage 1 trains on the first captions of a SceneQA build; stage 2 keeps the image pathway in use by
mixing captions stage 1 did not see into the instruction data, so that answering from priors never lowers all of
the loss. Used by ``scripts/make_mix.py`` and by the study's ``data.mix``."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import CompactVLMError


def mix_records(data_dir: str | Path, qa: int, captions: tuple[int, int], seed: int = 0) -> list[dict]:
    """The first ``qa`` conversations of DATA/train.json and DATA/caption.json[start:stop], shuffled with ``seed``
    (LLaVA-format records; image paths stay relative to ``data_dir``)."""
    d = Path(data_dir)
    start, stop = (int(c) for c in captions)
    if qa < 0 or not 0 <= start <= stop:
        raise CompactVLMError(f"a mix needs qa >= 0 and 0 <= start <= stop, got qa={qa}, captions {start}:{stop}",
                              "e.g. qa=4200, captions 4400:5800")
    need = (["train.json"] if qa else []) + (["caption.json"] if stop > start else [])
    missing = [n for n in need if not (d / n).exists()]
    if missing:
        raise CompactVLMError(f"{d} has no {', '.join(missing)}",
                              "build it first: compactvlm data build sceneqa --out DIR --caption N --train N ...")
    conv = json.loads((d / "train.json").read_text()) if qa else []
    caps = json.loads((d / "caption.json").read_text()) if stop > start else []
    if qa > len(conv) or (stop > start and stop > len(caps)):
        raise CompactVLMError(f"the mix asks for {qa} QA conversations and captions {start}:{stop}; {d} has "
                              f"{len(conv)} and {len(caps)}", "build more (--train / --caption) or shrink the mix")
    mix = conv[:qa] + caps[start:stop]
    random.Random(seed).shuffle(mix)
    return mix


def write_mix(data_dir: str | Path, out: str | Path, qa: int, captions: tuple[int, int], seed: int = 0) -> Path:
    """Write :func:`mix_records` to ``out`` atomically (a temporary file, then a rename)."""
    out = Path(out)
    mix = mix_records(data_dir, qa, captions, seed)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(mix, ensure_ascii=False))
    tmp.replace(out)
    return out
