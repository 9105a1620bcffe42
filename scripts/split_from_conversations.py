"""Turn LLaVA-format SceneQA conversations (e.g. held-out training images) into an evaluation split that
`compactvlm eval --split NAME` reads: DIR/NAME_questions.jsonl and DIR/NAME_answers.jsonl, one question per turn.

    python scripts/split_from_conversations.py --data data/recipe/attr_val.json --family attribute \
        --metric exact_match --n-choices 8 --dir data/recipe --split attrval

Images stay where the conversations point (paths relative to DIR). Refuses to overwrite existing split files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SUFFIXES = ("\nAnswer the question using a single word or phrase.",)


def to_split(records: list[dict], family: str, metric: str, n_choices: int, start: int = 0, stop: int | None = None):
    questions, answers = [], []
    for rec in records[start:stop]:
        conv = rec["conversations"]
        for t, (q, a) in enumerate(zip(conv[0::2], conv[1::2])):
            text = q["value"].removeprefix("<image>\n")
            bare = text
            for s in SUFFIXES:
                bare = bare.removesuffix(s)
            qid = f"{rec['id']}-{t}"
            questions.append({"question_id": qid, "image": rec["image"], "text": text, "category": family})
            answers.append({"question_id": qid, "image": rec["image"], "family": family, "subset": family,
                            "question": bare, "answer": a["value"], "answers": [a["value"]], "metric": metric,
                            "n_choices": n_choices})
    return questions, answers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--metric", default="exact_match")
    p.add_argument("--n-choices", type=int, default=0)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--dir", required=True, help="the SceneQA build folder the image paths are relative to")
    p.add_argument("--split", required=True)
    a = p.parse_args(argv)
    qf, af = Path(a.dir) / f"{a.split}_questions.jsonl", Path(a.dir) / f"{a.split}_answers.jsonl"
    if qf.exists() or af.exists():
        print(f"{qf} or {af} exists; pick another --split (nothing was overwritten)", file=sys.stderr)
        return 2
    qs, ans = to_split(json.loads(Path(a.data).read_text()), a.family, a.metric, a.n_choices, a.start, a.stop)
    qf.write_text("".join(json.dumps(r) + "\n" for r in qs))
    af.write_text("".join(json.dumps(r) + "\n" for r in ans))
    print(f"{qf}: {len(qs)} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
