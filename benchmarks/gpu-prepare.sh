#!/usr/bin/env bash
# Run here, before the one GPU call. The GPU machine has no Rust toolchain and no network, and
# only the checkout travels (not ../shared; the real config is tests/fixtures/janusflow-1.3b-config.json),
# so everything it runs is built and packed here:
#   .gpu/bins.tar.gz   stripped: janusflow (this checkout), janusflow-old (OLD, built in a
#                      worktree), and the kernel and golden test binaries (they read their
#                      fixtures from this checkout's path, which gpu-device.sh links there)
#   .gpu/env           this checkout's path and revisions
#   .gl/*.deb          the Vulkan loader (the GPU machine's image has the driver, not always the loader)
# Both folders are ignored by git (.git/info/exclude) and travel through `carry`.
#   benchmarks/gpu-prepare.sh [OLD revision, default 0ae61b5: the code timed on the H100 on 2026-11-26]
# Then make the call it prints (device tool `run`): benchmarks/gpu-device.sh does the rest.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OLD=${1:-0ae61b5}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for d in /.gpu/ /.gl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"; done
rm -rf .gpu && mkdir -p .gpu/stage

# This checkout's CLI and test binaries (cargo names test binaries by hash: ask it for the paths).
cargo build --release --bin janusflow
cp target/release/janusflow .gpu/stage/janusflow
cargo test --release --no-run --message-format=json --test kernels --test golden_llm --test golden_und --test golden_gen 2>/dev/null |
  python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], ".gpu/stage/test-" + m["target"]["name"])
        print("test binary:", m["target"]["name"])
'
# The old build, for figures side by side on the same GPU.
. benchmarks/bins.sh
bench_bins release "$OLD"
cp "${bins[0]}" .gpu/stage/janusflow-old
# bins.sh builds in this target directory: make cargo rebuild the current code next time.
touch src/lib.rs

strip .gpu/stage/*
tar -C .gpu/stage -czf .gpu/bins.tar.gz .
rm -rf .gpu/stage
cat >.gpu/env <<EOF
MANIFEST_DIR=$PWD
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +dirty)
OLD_REV=$(git rev-parse --short "$OLD^{commit}")
EOF

# The Vulkan loader as amd64 packages, unpacked over / on the GPU machine (device README).
rm -rf .gl && mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq || true
(cd .gl && apt-get $o download libvulkan1) || echo "warning: no libvulkan1 package fetched; the GPU machine's own loader must do" >&2

du -sh .gpu .gl
cat <<'EOF'

Ready. Make this one call (device tool `run`), with timeout_s 600:
  carry:   [".gpu", ".gl"]
  command: bash benchmarks/gpu-device.sh
Its output ends with the figures (summary.txt); under files_at come log.txt (everything) and
bench.jsonl (each bench's JSON line, tagged). Then: give_back, copy log.txt to
benchmarks/<gpu>-<date>.txt, summarise it in benchmarks/README.md.
Dry run here first (lavapipe, the tiny model's config):
  CONFIG=tests/fixtures/tiny/config.json BUDGET=1500 OUT=/tmp/dry bash benchmarks/gpu-device.sh
EOF
