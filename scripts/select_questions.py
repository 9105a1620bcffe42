"""Keep only some question turns of SceneQA training conversations (a curriculum by question family).

    python scripts/select_questions.py --data data/recipe/train.json --pattern '^What color is the [a-z-]+\\?\\nAnswer' \
        --out data/recipe/attr_train.json

A turn is kept when its question (without the leading "<image>\\n") matches --pattern (Python regex, searched);
conversations left with no turn are dropped; the first kept question gets the "<image>\\n" prefix. Prints how many
conversations and turns were kept."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

IMAGE = "<image>\n"


def select(records: list[dict], pattern: str, start: int = 0, stop: int | None = None) -> tuple[list[dict], int]:
    rx = re.compile(pattern)
    out, turns = [], 0
    for rec in records[start:stop]:
        conv = rec["conversations"]
        kept = []
        for q, a in zip(conv[0::2], conv[1::2]):
            text = q["value"].removeprefix(IMAGE)
            if rx.search(text):
                kept += [{"from": "human", "value": text}, a]
        if kept:
            kept[0] = {"from": "human", "value": IMAGE + kept[0]["value"]}
            out.append({**rec, "conversations": kept})
            turns += len(kept) // 2
    return out, turns


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="LLaVA-format JSON (e.g. data/recipe/train.json)")
    p.add_argument("--pattern", required=True, help="regex a kept question matches")
    p.add_argument("--start", type=int, default=0, help="first conversation to consider")
    p.add_argument("--stop", type=int, default=None, help="one past the last conversation to consider")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if Path(a.out).exists():
        print(f"{a.out} exists; pick a new name (nothing was overwritten)", file=sys.stderr)
        return 2
    recs, turns = select(json.loads(Path(a.data).read_text()), a.pattern, a.start, a.stop)
    Path(a.out).write_text(json.dumps(recs, ensure_ascii=False))
    print(f"{a.out}: {len(recs)} conversations, {turns} question turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
