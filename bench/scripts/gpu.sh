#!/usr/bin/env bash
# The suite on CUDA (under 8 minutes): our paths and the post's loop on the GPU, plus GPU
# JPEG decoding against CPU draft decoding. DEVICE=cpu runs the same flow without a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench/out/gpu}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
exec timeout 480 "$PY" -m bench --quick --device "$DEVICE" --out "$OUT" \
  --only "${ONLY:-gpu_decode,floors,process,daemon,latency,training,targets}"
