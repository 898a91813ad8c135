#!/usr/bin/env bash
# JanusFlow Web build script.
#   ./build.sh          build the native CLI and the wasm engine into www/pkg/
#   ./build.sh serve    build, then serve www/ on http://127.0.0.1:8080
#   ./build.sh test     run every test (GPU tests run on whatever adapter wgpu finds: lavapipe in CI)
#   ./build.sh wasm     only the wasm engine (www/pkg/)
#   ./build.sh e2e      only the browser tests (E2E_ONLY=regex runs the tests whose names match)
#   ./build.sh types    only the check of the TypeScript declarations (www/*.d.ts)
set -euo pipefail
cd "$(dirname "$0")"

# Mesa's Vulkan WSI complains without it; harmless for compute.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

wasm_bindgen_version() {
  # The CLI must match the wasm-bindgen crate in Cargo.lock exactly.
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

build_wasm() {
  rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  cargo build --lib --release --target wasm32-unknown-unknown
  local want; want="$(wasm_bindgen_version)"
  if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want" >&2
    # --locked pins the CLI's own dependencies; when a pinned one is missing from the registry, fall back.
    cargo install --locked wasm-bindgen-cli --version "$want" || cargo install wasm-bindgen-cli --version "$want"
  fi
  rm -rf www/pkg
  wasm-bindgen --target web --out-dir www/pkg target/wasm32-unknown-unknown/release/janusflow.wasm
  # Debian's binaryen 108 corrupts wasm-bindgen output: only use a current wasm-opt (npm binaryen).
  local opt=""
  if [ -x node_modules/.bin/wasm-opt ]; then opt=node_modules/.bin/wasm-opt; fi
  if [ -n "$opt" ]; then
    "$opt" -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-simd \
      www/pkg/janusflow_bg.wasm -o www/pkg/janusflow_bg.wasm.opt && mv www/pkg/janusflow_bg.wasm.opt www/pkg/janusflow_bg.wasm
  else
    echo "note: no current wasm-opt found (npm install binaryen); shipping the unoptimised wasm" >&2
  fi
  ls -l www/pkg/janusflow_bg.wasm >&2
  stamp_shell
}

# The service worker's app shell (www/pkg/shell.js): every HTML/JS/CSS file, the wasm glue and
# the wasm with their SHA-256, and a version named after them. sw.js caches exactly this set,
# verified, as one version, so new glue never meets an old wasm. Rerun after editing www/.
stamp_shell() {
  [ -f www/pkg/janusflow_bg.wasm ] || return 0
  local files=() f
  for f in www/*.html www/*.js www/*.css www/pkg/janusflow.js www/pkg/janusflow_bg.wasm; do
    [ "$f" = www/sw.js ] || files+=("${f#www/}")
  done
  local entries version
  entries="$(cd www && sha256sum "${files[@]}" | awk '{ printf "%s\"%s\":\"%s\"", (NR > 1 ? "," : ""), $2, $1 }')"
  version="$(printf '%s' "$entries" | sha256sum | cut -c1-16)"
  printf '// Written by build.sh (stamp_shell): the app shell the service worker caches as one version.\nself.JANUS_SHELL = {"version":"%s","files":{%s}};\n' "$version" "$entries" > www/pkg/shell.js
  echo "app shell version $version (${#files[@]} files)" >&2
}

# The TypeScript declarations of the public modules (www/janus.d.ts, www/janus-flow.d.ts):
# tests/types/usage.ts, a typed use of every export, must compile against them (tsc --noEmit),
# and they must declare exactly the values the modules export. About a second.
types() {
  [ -x node_modules/.bin/tsc ] || npm ci --no-audit --no-fund
  node_modules/.bin/tsc -p tests/types
  node tests/types/exports.mjs
}

# Browser end-to-end tests: a tiny weight pack and the native CLI's answers on it, then
# Playwright driving Debian's Chromium (WebGPU on SwiftShader) against a local server.
e2e() {
  local dir=target/e2e B=target/debug/janusflow
  [ -x "$B" ] || cargo build --bin janusflow
  rm -rf "$dir" && mkdir -p "$dir"
  "$B" convert --model tests/fixtures/tiny --out "$dir/pack" --quant q4a --shard-size 262144
  # The same weights cut into other shards: an update of the pack (superseded shards are deleted).
  "$B" convert --model tests/fixtures/tiny --out "$dir/pack2" --quant q4a --shard-size 131072
  local chat="Hello! Who are you?" image="What is in this picture?" gen="a red fox in snow"
  "$B" chat --model "$dir/pack" --quant q4a --prompt "$chat" --temperature 0 --max-tokens 24 > "$dir/chat.txt"
  "$B" chat --model "$dir/pack" --quant q4a --prompt "$image" --image tests/fixtures/images/square_80.png --temperature 0 --max-tokens 24 > "$dir/image.txt"
  "$B" generate --model "$dir/pack" --quant q4a --prompt "$gen" --steps 3 --cfg 2 --noise tests/fixtures/tiny-ref-gen/noise.npy --out "$dir/fox.png"
  # The same with the opt-in fast setting (f16 KV caches).
  "$B" chat --model "$dir/pack" --quant q4a --fast --prompt "$chat" --temperature 0 --max-tokens 24 > "$dir/chat-fast.txt"
  "$B" generate --model "$dir/pack" --quant q4a --fast --prompt "$gen" --steps 3 --cfg 2 --noise tests/fixtures/tiny-ref-gen/noise.npy --out "$dir/fox-fast.png"
  CHAT="$chat" IMAGE="$image" GEN="$gen" DIR="$dir" node -e '
    const fs = require("fs"); const d = process.env.DIR;
    const reply = (f) => fs.readFileSync(`${d}/${f}`, "utf8").replace(/\n$/, "");
    fs.writeFileSync(`${d}/expected.json`, JSON.stringify({
      chat: { prompt: process.env.CHAT, reply: reply("chat.txt") },
      chatFast: { prompt: process.env.CHAT, reply: reply("chat-fast.txt") },
      image: { prompt: process.env.IMAGE, reply: reply("image.txt") },
      generate: { prompt: process.env.GEN, steps: 3, cfg: 2 },
    }, null, 1));'
  [ -d node_modules/playwright-core ] || npm install --no-audit --no-fund
  types
  stamp_shell
  E2E_DIR="$dir" node tests/e2e/run.mjs
}

case "${1:-build}" in
  build)
    cargo build --release --bin janusflow
    build_wasm
    echo "native CLI: target/release/janusflow    web engine: www/pkg/" >&2
    ;;
  serve)
    "$0" build
    echo "serving www/ on http://127.0.0.1:8080 (Ctrl-C to stop)" >&2
    cd www && exec python3 -m http.server 8080 --bind 127.0.0.1
    ;;
  test)
    # The trained-network quality fixture (issue 16): fetched from PyPI once, cached in target/.
    python3 tests/reference/make_trained_fixture.py
    # Its numpy reference against transformers' Llama under PyTorch, where a venv with both is set
    # up (.ci/run makes target/torch-venv from Debian's python3-torch).
    if [ -x target/torch-venv/bin/python ]; then
      target/torch-venv/bin/python tests/reference/check_trained_torch.py
    else
      echo "no target/torch-venv: the trained fixture's PyTorch check is skipped (.ci/run sets it up)" >&2
    fi
    cargo test --all-targets
    # The kernels again with lavapipe's subgroups 16 lanes wide instead of 8 (llvmpipe's SIMD width,
    # native where the CPU has AVX-512): the subgroup reductions and the GPU-shape matrix-vector
    # rows at another width (SwiftShader's 4 run in the browser tests). Wider is not honest there:
    # at 1024 bits llvmpipe reports 32-lane subgroups but runs 16.
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
      LP_NATIVE_VECTOR_WIDTH=512 cargo test --test kernels
    else
      echo "no AVX-512: the kernels' 16-lane subgroup run on lavapipe is skipped" >&2
    fi
    build_wasm
    e2e
    ;;
  wasm)
    build_wasm
    ;;
  e2e)
    # Only the browser tests (expects www/pkg from a previous build).
    e2e
    ;;
  types)
    types
    ;;
  *)
    echo "usage: $0 [build|serve|test|wasm|e2e|types]" >&2
    exit 2
    ;;
esac
