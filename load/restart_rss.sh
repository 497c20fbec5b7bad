#!/usr/bin/env bash
# Memory as the store grows, and after a restart on it (BENCHMARKS.md,
# "Compact segments"; docs/operations.md, "Memory"):
#
#   load/restart_rss.sh SENSORGATE_BIN DEVICE_SIM_BIN FLOOD_SECONDS RESTARTS
#
# Runs the daemon under device-sim's flood (50 devices, batches of 50, one
# MessagePack subscriber) for FLOOD_SECONDS and prints its RSS at 10 s and at
# the end, its peak, the readings acked and the store on disk; then starts it
# RESTARTS times on that store and prints its RSS 3 s after `/readyz`
# answers (the idle daemon: sled's cache and bookkeeping for that store).
# Loopback only; every wait is bounded.
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,11p' "$0" >&2
    exit 2
fi
SG=$1 SIM=$2 FLOOD=$3 RESTARTS=$4
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
run_dir restart_rss

start_daemon "$SG" "$TMP/out.log"
wait_port "$PORT" 10
(
    sleep 10
    log "RSS at 10 s: $(($(status_kib "$PID" VmRSS) / 1024)) MiB"
) &
AT10=$!
timeout $((FLOOD + 60)) "$SIM" --url "ws://127.0.0.1:$PORT/v1/ingest" --secret "$SECRET" --json \
    --subscribe "ws://127.0.0.1:$PORT/v1/stream" --subscriber-format msgpack \
    --devices 50 --scenario flood --batch 50 --window 8 --duration "${FLOOD}s" \
    >"$TMP/sim.json" 2>"$TMP/sim.err" || true
wait "$AT10"
log "RSS at the end: $(($(status_kib "$PID" VmRSS) / 1024)) MiB, peak $(($(status_kib "$PID" VmHWM) / 1024)) MiB, $(jq .acked_readings "$TMP/sim.json") readings acked"
kill -TERM "$PID"
wait "$PID" || true
PID=
log "store: $(du -sm "$TMP/store" | cut -f1) MiB"

for i in $(seq 1 "$RESTARTS"); do
    start_daemon "$SG" "$TMP/start.log"
    wait_ready "$PORT" 60 || true
    sleep 3
    log "restart $i: RSS $(($(status_kib "$PID" VmRSS) / 1024)) MiB, idle"
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
done
