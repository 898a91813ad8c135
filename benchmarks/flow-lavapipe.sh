#!/usr/bin/env bash
# A flow step of a mid-size model on lavapipe (issue 13): language model hidden 1024, 8 layers,
# MLP 2816, 16 heads, vocab 32000, the real SigLIP/UViT/VAE shapes, gen_image_size 128 (a 16×16
# latent, 64 image tokens per guidance row), q4 weights; several builds side by side in one run,
# rounds alternating, CPU time as well as wall time (a shared 2-core machine swings wall times).
#   benchmarks/flow-lavapipe.sh OLD NEW [MORE...]
# Each argument is a janusflow binary or a git revision (built with the dev profile in a worktree
# under /tmp, sharing this checkout's target directory). The pack is made by the first build, so
# list the oldest first (newer builds read older packs). ROUNDS (default 2), STEPS (default 3),
# FLOW_BENCH_DIR keeps the checkpoint between runs; EXTRA adds bench options (e.g. --shapes cpu-tile).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
dir=${FLOW_BENCH_DIR:-/tmp/janusflow-flow-mid}
. benchmarks/bins.sh
bench_bins dev "$@"
first=${bins[0]}
if [ ! -f "$dir/pack/manifest.json" ]; then
  mkdir -p "$dir"
  python3 - "$dir/config.json" <<'PY'
import json, sys
c = json.load(open('tests/fixtures/janusflow-1.3b-config.json'))
c['language_config'].update(hidden_size=1024, num_hidden_layers=8, intermediate_size=2816,
                            num_attention_heads=16, num_key_value_heads=16, vocab_size=32000)
for part in ('vision_gen_enc_config', 'vision_gen_dec_config'):
    c[part]['params']['hidden_size'] = 1024
c['gen_image_size'] = 128
json.dump(c, open(sys.argv[1], 'w'))
PY
  "$first" synth --config "$dir/config.json" --out "$dir/hf" --seed 7
  "$first" convert --model "$dir/hf" --out "$dir/pack" --quant q4
  rm -rf "$dir/hf"
fi
"$first" info | grep -E '"(name|driver)"'
TIMEFORMAT='cpu %U s user + %S s sys, wall %R s'
for round in $(seq "${ROUNDS:-2}"); do
  for b in "${bins[@]}"; do
    echo "== $b (round $round)"
    # shellcheck disable=SC2086
    { time "$b" bench --model "$dir/pack" --quant q4 --prompt-tokens 8 --decode-tokens 2 --no-matmul --generate --flow-steps "${STEPS:-3}" ${EXTRA:-} | grep -E "kernel shapes|flow step|VAE decode"; } 2>&1
  done
done
