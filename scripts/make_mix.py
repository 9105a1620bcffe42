"""Mix SceneQA instruction conversations with dense captions for stage 2 (docs/recipe.md, §5).

    python scripts/make_mix.py --data data/recipe --qa 4200 --captions 4400:5800 --out data/recipe/mix2_train.json

Takes the first ``--qa`` conversations of DATA/train.json and the captions DATA/caption.json[START:STOP] (pick a range
stage 1 did not train on: stage 1 reads the first ``data.max_samples`` captions), shuffles them together with
``--seed`` and writes one LLaVA-format JSON (``compactvlm.data.mix``; the study's ``data.mix`` does the same).
Refuses to overwrite an existing file unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compactvlm.data.mix import write_mix
from compactvlm.errors import CompactVLMError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a SceneQA build folder (holds train.json and caption.json)")
    p.add_argument("--qa", type=int, required=True, help="number of instruction conversations from train.json")
    p.add_argument("--captions", required=True, help="START:STOP range of caption.json")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    a = p.parse_args(argv)
    try:
        start, stop = (int(x) for x in a.captions.split(":"))
    except ValueError:
        p.error(f"--captions must be START:STOP (e.g. 4400:5800), got {a.captions!r}")
    out = Path(a.out)
    if out.exists() and not a.force:
        p.error(f"{out} exists: pass --force to overwrite it or choose another --out")
    try:
        write_mix(a.data, out, a.qa, (start, stop), a.seed)
    except CompactVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: {a.qa} QA conversations + {stop - start} captions, shuffled with seed {a.seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
