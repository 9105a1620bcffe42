#!/bin/bash
# The bench's GPU figures (results/bench/*_h200.*), one run per model shape, each interleaved (ABAB rounds):
# LLaVA-1.5-7B shapes (CLIP ViT-L/14-336 + Vicuna-7B, 576 patch tokens), random weights (timings need no trained
# weights), bf16: every default row at a quarter of the tokens (144), at each batch size given (default: 1 and 16;
# decoding is timed at batch 1 only).
# Usage, from the repository root on a machine with a CUDA GPU: scripts/bench_gpu.sh OUT_DIR [BATCH ...]
# (PYTHON names the interpreter, default python3; the checkout's src/ is put first on PYTHONPATH).
set -uo pipefail
out=${1:?usage: scripts/bench_gpu.sh OUT_DIR [BATCH ...]}
shift
batches=("${@:-1 16}")
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  nproc; } > "$out/env.txt" 2>&1
bench() {  # NAME SECONDS ARGS...: one bench run; its command heads NAME.txt
  local name=$1 limit=$2; shift 2
  echo "\$ compactvlm bench $* --json $name.json --plot $name.png" > "$out/$name.txt"
  timeout "$limit" $py -m compactvlm.cli bench "$@" --json "$out/$name.json" --plot "$out/$name.png" 2>&1 \
    | tr '\r' '\n' | grep -v 'rounds: .*%|' | tee -a "$out/$name.txt"
}
for b in ${batches[@]}; do
  decode=16; [ "$b" = 1 ] || decode=0
  bench bench_llava7b_h200_b$b ${LIMIT:-300} --model llava-1.5-7b --random-weights --device cuda --batch "$b" \
    --repeats 10 --warmup 3 --decode-tokens $decode
done
