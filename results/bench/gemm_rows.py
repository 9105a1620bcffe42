"""One SmolLM2 MLP up-projection (576 -> 1536) at the prompt lengths of STF k=2 (88 rows) and full tokens (280),
bf16 and fp32, 1 thread, interleaved (efficiency.timing.compare, 30 rounds).
Run: PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 15 python results/bench/gemm_rows.py > results/bench/gemm_rows.txt
"""
import torch
from compactvlm.efficiency.timing import compare
torch.set_num_threads(1)
res = {}
for dt in (torch.bfloat16, torch.float32):
    w1 = torch.randn(1536, 576).to(dt)  # SmolLM2 MLP up-projection (out, in)
    xs = {m: torch.randn(m, 576).to(dt) for m in (88, 280)}
    with torch.inference_mode():
        cmp = compare([(f"M={m}", (lambda x=x: torch.nn.functional.linear(x, w1))) for m, x in xs.items()], repeats=30, warmup=3)
    for m in xs:
        ms = cmp.median_ms(f"M={m}"); print(dt, m, f"{ms:.3f} ms", f"{2*m*576*1536/ms/1e6:.0f} GFLOP/s")
