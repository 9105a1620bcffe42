"""Interleaved (ABAB) stage-2 step times of one study row with two LLM attention implementations (default sdpa vs
eager), on the same batches from the same initialisation: `python results/bench/attn_impl_ab.py ROW THREADS ROUNDS
[sdpa,eager]` from the repo root, once the plan's data (data/study_v2) is built. Prints each step's seconds and loss
(the two should agree to bf16 rounding), the median of rounds 1.. per implementation and the per-round ratio."""
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from compactvlm.data.llava import collate_llava
from compactvlm.study import load_plan
from compactvlm.study.run import stage_config
from compactvlm.train.trainer import Trainer
row_name, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
impls = sys.argv[4].split(",") if len(sys.argv) > 4 else ["sdpa", "eager"]
plan = load_plan("configs/study/sceneqa_v2.yaml"); plan.threads = threads
trs = {}
for impl in impls:
    out = Path(tempfile.mkdtemp(prefix=f"ab-{impl}-"))
    cfg = stage_config(plan, plan.row(row_name), 0, Path(plan.data.dir), len(plan.stages()) - 1, out, None)
    cfg.init.from_ = None; cfg.model.attn_implementation = impl
    tr = Trainer(cfg); tr.setup(); trs[impl] = tr
    print(impl, tr.vlm.llm.config._attn_implementation, flush=True)
tr0 = trs[impls[0]]
loader = torch.utils.data.DataLoader(tr0.train_ds, batch_sampler=tr0.sampler, num_workers=0,
    collate_fn=partial(collate_llava, pad_id=tr0.vlm.tokenizer.pad_token_id, pad_to_multiple_of=tr0.cfg.data.pad_to_multiple_of))
times = {i: [] for i in impls}
for r, b in zip(range(rounds), loader):
    order = impls if r % 2 == 0 else impls[::-1]
    for impl in order:
        t = time.perf_counter(); m = trs[impl].train_step([b]); dt = time.perf_counter() - t
        times[impl].append(dt)
        print(f"round {r} {impl}: {dt:.1f} s loss {m['loss']:.5f} batch {tuple(b['input_ids'].shape)}", flush=True)
for impl in impls:
    print(impl, "median (rounds 1..)", round(statistics.median(times[impl][1:]), 2))
ratios = [a / b for a, b in zip(times[impls[0]][1:], times[impls[1]][1:])]
print("ratio", impls[0], "/", impls[1], "per round:", [round(x, 2) for x in ratios], "median", round(statistics.median(ratios), 2))
