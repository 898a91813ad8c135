#!/bin/bash
# Real-size figures on a GPU machine: a random checkpoint with the real shapes, its q4 pack,
# one-row product bandwidth against a copy (activations read by every row, then staged in
# workgroup memory, then weight loads batched over 2 and 4 passes; decode each way), every
# attention kernel on the real shapes, a profiled bench (per-kernel GPU times) and a plain one
# (30 measured flow steps, the VAE's convolution shapes timed alone), then the opt-in fast setting
# (f16 KV caches; f16 tile arithmetic where the GPU has shader-f16) on the same pack, each also as
# JSON (the last line of each bench).
#   benchmarks/gpu-run.sh [janusflow binary] [real config.json]   (writes to $OUT or ./bench-out)
set -u
B=${1:-target/release/janusflow}
CONFIG=${2:-../shared/fixtures/janusflow-1.3b-configs/config.json}
W=${WORK:-/tmp/janusflow-bench}
OUT=${OUT:-bench-out}
mkdir -p "$W" "$OUT"
L=$OUT/log.txt
timeout 60 "$B" synth --config "$CONFIG" --out "$W/real" --seed 1 2>&1 | tail -1 | tee -a "$L"
timeout 300 "$B" convert --model "$W/real" --out "$W/pack" --quant q4 2>&1 | tail -1 | tee -a "$L"
echo "=== matvec bandwidth, both kernel shapes $(date +%T)" | tee -a "$L"
for shapes in gpu cpu; do
  timeout 120 "$B" bench --no-matmul --matvec --shapes "$shapes" --json 2>&1 | tee -a "$L"
done
echo "=== matvec rows added by the workgroup tree instead of subgroupAdd (matvec_rows.wgsl) $(date +%T)" | tee -a "$L"
timeout 120 "$B" bench --no-matmul --matvec --shapes gpu --tree-reductions --json 2>&1 | tee -a "$L"
echo "=== matvec activations staged in workgroup memory (STAGE_X); weight loads of 2 and 4 passes issued together (LOADS); decode with each $(date +%T)" | tee -a "$L"
for v in --stage-x "--matvec-loads 2" "--matvec-loads 4"; do
  timeout 120 "$B" bench --no-matmul --matvec --shapes gpu $v --json 2>&1 | tee -a "$L"
done
for v in "" --stage-x "--matvec-loads 2"; do
  timeout 300 "$B" bench --model "$W/pack" --no-matmul --prompt-tokens 512 --decode-tokens 128 $v --json 2>&1 | tee -a "$L"
done
echo "=== attention kernels, both kernel shapes $(date +%T)" | tee -a "$L"
for shapes in gpu cpu; do
  timeout 120 "$B" bench --no-matmul --attention --shapes "$shapes" --json 2>&1 | tee -a "$L"
done
echo "=== bench profile $(date +%T)" | tee -a "$L"
timeout 300 "$B" bench --model "$W/pack" --prompt-tokens 512 --decode-tokens 32 --image --generate --flow-steps 3 --profile --json 2>&1 | tee -a "$L"
echo "=== bench plain $(date +%T)" | tee -a "$L"
timeout 300 "$B" bench --model "$W/pack" --prompt-tokens 512 --decode-tokens 128 --contexts 64,512,2048 --image --generate --flow-steps 30 --vae-convs --json 2>&1 | tee -a "$L"
echo "=== the 128×128 product tile against the 64×64 one: matmul, flow step (GEMM TFLOP/s per shape) $(date +%T)" | tee -a "$L"
for t in "" --tile128; do
  timeout 300 "$B" bench --model "$W/pack" --prompt-tokens 512 --decode-tokens 8 --generate --flow-steps 5 $t --json 2>&1 | tee -a "$L"
done
echo "=== bench fast setting (f16 KV, f16 tile arithmetic with shader-f16; fidelity against f32) $(date +%T)" | tee -a "$L"
timeout 300 "$B" bench --model "$W/pack" --prompt-tokens 512 --decode-tokens 128 --contexts 2048 --generate --flow-steps 30 --fast --json 2>&1 | tee -a "$L"
