"""Time stage-2 training steps of a study row on this machine, without a trained stage 1 (step time does not depend
on the weights): `python results/bench/time_train_step.py ROW THREADS STEPS` from the repo root, once the plan's
data (data/study_v2) is built. Builds the row's stage-2 config exactly as `study run` does (precision `auto`
resolved here, the plan's train_overrides), trains STEPS steps into a temporary folder and prints each step's
seconds and the median of all but the first."""
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
from compactvlm.train.trainer import Trainer, resolve_precision

row_name, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
plan = load_plan("configs/study/sceneqa_v2.yaml")
plan.threads = threads
out = Path(tempfile.mkdtemp(prefix="time-step-"))
cfg = stage_config(plan, plan.row(row_name), 0, Path(plan.data.dir), len(plan.stages()) - 1, out, None)
cfg.init.from_ = None  # the recipe's default stage-1 checkpoint may not be here; the weights do not change the time
print("precision", resolve_precision(cfg.precision, cfg.device), "threads", threads, flush=True)
tr = Trainer(cfg)
tr.setup()
loader = torch.utils.data.DataLoader(tr.train_ds, batch_sampler=tr.sampler, num_workers=0,
                                     collate_fn=partial(collate_llava, pad_id=tr.vlm.tokenizer.pad_token_id,
                                                        pad_to_multiple_of=cfg.data.pad_to_multiple_of))
times = []
for _, b in zip(range(steps), loader):
    t = time.perf_counter()
    tr.train_step([b])
    times.append(time.perf_counter() - t)
    print(f"step {len(times)}: {times[-1]:.1f} s, batch {tuple(b['input_ids'].shape)}", flush=True)
print(f"{row_name}: median {statistics.median(times[1:]):.1f} s/step over {len(times) - 1} steps", flush=True)
