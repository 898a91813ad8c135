#!/bin/bash
# Real-size figures on a GPU machine, most decisive first, within a time budget (a lent GPU gives
# one ~10-minute call): a random checkpoint with the real shapes and its q4 pack (the issues'
# figures are q4; the app's default q4a is timed near the end); the issue
# targets (decode at 64/512/2048 tokens of context, an image question, 30 flow steps, the VAE and
# its convolution shapes; one-row product bandwidth against a copy), the same bench with the OLD
# build on the same GPU; then decode without pipelining (each step waiting for the host's choice),
# and the opt-in variants against the defaults: matvec activations staged
# in workgroup memory and weight loads batched over 2 and 4 passes (the matvec table and decode
# after 512 tokens with each), the 128×128 product tile, the fast setting (f16 KV caches, f16 tile
# arithmetic with shader-f16); every attention kernel; a profiled bench (per-kernel GPU times);
# the CPU kernel shapes' products. A stage that would not fit in what is left is skipped (logged).
#   benchmarks/gpu-run.sh [janusflow] [real config.json] [old janusflow]
# Writes $OUT/log.txt (everything) and $OUT/bench.jsonl (each bench's JSON line as
# {"tag": ..., "bench": ...}). BUDGET: seconds for the whole script (default 540).
# On the device machine, benchmarks/gpu-device.sh calls this after the correctness tests.
set -u
B=${1:-target/release/janusflow}
CONFIG=${2:-tests/fixtures/janusflow-1.3b-config.json}
OLDB=${3:-}
W=${WORK:-/tmp/janusflow-bench}
OUT=${OUT:-bench-out}
BUDGET=${BUDGET:-540}
mkdir -p "$W" "$OUT"
L=$OUT/log.txt
J=$OUT/bench.jsonl
t0=$SECONDS

left() { echo $((BUDGET - (SECONDS - t0))); }

# stage NEED TITLE...: heads a stage when NEED seconds are left; otherwise logs the skip, fails.
stage() {
  local need=$1
  shift
  if [ "$(left)" -lt "$need" ]; then
    echo "=== skipped, $(left) s left: $*" | tee -a "$L"
    return 1
  fi
  echo "=== $* ($(date +%T), $(left) s left)" | tee -a "$L"
}

# run LIMIT CMD...: CMD under a timeout of LIMIT seconds or what is left, output to the log.
run() {
  local t=$1 l
  shift
  l=$(left)
  [ "$t" -gt "$l" ] && t=$l
  [ "$t" -lt 1 ] && return 1
  timeout "$t" "$@" 2>&1 | tee -a "$L"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "(stopped after $t s)" | tee -a "$L"
  return "$rc"
}

# bench TAG LIMIT BINARY ARGS...: one `bench`; its JSON line (the last) goes to bench.jsonl, tagged.
bench() {
  local tag=$1 t=$2 bin=$3
  shift 3
  echo "--- $tag: bench $*" | tee -a "$L"
  run "$t" "$bin" bench "$@" | tail -1 | grep '^{' | sed "s/^/{\"tag\": \"$tag\", \"bench\": /; s/\$/}/" >>"$J"
}

PACK=$W/pack
stage 150 "checkpoint at the real size, q4 pack" || exit 1
run 60 "$B" synth --config "$CONFIG" --out "$W/real" --seed 1 | tail -1
run 240 "$B" convert --model "$W/real" --out "$PACK" --quant q4 | tail -1
[ -f "$PACK/manifest.json" ] || { echo "no pack: stopping" | tee -a "$L"; exit 1; }

if stage 100 "issue targets: decode at 64/512/2048 tokens of context, image question, 30 flow steps + VAE, VAE convolutions"; then
  bench plain 240 "$B" --model "$PACK" --quant q4 --prompt-tokens 512 --decode-tokens 128 --contexts 64,512,2048 --image --generate --flow-steps 30 --vae-convs --json
fi
if stage 40 "one-row product bandwidth against a copy (GPU kernel shapes, defaults)"; then
  bench matvec 90 "$B" --no-matmul --matvec --shapes gpu --json
