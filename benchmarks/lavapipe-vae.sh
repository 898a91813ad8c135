#!/usr/bin/env bash
# The real-size SDXL-VAE decoder on a 16×16 latent (gen_image_size 128, tiny language model), on
# lavapipe, timed for several builds of the CLI side by side in one run: CPU time as well as wall
# time, since this 2-core machine is shared and wall times swing by ±20 %.
#   benchmarks/lavapipe-vae.sh OLD_BINARY NEW_BINARY [MORE_BINARIES...]
set -euo pipefail
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
dir=${VAE_BENCH_DIR:-/tmp/janusflow-vae128}
first=$1
if [ ! -f "$dir/pack/manifest.json" ]; then
  mkdir -p "$dir"
  python3 -c "import json; c = json.load(open('tests/fixtures/tiny/config.json')); c['gen_image_size'] = 128; json.dump(c, open('$dir/config.json', 'w'))"
  "$first" synth --config "$dir/config.json" --out "$dir/hf" --seed 7
  "$first" convert --model "$dir/hf" --out "$dir/pack" --quant q4
fi
TIMEFORMAT='cpu %U s user + %S s sys, wall %R s'
for round in 1 2; do
  for b in "$@"; do
    echo "== $b (round $round)"
    { time "$b" bench --model "$dir/pack" --quant q4 --prompt-tokens 8 --decode-tokens 2 --no-matmul --generate --flow-steps 2 | grep -E "device|VAE decode"; } 2>&1
  done
done
