#!/usr/bin/env bash
# Study script: daemon throughput with and without torch.compile, alternating: the figures in
# docs/benchmarks.md ("Still open"). Needs the small set and model a full bench run made:
#   .venv/bin/python -m bench --only process --out bench/out-full
# Usage: bench/scripts/daemon_compile_ab.sh [ROUNDS]   (prints first->last output img/s per run)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=bench/out-full/data/small-300
model=bench/out-full/bench-model.safetensors
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
    rm -rf "$work/root" && mkdir -p "$work/root/inbox"
    for copy in 1 2 3; do
        for f in "$data"/*.jpg; do cp "$f" "$work/root/inbox/c$copy-$(basename "$f")"; done
    done
    ARTD_ROOT="$work/root" ARTD_CHECKPOINT="$model" ARTD_SIZE=128 ARTD_RESIZE=stretch \
        ARTD_HTTP_PORT=0 ARTD_INSTANCE=ab ARTD_COMPILE="$1" \
        .venv/bin/python -m daemon >"$work/log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 480); do
        [ "$(find "$work/root/outbox" -type f 2>/dev/null | wc -l)" -ge 900 ] && break
        sleep 0.5
    done
    kill -TERM "$pid" && wait "$pid" || true
    .venv/bin/python - "$work/log" "$1" <<'PY'
import datetime, sys
stamps = [datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
          for line in open(sys.argv[1]) if " -> " in line]
seconds = (stamps[-1] - stamps[0]).total_seconds()
print(f"compile={sys.argv[2]}: {len(stamps)} outputs, {(len(stamps) - 1) / seconds:.1f} img/s")
PY
}
for _ in $(seq 1 "${1:-2}"); do run false; run true; done
