#!/usr/bin/env bash
# The real-size SDXL-VAE decoder on a 16×16 latent (gen_image_size 128, tiny language model), on
# lavapipe, for several builds of the CLI side by side in one run, rounds alternating: CPU time as
# well as wall time, since a shared 2-core machine swings wall times by ±20 %.
#   benchmarks/vae-lavapipe.sh OLD NEW [MORE...]
# Each argument is a janusflow binary or a git revision; a revision is built (release, in a
# worktree under /tmp, sharing this checkout's target directory so only the crate recompiles).
# ROUNDS (default 2) sets the rounds; VAE_BENCH_DIR keeps the synth checkpoint between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
dir=${VAE_BENCH_DIR:-/tmp/janusflow-vae128}
. benchmarks/bins.sh
bench_bins release "$@"
first=${bins[0]}
if [ ! -f "$dir/pack/manifest.json" ]; then
  mkdir -p "$dir"
  python3 -c "import json; c = json.load(open('tests/fixtures/tiny/config.json')); c['gen_image_size'] = 128; json.dump(c, open('$dir/config.json', 'w'))"
  "$first" synth --config "$dir/config.json" --out "$dir/hf" --seed 7
  "$first" convert --model "$dir/hf" --out "$dir/pack" --quant q4
fi
"$first" info | grep -E '"(name|driver)"'
TIMEFORMAT='cpu %U s user + %S s sys, wall %R s'
for round in $(seq "${ROUNDS:-2}"); do
  for b in "${bins[@]}"; do
    echo "== $b (round $round)"
    { time "$b" bench --model "$dir/pack" --quant q4 --prompt-tokens 8 --decode-tokens 2 --no-matmul --generate --flow-steps 2 | grep -E "VAE decode|total:"; } 2>&1
  done
done
