"""What the vision tokens of a checkpoint say about each object, read with the LLM's own word embeddings.

For every object of a SceneQA split, the token of the window holding the object's centre (the grounding
objective's target, train.grounding) is scored against the candidate words of each attribute: its name among the
item and shape names, a shape's colour among the colours, a sign's word among the sign words. Each candidate is
centred on the attribute's mean embedding and scored by dot product with the token; top-1 accuracy per attribute,
with the chance rate beside it. Place is read pairwise, as spatial questions ask it: for two objects of one image
whose centres differ by more than ``--min-gap`` of the image, is the token of the lower one further along
("bottom" - "top") than the higher one's (and "right" - "left" for the horizontal order)? 50 % is chance.

The same readout on a checkpoint trained without grounding tells how much of each attribute end-to-end training
put there. Tokens with several per window (STF E>1) are read at the window's first token, as the targets are.

    python scripts/grounding_readout.py runs/r4/stf-ground-place/final --data data/recipe --split test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint folder or a shipped name (demo:stf-k2e1)")
    ap.add_argument("--data", required=True, help="a SceneQA build (with <split>_scenes.jsonl)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-images", type=int, default=200)
    ap.add_argument("--min-gap", type=float, default=0.15, help="pairs whose centres differ by less are skipped")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the table as JSON here")
    a = ap.parse_args(argv)

    from compactvlm.errors import CompactVLMError

    scenes_path = Path(a.data) / f"{a.split}_scenes.jsonl"
    if not scenes_path.is_file():
        raise CompactVLMError(f"{scenes_path} not found", "pass --data <a SceneQA build> and a split it has")
    torch.set_num_threads(a.threads)

    from compactvlm.data.images import load_image
    from compactvlm.data.sceneqa.vocab import COLOURS, ITEMS, SHAPES, WORDS
    from compactvlm.model.checkpoint import load_pretrained
    from compactvlm.train.grounding import WordVectors, window_token

    scenes = [json.loads(line) for line in scenes_path.open()][: a.max_images]
    model = load_pretrained(a.checkpoint, progress=False)
    windows = model.compressor.token_windows(model.grid)
    if windows is None:
        raise CompactVLMError(f"{model.compressor.name!r} declares no token windows",
                              "read a windowed compressor (full tokens, stf, avgpool, concat)")
    wv = WordVectors(model.tokenizer, model.llm.get_input_embeddings())

    def centred(words):
        e = torch.stack([wv.word(w) for w in words])  # (K, D)
        return words, e - e.mean(0)

    vocab = {"name": centred(list(ITEMS) + list(SHAPES)), "colour": centred(list(COLOURS)), "word": centred(list(WORDS))}
    vertical = wv.word("bottom") - wv.word("top")
    horizontal = wv.word("right") - wv.word("left")
    hits = {k: [0, 0] for k in ("name", "colour", "word", "above/below", "left/right")}
    chance = {"name": 1 / len(vocab["name"][0]), "colour": 1 / len(vocab["colour"][0]),
              "word": 1 / len(vocab["word"][0]), "above/below": 0.5, "left/right": 0.5}
    norms = {"object": [], "other": []}
    object_tokens = []  # for the mean cosine between different objects' tokens (a shared component)
    root = Path(a.data)
    with torch.no_grad():
        for s in scenes:
            img = load_image(s["image"], root=root)
            w, h = img.size
            tok = model.encode_images(model.processor([img]))[0].float()  # (M, D)
            at = []
            for o in s["objects"]:
                box = [o["box"][0] / w, o["box"][1] / h, o["box"][2] / w, o["box"][3] / h]  # fractions of the image
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                k = window_token(box, windows)  # the token the grounding target goes to
                t = tok[k]  # (D,)
                at.append((cx, cy, t, k))
                object_tokens.append(t)
                for key, truth in (("name", o["name"]), ("colour", o.get("color")), ("word", o.get("word"))):
                    if truth is None:
                        continue
                    words, e = vocab[key]
                    hits[key][0] += int(words[int((e @ t).argmax())] == truth)
                    hits[key][1] += 1
            for i in range(len(at)):
                for j in range(i + 1, len(at)):
                    (xi, yi, ti, _), (xj, yj, tj, _) = at[i], at[j]
                    for key, d, delta in (("above/below", vertical, yj - yi), ("left/right", horizontal, xj - xi)):
                        if abs(delta) > a.min_gap:
                            hits[key][0] += int((float((tj - ti) @ d) > 0) == (delta > 0))
                            hits[key][1] += 1
            obj = {k for *_, k in at}
            for k in range(tok.shape[0]):
                norms["object" if k in obj else "other"].append(float(tok[k].norm()))
    table = {k: {"accuracy": round(100 * n / max(m, 1), 1), "n": m, "chance": round(100 * chance[k], 1)}
             for k, (n, m) in hits.items()}
    ot = torch.nn.functional.normalize(torch.stack(object_tokens), dim=-1) if object_tokens else torch.zeros(0, 1)
    k = ot.shape[0]
    cos = float(((ot @ ot.T).sum() - k) / max(k * (k - 1), 1))  # mean over pairs of different objects
    text_norm = float(model.llm.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())
    result = {"checkpoint": str(a.checkpoint), "data": a.data, "split": a.split, "images": len(scenes),
              "readout": table, "object_token_cosine": round(cos, 3), "token_norm": {k: round(sum(v) / max(len(v), 1), 2) for k, v in norms.items()}
              | {"text": round(text_norm, 2)}}
    print(f"{'attribute':<12} {'top-1 %':>8} {'chance %':>9} {'n':>6}")
    for k, v in table.items():
        print(f"{k:<12} {v['accuracy']:>8.1f} {v['chance']:>9.1f} {v['n']:>6}")
    print(f"mean cosine between different objects' tokens: {cos:.3f}")
    print("token norm: object windows {object}, other {other}, text embeddings {text}".format(**result["token_norm"]))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
