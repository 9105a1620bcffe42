"""Profile one stage-2 training step of the study's full-token reference (fp32 on a CPU without bf16):
`python results/bench/profile_train_step.py THREADS [key=value ...]` from the repo root, once the study has written
runs/study_v2/full-mlp2x/s0/stage2/train_config.yaml (its stage-1 final is the init). Trains two steps into
/tmp/prof-run, the second under torch.profiler, and prints the top ops (by op, then by op and input shape)."""
import sys
import time
from functools import partial

import torch

from compactvlm.train.config import load_train_config
from compactvlm.train.trainer import Trainer
from compactvlm.data.llava import collate_llava
from torch.profiler import ProfilerActivity, profile

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
cfg = load_train_config("runs/study_v2/full-mlp2x/s0/stage2/train_config.yaml",
                        ["output_dir=/tmp/prof-run", f"threads={threads}", "eval.every_steps=0", "eval.at_end=false",
                         "checkpoint.every_steps=0", "resume=never", "logging.progress=false"] + sys.argv[2:])
tr = Trainer(cfg)
tr.setup()
loader = torch.utils.data.DataLoader(tr.train_ds, batch_sampler=tr.sampler, num_workers=0,
                                     collate_fn=partial(collate_llava, pad_id=tr.vlm.tokenizer.pad_token_id,
                                                        pad_to_multiple_of=cfg.data.pad_to_multiple_of))
it = iter(loader)
b = next(it)
print("batch", tuple(b["input_ids"].shape), "tokens", int(b["attention_mask"].sum()), flush=True)
t = time.perf_counter(); tr.train_step([b]); print("warm step", time.perf_counter() - t, flush=True)
b = next(it)
print("batch", tuple(b["input_ids"].shape), "tokens", int(b["attention_mask"].sum()), flush=True)
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    t = time.perf_counter(); tr.train_step([b]); dt = time.perf_counter() - t
print("profiled step", dt, flush=True)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
