"""Oracle vision tokens: can the LLM side learn to answer SceneQA questions when the vision tokens are *given* the
objects' word embeddings (the grounding objective's targets: "green"+"circle" in the token of the window holding
the circle's centre, zeros elsewhere)? Trains the LLM (full, lr 2e-5) and a linear map on such tokens with the
answer-only loss, reports the validation loss with each sample's own oracle tokens and with another sample's
(the blindness gauge), and at the end the SceneQA test split with real and shuffled oracle tokens.

    python scripts/oracle_tokens.py --data data/recipe --train data/recipe/train.json --val data/recipe/val.json \
        --steps 150 --out results/recipe/oracle-tokens-all.jsonl

This is a diagnostic (docs/recipe.md §9), not a model: the tokens come from the scene annotations, not the image.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/recipe", help="the SceneQA build (scene annotations, test split)")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-5, help="LLM learning rate (the linear map: 2e-4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grid", type=int, default=8, help="token windows per side (8: STF k=2's 64 tokens)")
    p.add_argument("--place", choices=["false", "true", "centred"], default="false",
                   help="place words in the oracle tokens, as the grounding stage's grounding_place (true: "
                        "top/bottom/left/right mixed by the centre's position; centred: relative to the image centre)")
    p.add_argument("--no-test", action="store_true", help="skip the test-split evaluation at the end")
    p.add_argument("--out", required=True, help="JSONL of validation points (and the test result)")
    a = p.parse_args(argv)
    if Path(a.out).exists():
        print(f"{a.out} exists; pick a new name (nothing was overwritten)", file=sys.stderr)
        return 2

    from PIL import Image

    from compactvlm.data.llava import LlavaDataset, collate_llava
    from compactvlm.data.sceneqa.masks import scene_objects
    from compactvlm.evaluate.harness import evaluate
    from compactvlm.model.build import ModelConfig, build_model
    from compactvlm.train.grounding import WordVectors, window_targets

    place = {"false": False, "true": True, "centred": "centred"}[a.place]
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(ModelConfig(compressor="stf", compressor_params={"k": 2, "E": 1}, system_prompt=""),
                        progress=False)
    tok, llm = model.tokenizer, model.llm
    vectors = WordVectors(tok, llm.get_input_embeddings())
    dim = llm.get_input_embeddings().embedding_dim
    data = Path(a.data)
    size = model.processor.size

    def oracle(image: str) -> torch.Tensor:  # (G*G, D)
        return window_targets(scene_objects(data, image, (size, size)), (a.grid, a.grid, 1), vectors, dim, place)[0]

    n_tok = a.grid * a.grid
    ds = LlavaDataset(a.train, tok, n_tok, model.processor, system_prompt="", max_length=768, check_images=False)
    vs = LlavaDataset(a.val, tok, n_tok, model.processor, system_prompt="", max_samples=200, max_length=768,
                      check_images=False)

    def batch(dset, idx, images_of=None):
        items = []
        for i in idx:
            ids, labels = dset.tokenize(i)
            items.append({"index": i, "input_ids": ids, "labels": labels, "pixel_values": torch.zeros(3, 1, 1)})
        b = collate_llava(items, tok.pad_token_id)
        b["vis"] = torch.stack([oracle(dset.records[j]["image"]) for j in (images_of or idx)])  # (B, G*G, D)
        return b

    proj = torch.nn.Linear(dim, dim)
    torch.nn.init.eye_(proj.weight)
    torch.nn.init.zeros_(proj.bias)
    opt = torch.optim.AdamW([{"params": list(proj.parameters()), "lr": 2e-4},
                             {"params": list(llm.parameters()), "lr": a.lr}], weight_decay=0.0)
    base = [g["lr"] for g in opt.param_groups]

    def loss_of(b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = model.merge(b["input_ids"], proj(b["vis"]))
            return llm(inputs_embeds=x, attention_mask=b["attention_mask"], position_ids=b["position_ids"],
                       labels=b["labels"]).loss

    def val() -> dict:
        llm.eval()
        n = len(vs)
        idx = list(range(n))
        other = [(i + n // 2) % n for i in idx]  # the trainer's shuffled control: a permutation without fixed points
        out = {}
        with torch.no_grad():
            for name, img in (("real", idx), ("shuffled", other)):
                ls = [float(loss_of(batch(vs, idx[i:i + 16], img[i:i + 16]))) for i in range(0, n, 16)]
                out[name] = sum(ls) / len(ls)
        llm.train()
        return out

    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    t0 = time.time()
    with open(a.out, "w") as log:
        for step in range(a.steps + 1):
            if step % 50 == 0 or step == a.steps:  # every 50 steps and at the end
                v = val()
                rec = {"step": step, "val_loss": round(v["real"], 4), "gap_shuffled": round(v["shuffled"] - v["real"], 4),
                       "minutes": round((time.time() - t0) / 60, 1)}
                print(rec, flush=True)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if step == a.steps:
                break
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * min(1.0, (step + 1) / 10)  # 10 warm-up steps, then constant
            idx = [order[(step * a.batch_size + j) % len(order)] for j in range(a.batch_size)]
            loss = loss_of(batch(ds, idx))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(proj.parameters()) + list(llm.parameters()), 1.0)
            opt.step()
        if a.no_test:
            return 0
        llm.eval()
        current: list[str] = []
        model.encode_images = lambda pix, extra_state=None: proj(torch.stack([oracle(i) for i in current])).to(pix.dtype)

        def answer(items):
            current[:] = [str(it.image_path)[str(it.image_path).index("images/"):] for it in items]
            with torch.no_grad():
                return model.generate([Image.new("RGB", (size, size))] * len(items), [it.prompt for it in items],
                                      max_new_tokens=12).texts

        res = {}
        for control in (None, "shuffled"):
            m = evaluate("sceneqa", str(data), answer, f"{a.out}.eval-{control or 'real'}", batch_size=8, split="test",
                         progress=False, control=control, resume=False)
            res[control or "real"] = {k: v.get("headline") for k, v in m["families"].items()}
            res[control or "real"]["family_mean"] = m.get("family_mean")
        print(json.dumps(res), flush=True)
        log.write(json.dumps({"test": res}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
