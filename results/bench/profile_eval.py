"""Where evaluation's CPU time goes on the shared-prefix path (issue 23): per-call process CPU time of the encoder
(+ compressor), the vision-prefix prefill, the question prefill and the decode steps, for a packaged model on the
first N questions of a SceneQA test split, and the prefills' arithmetic rate (2 x the LLM's non-embedding
parameters per prompt token) beside an fp32 matmul timed in the same run.

    python results/bench/profile_eval.py ROW N BATCH[,BATCH...] [DATA]   # e.g. stf-k2e1 96 8 data/study_v2
"""
import sys
import time

import torch

from compactvlm.commands.demo import assets_dir
from compactvlm.evaluate.answer import Answerer
from compactvlm.evaluate.benchmarks import get_benchmark
from compactvlm.model.checkpoint import load_pretrained

torch.set_num_threads(1)
row, n, bss = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
data = sys.argv[4] if len(sys.argv) > 4 else "data/study_v2"
items = get_benchmark("sceneqa", data, split="test").items()[:n]
m = load_pretrained(assets_dir() / row, progress=False)
ans = Answerer(m, data, features=False)  # every call encodes: a first evaluation pass
llm = m.llm
emb = llm.get_input_embeddings().weight.numel()
flop_per_token = 2 * (sum(p.numel() for p in llm.parameters()) - emb)
calls = {}
orig = llm.forward


def timed(*a, **k):
    x = k.get("inputs_embeds")
    key = "prefix prefill" if x is not None else ("decode" if k["input_ids"].shape[1] == 1 else "question prefill")
    toks = int((x if x is not None else k["input_ids"]).shape[0] * (x if x is not None else k["input_ids"]).shape[1])
    t = time.process_time()
    out = orig(*a, **k)
    c = calls.setdefault(key, [0, 0.0, 0])
    c[0] += 1
    c[1] += time.process_time() - t
    c[2] += toks
    return out


llm.forward = timed
enc = m.encode_images


def timed_enc(*a, **k):
    t = time.process_time()
    out = enc(*a, **k)
    c = calls.setdefault("encoder + compressor", [0, 0.0, 0])
    c[0] += 1
    c[1] += time.process_time() - t
    return out


m.encode_images = timed_enc
ans(items[:8])  # warm-up
a, b = torch.randn(512, 576), torch.randn(576, 1536)
for _ in range(3):
    a @ b
t = time.process_time()
for _ in range(20):
    a @ b
mm = 20 * 2 * 512 * 576 * 1536 / (time.process_time() - t) / 1e9
print(f"{row}, first {n} questions of {data} test, 1 thread, fp32; fp32 matmul 512x576 @ 576x1536: {mm:.1f} GFLOP/s "
      f"(per CPU-second)")
for bs in bss:
    calls.clear()
    t = time.process_time()
    for i in range(0, n, bs):
        ans(items[i:i + bs])
    tot = time.process_time() - t
    print(f"batch {bs}: CPU {tot:.1f} s ({n / tot:.2f} questions per CPU-second)")
    for k, (cnt, sec, toks) in calls.items():
        rate = f", {toks} tokens, {toks * flop_per_token / sec / 1e9:.1f} GFLOP/s" if toks and k != "decode" else ""
        print(f"  {k:<22} {cnt:3d} calls {sec:6.1f} s ({100 * sec / tot:3.0f}%){rate}")
