#!/usr/bin/env bash
# Start-up time of sensorgate binaries on one big store (BENCHMARKS.md,
# "Start-up time on a big store"):
#
#   load/startup.sh DEVICE_SIM_BIN FLOOD_SECONDS RUNS BIN...
#
# Builds a store with the first BIN under `device-sim --scenario flood` for
# FLOOD_SECONDS, stops it with SIGTERM, then starts each BIN in turn, RUNS
# times, and prints the time from exec to `/readyz` answering 200 and the
# peak RSS: first with the page cache warm, then dropped (needs root).
# Loopback only; every wait is bounded.
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi
SIM=$1 FLOOD=$2 RUNS=$3
shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
run_dir startup

start_daemon "$1" "$TMP/out.log"
wait_port "$PORT" 10
timeout $((FLOOD + 30)) "$SIM" --url "ws://127.0.0.1:$PORT/v1/ingest" --secret "$SECRET" --json \
    --devices 50 --scenario flood --batch 500 --window 8 --duration "${FLOOD}s" >/dev/null 2>&1 || true
kill -TERM "$PID"
wait "$PID" || true
PID=
log "store: $(du -sh "$TMP/store" | cut -f1)"

start_once() { # binary, warm|cold
    [ "$2" = cold ] && { sync; echo 3 >/proc/sys/vm/drop_caches; }
    local t0 t1 rss
    t0=$(date +%s%N)
    start_daemon "$1" "$TMP/start.log"
    wait_ready "$PORT" 60 || true
    t1=$(date +%s%N)
    rss=$(status_kib "$PID" VmHWM)
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
    echo "$1 $2: $(((t1 - t0) / 1000000)) ms to ready, peak RSS $((rss / 1024)) MiB"
}
for mode in warm cold; do
    for _ in $(seq 1 "$RUNS"); do
        for bin in "$@"; do
            start_once "$bin" "$mode"
        done
    done
done
