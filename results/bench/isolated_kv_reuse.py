"""VisToG's isolated semantic tokens (``HFVisionEncoder.extra_stream``) with the image run's keys and values reused
(``forward`` since ccc60ff) against computing them again per block (as before, and as a cache of block inputs
still does): FLOPs of the vision stage (``torch.utils.flop_counter``) and its time, interleaved
(``efficiency.timing.compare``, ABAB rounds), plus the whole time to first token the same way. Same model, same image, same answers.
`python results/bench/isolated_kv_reuse.py CHECKPOINT [ROUNDS]` from the repo root, once data/study_v2 is built."""
import contextlib
import json
import sys

import torch
from PIL import Image

import compactvlm.encoders.hf as hf
from compactvlm.efficiency.flops import flop_counter
from compactvlm.efficiency.timing import compare, format_comparison
from compactvlm.model.checkpoint import load_pretrained

torch.set_num_threads(2)
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
vlm = load_pretrained(sys.argv[1], progress=False, dtype="bfloat16").eval()
if vlm.compressor.extra_tokens() is None or vlm.compressor.extra_attention != "isolated":
    sys.exit(f"{sys.argv[1]}: no isolated extra tokens in its compressor; give a VisToG checkpoint")
first = json.loads(open("data/study_v2/test_questions.jsonl").readline())
px = vlm.processor([Image.open("data/study_v2/" + first["image"]).convert("RGB")])
ids, mask = vlm.pad_left([vlm.prompt_ids(first["text"])])
reuse_kv = hf._capture_kv


@contextlib.contextmanager
def no_capture(parts):  # the extra stream then computes the image tokens' keys and values itself
    yield {}


def mode(name):
    hf._capture_kv = reuse_kv if name == "reuse" else no_capture


flops, outs = {}, {}
with torch.inference_mode():
    for name in ("recompute", "reuse"):
        mode(name)
        with flop_counter() as fc:
            outs[name] = vlm.encode_images(px)
        flops[name] = fc.get_total_flops()
print(f"{sys.argv[1]}: vision stage GFLOPs per image: recompute {flops['recompute'] / 1e9:.2f}, "
      f"reuse {flops['reuse'] / 1e9:.2f}; max |difference| of the vision tokens "
      f"{(outs['reuse'].float() - outs['recompute'].float()).abs().max().item():.3g}")


def call(name, what):
    def run():
        mode(name)
        with torch.inference_mode():
            return vlm.encode_images(px) if what == "vision" else vlm.forward(ids, mask, px, logits_to_keep=1)
    return run


for what in ("vision", "ttft"):
    cmp = compare([(f"recompute {what}", call("recompute", what)), (f"reuse {what}", call("reuse", what))],
                  repeats=rounds, warmup=2)
    print(format_comparison(cmp, f"{what}: {'encode_images' if what == 'vision' else 'forward, logits_to_keep=1'}"))
hf._capture_kv = reuse_kv
print(f"# command: python results/bench/isolated_kv_reuse.py {' '.join(sys.argv[1:])} (2 threads, bf16)")
