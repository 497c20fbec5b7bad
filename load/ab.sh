#!/usr/bin/env bash
# One sensorgate binary under one device-sim load, for A/B comparisons of two
# builds of the daemon (run them alternately, a few times each):
#
#   load/ab.sh SENSORGATE_BIN DEVICE_SIM_BIN LABEL -- DEVICE_SIM_ARGS...
#   load/ab.sh /var/tmp/sg-old target/release/device-sim old -- \
#       --devices 1000 --rate 10 --batch 10 --duration 20s --drain 5s
#
# Starts the daemon on a free 127.0.0.1 port with a temp store
# (storage.sync = "batch", limits out of the way, log level warn), runs
# device-sim against it with one JSON subscriber on `#` (`--subscribers N`
# among the arguments sets how many; with `--subscribers 0` there is none and
# the subscriber's figures read 0), and prints one line:
# acked readings/s, device -> subscriber p50/p99/p999, device -> ack p99/p999,
# readings shed as
# `lagged`, the daemon's CPU seconds (utime + stime), peak RSS, and what the
# store takes on disk after the clean stop (`du`), in all and per acked reading
# (that includes the 8 MiB write-ahead log and sled's preallocated space, which
# dominate a short or slow run's store), and device-sim's own CPU seconds and
# peak RSS (load/rusage.py; the RSS reads at least ~14 MiB): it shares the
# cores with the daemon, so a lighter or heavier load generator moves the
# daemon's figures too.
# CAPTURE=1 also captures the daemon's port on `lo` for 5 s mid-run
# (tcpdump, needs root) and prints the server-side ack latency: the time from
# a device's frame arriving to the next frame the daemon sends back on that
# connection (load/acklat.py). METRICS=1 also prints, from /metrics at the
# end, how many store flushes, group commits and batches' waits for their
# outcome (queued -> decided, on the connection) took longer than 1, 2.5, 5
# and 10 ms (where the tail comes from). Needs jq, python3, curl; bounded by
# `timeout`.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi
SG=$1 SIM=$2 LABEL=$3
shift 4
# device-sim refuses `--subscribers 0` beside `--subscribe`: leave the URL out.
subscribe=(--subscribe)
prev=
for arg in "$@"; do
    [ "$prev" = --subscribers ] && [ "$arg" = 0 ] && subscribe=()
    prev=$arg
done
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
run_dir ab
settle_disk
start_daemon "$SG" "$TMP/out.log"
wait_port "$PORT" 10
sleep 0.3
t0=$(cpu_ticks "$PID")
if [ "${CAPTURE:-0}" = 1 ]; then
    (
        sleep 6
        timeout 5 tcpdump -i lo -tt -n -l "tcp port $PORT" 2>/dev/null | python3 "$HERE/acklat.py" "$PORT" >&2
    ) &
fi
timeout 600 python3 "$HERE/rusage.py" "$TMP/sim.rusage" \
    "$SIM" --url "ws://127.0.0.1:$PORT/v1/ingest" --secret "$SECRET" --json \
    ${subscribe[@]+"${subscribe[@]}" "ws://127.0.0.1:$PORT/v1/stream"} "$@" >"$TMP/sim.json" 2>"$TMP/sim.err" || true
sim_cpu=nan sim_rss_kib=0
[ -s "$TMP/sim.rusage" ] && read -r sim_cpu sim_rss_kib <"$TMP/sim.rusage"
t1=$(cpu_ticks "$PID")
hwm=$(status_kib "$PID" VmHWM)
if [ "${METRICS:-0}" = 1 ]; then
    curl -s --max-time 5 "http://127.0.0.1:$PORT/metrics" | awk '
        /^sensorgate_(store_(flush|commit)|ingest_outcome_wait)_seconds_(bucket|count)/ {
            name = $1; sub(/_seconds.*/, "", name); sub(/sensorgate_(store|ingest)_/, "", name)
            if ($1 ~ /_count/) { total[name] = $2; next }
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            below[name, le] = $2
        }
        END {
            for (n in total) {
                line = n "s " total[n] ", over 1/2.5/5/10 ms:"
                split("0.001 0.0025 0.005 0.01", les, " ")
                for (i = 1; i <= 4; i++) line = line " " total[n] - below[n, les[i]]
                print line
            }
        }' >&2
fi
kill "$PID"
wait "$PID" 2>/dev/null || true
PID=
wait
# What the store takes on disk after the clean stop, per acked reading.
store_kib=$(du -sk "$TMP/store" | cut -f1)
cpu=$(awk -v a="$t0" -v b="$t1" -v k="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / k }')
jq -r --arg l "$LABEL" --arg cpu "$cpu" --arg rss "$((hwm / 1024))" --argjson store "$store_kib" \
    --arg sim_cpu "$sim_cpu" --arg sim_rss "$((sim_rss_kib / 1024))" \
    '(.subscriber // {latency_us: {p50: 0, p99: 0, p999: 0}, lagged: 0}) as $sub
     | "\($l): acked/s \(.readings_per_sec | floor), p50/p99/p999 ms \($sub.latency_us.p50 / 1000) / \($sub.latency_us.p99 / 1000) / \($sub.latency_us.p999 / 1000), ack p99/p999 ms \(.ack_latency_us.p99 / 1000) / \(.ack_latency_us.p999 / 1000), lagged \($sub.lagged), server CPU s \($cpu), peak RSS MiB \($rss), store MiB \($store / 1024 | floor), store bytes/reading \(if .acked_readings > 0 then ($store * 1024 / .acked_readings | floor) else 0 end), device-sim CPU s \($sim_cpu), device-sim peak RSS MiB \($sim_rss)"' \
    "$TMP/sim.json"
