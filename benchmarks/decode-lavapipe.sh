#!/usr/bin/env bash
# Decode of a mid-size model on lavapipe (issue 12), several builds side by side in one run with
# rounds alternating: language model hidden 1024, 8 layers, MLP 2816, 16 heads, vocab 32000, q4
# (the pack benchmarks/flow-lavapipe.sh makes), both kernel shape sets, a 64-token prompt, then
# DECODE (default 24) greedy tokens. Prints decode tokens/s, dispatches per token and CPU time.
# SHAPES (default "cpu gpu") picks the kernel shape sets.
#   benchmarks/decode-lavapipe.sh OLD NEW [MORE...]
# Each argument is a janusflow binary or a git revision (built with the release profile in a
# worktree under /tmp, sharing this checkout's target directory). ROUNDS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
dir=${FLOW_BENCH_DIR:-/tmp/janusflow-flow-mid}
[ -f "$dir/pack/manifest.json" ] || { echo "no pack in $dir: run benchmarks/flow-lavapipe.sh first" >&2; exit 2; }
. benchmarks/bins.sh
bench_bins release "$@"
"${bins[0]}" info | grep -E '"(name|driver)"'
TIMEFORMAT='cpu %U s user + %S s sys, wall %R s'
for round in $(seq "${ROUNDS:-3}"); do
  for shapes in ${SHAPES:-cpu gpu}; do
    for b in "${bins[@]}"; do
      echo "== $b --shapes $shapes (round $round)"
      { time "$b" bench --model "$dir/pack" --quant q4 --prompt-tokens 64 --decode-tokens "${DECODE:-24}" --no-matmul --shapes "$shapes" |
        grep -E "^decode:|dispatches per decoded"; } 2>&1
    done
  done
done
