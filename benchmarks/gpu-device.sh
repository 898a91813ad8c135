#!/usr/bin/env bash
# Runs on the lent GPU machine, as the one call that benchmarks/gpu-prepare.sh prints (device
# tool `run`, carry [".gpu", ".gl"], timeout_s 600). Unpacks the Vulkan loader and the binaries
# built here, checks that every kernel and golden test passes on this GPU (its driver's compiler
# and subgroup width have not run them before), then benchmarks/gpu-run.sh in what is left of
# BUDGET (default 570 s for the whole call), and prints the figures (gpu-summary.py). Writes
# $OUT/log.txt, $OUT/bench.jsonl and $OUT/summary.txt. CONFIG (default: the real model's) lets
# a dry run here take a small model.
set -u
cd "$(dirname "$0")/.."
t0=$SECONDS
BUDGET=${BUDGET:-570}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
L=$OUT/log.txt
[ -f .gpu/bins.tar.gz ] || { echo "no .gpu/bins.tar.gz: run benchmarks/gpu-prepare.sh here and carry .gpu" | tee -a "$L"; exit 2; }

# The Vulkan loader, where the image lacks it; the NVIDIA driver's ICD where the loader cannot find it.
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1 && [ -f "$icd" ]; then
  export VK_DRIVER_FILES=$icd VK_ICD_FILENAMES=$icd
fi

. .gpu/env
J=/tmp/janusflow-gpu
rm -rf "$J" && mkdir -p "$J" && tar -C "$J" -xzf .gpu/bins.tar.gz
# The test binaries read their fixtures under the path of the checkout they were built in.
if [ "$MANIFEST_DIR" != "$PWD" ] && [ ! -e "$MANIFEST_DIR" ]; then
  mkdir -p "$(dirname "$MANIFEST_DIR")" && ln -s "$PWD" "$MANIFEST_DIR"
fi

{
  echo "=== code $REV, old build $OLD_REV, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total --format=csv,noheader
  "$J/janusflow" info
} 2>&1 | tee -a "$L"
# No GPU adapter (loader or driver not found): say what Vulkan sees and stop, so that the lease's
# minutes go to a second, mended call rather than to benches that cannot run.
if ! "$J/janusflow" info 2>/dev/null | grep -q '"device_type": "\(DiscreteGpu\|IntegratedGpu\)"' && [ -z "${CONFIG:-}" ]; then
  {
    echo "=== no GPU adapter: Vulkan loader and ICDs"
    ldconfig -p | grep -i vulkan
    ls -l /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
    env | grep -E '^VK_' || true
  } 2>&1 | tee -a "$L"
  exit 3
fi

echo "=== correctness on this GPU: kernel and golden tests (both kernel shape sets, both reductions)" | tee -a "$L"
for t in kernels golden_llm golden_gen golden_und; do
  [ -x "$J/test-$t" ] || continue
  echo "--- $t" | tee -a "$L"
  # Failures print in full; passing tests only as the summary line.
  timeout 120 "$J/test-$t" 2>&1 | grep -v -E '^test .* ok$' | tee -a "$L"
done

BUDGET=$((BUDGET - (SECONDS - t0))) OUT=$OUT bash benchmarks/gpu-run.sh "$J/janusflow" "${CONFIG:-tests/fixtures/janusflow-1.3b-config.json}" "$J/janusflow-old"
echo "=== summary (benchmarks/gpu-summary.py)"
python3 benchmarks/gpu-summary.py "$OUT/bench.jsonl" | tee "$OUT/summary.txt"