fi
if [ -n "$OLDB" ] && stage 100 "the same with the old build ($OLDB), on the same GPU"; then
  # An old build may not read a pack of today's code: it converts its own when it cannot.
  if ! run 150 "$OLDB" bench --model "$PACK" --prompt-tokens 512 --decode-tokens 128 --image --generate --flow-steps 30 | grep '^decode:' >/dev/null; then
    run 240 "$OLDB" convert --model "$W/real" --out "$W/pack-old" --quant q4 | tail -1
    run 150 "$OLDB" bench --model "$W/pack-old" --prompt-tokens 512 --decode-tokens 128 --image --generate --flow-steps 30 >/dev/null
  fi
fi
if stage 60 "matvec: activations staged in workgroup memory (STAGE_X), weight loads of 2 and 4 passes issued together (LOADS), subgroupAdd against the workgroup tree"; then
  bench matvec-stage-x 60 "$B" --no-matmul --matvec --shapes gpu --stage-x --json
  bench matvec-loads-2 60 "$B" --no-matmul --matvec --shapes gpu --matvec-loads 2 --json
  bench matvec-loads-4 60 "$B" --no-matmul --matvec --shapes gpu --matvec-loads 4 --json
  bench matvec-tree 60 "$B" --no-matmul --matvec --shapes gpu --tree-reductions --json
fi
if stage 60 "decode after 512 tokens: default, not pipelined, staged activations, loads of 2 passes"; then
  bench decode 90 "$B" --model "$PACK" --quant q4 --no-matmul --prompt-tokens 512 --decode-tokens 128 --json
  bench decode-unpipelined 90 "$B" --model "$PACK" --quant q4 --no-matmul --prompt-tokens 512 --decode-tokens 128 --unpipelined --json
  bench decode-stage-x 90 "$B" --model "$PACK" --quant q4 --no-matmul --prompt-tokens 512 --decode-tokens 128 --stage-x --json
  bench decode-loads-2 90 "$B" --model "$PACK" --quant q4 --no-matmul --prompt-tokens 512 --decode-tokens 128 --matvec-loads 2 --json
fi
if stage 60 "the 128×128 product tile against the 64×64 one, and with the fast setting's f16 arithmetic: flow step (GEMM TFLOP/s per shape)"; then
  bench tile64 120 "$B" --model "$PACK" --quant q4 --prompt-tokens 512 --decode-tokens 8 --generate --flow-steps 5 --json
  bench tile128 120 "$B" --model "$PACK" --quant q4 --prompt-tokens 512 --decode-tokens 8 --generate --flow-steps 5 --tile128 --json
  bench tile128-fast 120 "$B" --model "$PACK" --quant q4 --prompt-tokens 512 --decode-tokens 8 --generate --flow-steps 5 --tile128 --fast --json
fi
if stage 60 "fast setting (f16 KV, f16 tile arithmetic with shader-f16; fidelity against f32)"; then
  bench fast 180 "$B" --model "$PACK" --quant q4 --prompt-tokens 512 --decode-tokens 128 --contexts 2048 --generate --flow-steps 30 --fast --json
fi
if stage 40 "attention kernels, both kernel shapes"; then
  bench attention-gpu 90 "$B" --no-matmul --attention --shapes gpu --json
  bench attention-cpu 90 "$B" --no-matmul --attention --shapes cpu --json
fi
if stage 60 "profile: per-kernel GPU times"; then
  bench profile 180 "$B" --model "$PACK" --quant q4 --prompt-tokens 512 --decode-tokens 32 --image --generate --flow-steps 3 --profile --json
fi
if stage 60 "the app's default preset, q4a (lm_head q8): decode after 512 tokens"; then
  run 150 "$B" convert --model "$W/real" --out "$W/pack-q4a" --quant q4a | tail -1
  bench decode-q4a 90 "$B" --model "$W/pack-q4a" --quant q4a --no-matmul --prompt-tokens 512 --decode-tokens 128 --json
fi
if stage 20 "one-row products with the CPU kernel shapes"; then
  bench matvec-cpu 60 "$B" --no-matmul --matvec --shapes cpu --json
fi
echo "=== done ($(date +%T), $(left) s left)" | tee -a "$L"
