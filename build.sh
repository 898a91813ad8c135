#!/usr/bin/env bash
# JanusFlow Web build script.
#   ./build.sh          build the native CLI and the wasm engine into www/pkg/
#   ./build.sh serve    build, then serve www/ on http://127.0.0.1:8080
#   ./build.sh test     run every test (GPU tests run on whatever adapter wgpu finds: lavapipe in CI)
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
    cargo install --locked wasm-bindgen-cli --version "$want"
  fi
  rm -rf www/pkg
  wasm-bindgen --target web --out-dir www/pkg target/wasm32-unknown-unknown/release/janusflow.wasm
  # Debian's binaryen 108 corrupts wasm-bindgen output: only use a current wasm-opt (npm binaryen).
  local opt=""
  if [ -x node_modules/.bin/wasm-opt ]; then opt=node_modules/.bin/wasm-opt; fi
  if [ -n "$opt" ]; then
    "$opt" -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
      www/pkg/janusflow_bg.wasm -o www/pkg/janusflow_bg.wasm.opt && mv www/pkg/janusflow_bg.wasm.opt www/pkg/janusflow_bg.wasm
  else
    echo "note: no current wasm-opt found (npm install binaryen); shipping the unoptimised wasm" >&2
  fi
  ls -l www/pkg/janusflow_bg.wasm >&2
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
    cargo test --all-targets
    # The browser build must keep compiling.
    cargo check --lib --target wasm32-unknown-unknown
    ;;
  *)
    echo "usage: $0 [build|serve|test]" >&2
    exit 2
    ;;
esac
