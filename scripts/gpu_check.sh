#!/usr/bin/env bash
# GPU check for Visage's fused kernels: parity tests (tests/gpu, marker gpu) then the benchmark table.
# Budget: under 8 minutes on one H100/H200 (tests ~2-4 min incl. Triton compiles, bench ~1-2 min).
#
#   scripts/gpu_check.sh                 # parity + kernels bench
#   BENCH_ONLY=kernels,swap scripts/gpu_check.sh
#   PYTHON=/path/to/python scripts/gpu_check.sh
#
# Exit status: non-zero when a parity test fails or the bench crashes.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-${TMPDIR:-/tmp}/visage-triton-cache}"
unset VISAGE_DISABLE_TRITON TRITON_INTERPRET

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(nvidia-smi unavailable)"
"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton NOT importable:", type(e).__name__, e)
PY

start=$(date +%s)
echo "== parity: fused kernels vs torch twins (tests/gpu)"
timeout 330 "$PY" -m pytest tests/gpu -q -m gpu -p no:cacheprovider --timeout 300 -rs
rc_tests=$?
echo "parity exit status: $rc_tests ($(( $(date +%s) - start )) s)"

echo "== bench"
bstart=$(date +%s)
timeout 210 "$PY" bench/run.py --only "${BENCH_ONLY:-kernels}" ${BENCH_ARGS:-} --json "${BENCH_JSON:-/tmp/visage-bench.json}"
rc_bench=$?
echo "bench exit status: $rc_bench ($(( $(date +%s) - bstart )) s); total $(( $(date +%s) - start )) s"

if [ "$rc_tests" -ne 0 ] || [ "$rc_bench" -ne 0 ]; then exit 1; fi
exit 0
