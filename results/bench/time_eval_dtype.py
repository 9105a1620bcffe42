"""Time the study's answer path on the first N test questions with a row's model in float32 and with bfloat16
weights, and count the questions both answer alike: `python results/bench/time_eval_dtype.py CHECKPOINT THREADS N`
from the repo root, once the plan's data (data/study_v2) is built. Uses the plan's on-disk encoder-feature cache of
the test images (runs/study_v2/features-eval) as `study run` does; the first pass of each dtype may encode images
that are not cached yet, so run it where the plan has evaluated before."""
import sys
import time

import torch

from compactvlm.evaluate.answer import make_answer_fn
from compactvlm.evaluate.benchmarks.base import get_benchmark
from compactvlm.model.checkpoint import load_pretrained
from compactvlm.study import load_plan
from compactvlm.study.plan import eval_features

ckpt, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
plan = load_plan("configs/study/sceneqa_v2.yaml")
items = get_benchmark("sceneqa", plan.data.dir).load_items()[:n]
answers = {}
for dtype in ("float32", "bfloat16"):
    model = load_pretrained(ckpt, progress=False, dtype=dtype).eval()
    answer = make_answer_fn(model, plan.data.dir, features=eval_features(plan))
    t = time.perf_counter()
    answers[dtype] = [a for i in range(0, n, plan.eval_batch_size) for a in answer(items[i:i + plan.eval_batch_size])]
    print(f"{dtype}: {time.perf_counter() - t:.1f} s for {n} questions ({threads} threads)", flush=True)
same = sum(a == b for a, b in zip(answers["float32"], answers["bfloat16"]))
print(f"the same answer in both: {same} of {n}")
