# ABAB rounds, one process: a VisToG-16 training step's encoder + grouping (fwd + bwd, bf16 autocast) on the packaged
# DINOv2-S, isolated semantic tokens as their own stream (split) vs the masked concatenation (joint).
# usage: python results/bench/vistog_split_step.py THREADS BATCH
import time, torch, sys
from compactvlm.model.build import load_vision_model, DEFAULT_ENCODER
from compactvlm.encoders.hf import HFVisionEncoder
from compactvlm.compressors.base import create_compressor
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
B = int(sys.argv[2]) if len(sys.argv) > 2 else 8
m, mean, std = load_vision_model(DEFAULT_ENCODER)
enc = HFVisionEncoder(m.eval().requires_grad_(False), 224)
torch.manual_seed(0)
comp = create_compressor("vistog", enc.info, 576, tokens=16).train()
x = torch.randn(B, 3, 224, 224)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = enc(x, layers=comp.feature_layers(), extra_tokens=comp.extra_tokens(), extra_attention="isolated")
        out = comp(f)
    out.float().square().mean().backward()
times = {True: [], False: []}
orig = HFVisionEncoder.splits_extra_tokens
for r in range(3):
    for split in (True, False):
        HFVisionEncoder.splits_extra_tokens = orig if split else property(lambda self: False)
        t = time.perf_counter(); step(); times[split].append(time.perf_counter() - t)
HFVisionEncoder.splits_extra_tokens = orig
comp.eval()  # no Gumbel noise: the two runs' tokens compared, in fp32 and under bf16 autocast
for ac in (False, True):
    res = {}
    for split in (True, False):
        HFVisionEncoder.splits_extra_tokens = orig if split else property(lambda self: False)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            f = enc(x, layers=comp.feature_layers(), extra_tokens=comp.extra_tokens(), extra_attention="isolated")
            res[split] = (comp(f).float(), comp.token_assignment(f))
    HFVisionEncoder.splits_extra_tokens = orig
    d = (res[True][0] - res[False][0]).abs().max().item()
    flips = (res[True][1] != res[False][1]).float().mean().item()
    print(f"{'bf16' if ac else 'fp32'}: split vs joint tokens max |diff| {d:.3g} (largest |token| "
          f"{res[False][0].abs().max().item():.3g}); patches assigned to another group {flips:.2%}")
for k, v in times.items():
    print("split" if k else "joint", "s/step:", [round(t, 2) for t in v])
print("ratio joint/split (rounds 2-3):", round(sum(times[False][1:]) / sum(times[True][1:]), 2))
