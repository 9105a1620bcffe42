"""Which words of a dense caption does a model read from the image? Per-word-kind caption loss with the real image
and with another image (shuffled across samples, no sample keeps its own), on held-out captions.

    python scripts/caption_gap_by_word.py --checkpoint runs/recipe/stf-s1/final --data data/recipe [--n 64] [--json F]
        [--captions data/recipe/caption_val_nobg.json]   # another held-out caption file (default DATA/caption_val.json)

Kinds: colour, object (item or shape name), place (left/right/top/bottom/centre), sign word, background (the words
after "on a photo of"), other (articles, "and", "at the", punctuation). A model that reads the objects has a large
real-vs-shuffled gap on colour/object/place; one that only recognises the background photo has it on background.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PLACES = {"left", "right", "top", "bottom", "centre", "center", "middle"}


def word_kinds(text_words: list[str]) -> list[str]:
    from compactvlm.data.sceneqa.vocab import COLOUR_NAMES, ITEMS, SHAPES, WORDS

    items = {w for it in ITEMS for w in it.replace("-", " ").split()} | {"t-shirt", "trousers", "pair"}
    kinds, background = [], False
    for i, raw in enumerate(text_words):
        w = raw.strip(' .,"').lower()
        if background:
            kinds.append("background")
        elif w in COLOUR_NAMES:
            kinds.append("colour")
        elif w in SHAPES or w in items or w.rstrip("s") in items:
            kinds.append("object")
        elif w in PLACES:
            kinds.append("place")
        elif w in WORDS and i > 0 and text_words[i - 1].strip(' "').lower() == "saying":
            kinds.append("sign word")
        else:
            kinds.append("other")
        if w == "of" and i > 1 and text_words[i - 1].strip().lower() == "photo":
            background = True
    return kinds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a SceneQA build with caption_val.json")
    p.add_argument("--captions", default=None, help="held-out captions (default DATA/caption_val.json)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    src = Path(a.captions) if a.captions else Path(a.data) / "caption_val.json"
    if not src.exists():
        sys.exit(f"{src} is missing: build the data with --caption N (builds since 2026-12-02 write caption_val.json)")

    import torch
    import torch.nn.functional as F

    from compactvlm.data.llava import IGNORE_INDEX, LlavaDataset
    from compactvlm.model.checkpoint import load_pretrained

    torch.set_num_threads(a.threads)
    model = load_pretrained(a.checkpoint, progress=False).eval()
    tok = model.tokenizer
    ds = LlavaDataset(src, tok, model.num_image_tokens(), model.processor, system_prompt=model.system_prompt,
                      max_samples=a.n)
    n = len(ds)
    perm = [(i + 1) % n for i in range(n)]  # no fixed points
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(n):
            ids, labels = ds.tokenize(i)
            ids_t = torch.tensor([ids])
            lab = torch.tensor(labels[1:])
            pos = (lab != IGNORE_INDEX).nonzero().flatten()
            pieces = [tok.decode([int(t)]) for t in lab[pos]]
            # words: a piece starting with a space (or the first piece) starts a new word
            word_of, words = [], []
            for pc in pieces:
                if not words or pc.startswith(" ") or pc in {",", "."}:
                    words.append(pc)
                else:
                    words[-1] += pc
                word_of.append(len(words) - 1)
            kinds = word_kinds(words)
            losses = {}
            for cond, j in (("real", i), ("shuffled", perm[i])):
                pix = ds[j]["pixel_values"][None]
                emb = model.merge(ids_t, model.encode_images(pix))
                logits = model.llm(inputs_embeds=emb).logits[0, :-1][pos]  # (N, V)
                losses[cond] = F.cross_entropy(logits.float(), lab[pos], reduction="none")
            for k, (r, s) in enumerate(zip(losses["real"].tolist(), losses["shuffled"].tolist())):
                acc = sums.setdefault(kinds[word_of[k]], [0.0, 0.0, 0])
                acc[0] += r
                acc[1] += s
                acc[2] += 1
    total = sum(v[2] for v in sums.values())
    rows = {k: {"tokens": v[2], "share": v[2] / total, "real": v[0] / v[2], "shuffled": v[1] / v[2],
                "gap": (v[1] - v[0]) / v[2], "gap_share": (v[1] - v[0]) / max(sum(x[1] - x[0] for x in sums.values()), 1e-9)}
            for k, v in sorted(sums.items())}
    print(f"{a.checkpoint}: {n} held-out captions, {total} caption tokens; nats per token")
    print(f"{'kind':<11} {'tokens':>6} {'real':>7} {'shuffled':>8} {'gap':>7} {'share of gap':>12}")
    for k, r in rows.items():
        print(f"{k:<11} {r['tokens']:>6} {r['real']:>7.3f} {r['shuffled']:>8.3f} {r['gap']:>+7.3f} {r['gap_share']:>12.1%}")
    if a.json:
        Path(a.json).write_text(json.dumps({"checkpoint": str(a.checkpoint), "captions": n, "kinds": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
