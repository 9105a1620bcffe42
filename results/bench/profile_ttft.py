"""Where the TTFT of the packaged STF k=2 model (64 vision tokens) and full-token model (256) goes, bf16, 1 thread.

Run: PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 15 python results/bench/profile_ttft.py > results/bench/profile_ttft.txt
"""
import torch
from torch.profiler import ProfilerActivity, profile

from compactvlm.commands.demo import assets_dir
from compactvlm.efficiency.timing import ttft_call, ttft_inputs
from compactvlm.model.checkpoint import load_pretrained
from compactvlm.testing import random_images

torch.set_num_threads(1)
img = random_images(1, size=224)
for row in ("stf-k2e1", "full-mlp2x"):
    m = load_pretrained(assets_dir() / row, progress=False)
    m.set_dtype("auto")
    ids, mask, pix = ttft_inputs(m, img, "Is there a red square in the image?")
    call = ttft_call(m, ids, mask, pix)
    for _ in range(2):
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            call()
    print(f"== {row}: {m.num_image_tokens()} vision tokens, prompt {ids.shape[1]} tokens, {m.dtype}; 3 calls ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))
