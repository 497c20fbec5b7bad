#!/usr/bin/env bash
# End-to-end load benchmark: sensorgate (driven by device-sim) against
# Mosquitto (driven by benches/mqtt_peer.rs) on the same workload, both on
# 127.0.0.1 only. Prints one table with the ratio sensorgate/Mosquitto.
#
#   benches/load.sh [DEVICES] [RATE] [BATCH] [SECONDS] [IDLE_CONNS]
#
# Defaults: 50 devices, 2000 readings/s per device, batches of 50, 10 s per
# phase, 10000 idle connections. Phases: no subscriber, then 1, 10 and 100
# subscriber connections (all on `#`, so each gets every reading; override
# with SUBS="1 10"), then half the rate with 1 subscriber. Devices start at
# random points of their first interval on both sides (ALIGNED=1 for
# lock-step bursts). Needs jq, python3 (free ports), getconf and
# /usr/sbin/mosquitto.
set -euo pipefail

DEVICES=${1:-50}
RATE=${2:-2000}
BATCH=${3:-50}
SECS=${4:-10}
IDLE=${5:-10000}
SUBS=${SUBS:-1 10 100}
# Seconds both clients wait after the load for acks (and deliveries) still
# owed; a saturated client (100 subscribers) needs long for its own acks.
DRAIN=${DRAIN:-30}
ALIGN=()
PHASES="random phases"
if [ "${ALIGNED:-0}" = 1 ]; then ALIGN=(--aligned); PHASES="aligned phases"; fi
HALF_RATE=$((RATE / 2))
SECRET=load-bench-secret
MOSQUITTO=/usr/sbin/mosquitto

cd "$(dirname "$0")/.."
ROOT=$PWD
TMP=$(mktemp -d /tmp/sensorgate-load.XXXXXX)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || true
        [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[load] $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port, seconds
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "nothing listening on 127.0.0.1:$1 after $2 s"
    return 1
}

TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a pid
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
status_kib() { # pid, field (VmHWM, VmRSS)
    awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# Runs one load phase (a client command) against the server SERVER_PID and
# books the server's CPU ticks and peak RSS for the phase under NAME.
measured() { # server pid, name, command...
    local pid=$1 name=$2
    shift 2
    local t0 t1
    reset_hwm "$pid"
    t0=$(cpu_ticks "$pid")
    timeout $((SECS + DRAIN + 60)) "$@" >"$TMP/$name.json" 2>"$TMP/$name.err" ||
        log "$(basename "$1") $name exited with $? (see its report)"
    t1=$(cpu_ticks "$pid")
    echo $((t1 - t0)) >"$TMP/$name.cpu"
    status_kib "$pid" VmHWM >"$TMP/$name.hwm"
}

# ---------------------------------------------------------------- build
log "building release binaries"
cargo build --release -p sensorgate -p device-sim >&2
PEER=$(cargo build --release --bench mqtt_peer --message-format=json 2>/dev/null |
    jq -r 'select(.executable != null and (.target.name == "mqtt_peer")) | .executable' | tail -1)
[ -x "$PEER" ] || { log "mqtt_peer binary not found"; exit 1; }
SIM=$ROOT/target/release/device-sim
SG=$ROOT/target/release/sensorgate

# ---------------------------------------------------------------- sensorgate
start_sensorgate() {
    SG_PORT=$(free_port)
    mkdir -p "$TMP/sg"
    rm -rf "$TMP/sg/store"
    cat >"$TMP/sg/sensorgate.toml" <<EOF
[server]
listen = "127.0.0.1:$SG_PORT"
[auth]
jwt_secret = "$SECRET"
[limits]
readings_per_sec = 10000000
burst = 10000000
handshakes_per_ip = 100000
[storage]
path = "$TMP/sg/store"
sync = "batch"
[log]
level = "warn"
EOF
    "$SG" run --config "$TMP/sg/sensorgate.toml" >"$TMP/sg/out.log" 2>&1 &
    SG_PID=$!
    PIDS+=("$SG_PID")
    wait_port "$SG_PORT" 20
    sleep 0.3
}
stop_pid() {
    kill "$1" 2>/dev/null || true
    timeout 15 tail --pid="$1" -f /dev/null 2>/dev/null || kill -9 "$1" 2>/dev/null || true
}

run_sim() { # name, rate, extra args...
    local name=$1 rate=$2
    shift 2
    measured "$SG_PID" "$name" "$SIM" --url "ws://127.0.0.1:$SG_PORT/v1/ingest" --devices "$DEVICES" \
        --rate "$rate" --batch "$BATCH" --duration "${SECS}s" --drain "${DRAIN}s" --secret "$SECRET" \
        "${ALIGN[@]}" --json "$@"
}

log "sensorgate: ingest, $DEVICES devices x $RATE/s, batch $BATCH, ${SECS}s"
start_sensorgate
run_sim sg_ingest "$RATE"
for n in $SUBS; do
    log "sensorgate: same load + $n subscriber(s)"
    run_sim "sg_sub$n" "$RATE" --subscribe "ws://127.0.0.1:$SG_PORT/v1/stream" --subscribers "$n"
done
log "sensorgate: half load ($HALF_RATE/s per device) + 1 subscriber"
run_sim sg_half "$HALF_RATE" --subscribe "ws://127.0.0.1:$SG_PORT/v1/stream"
stop_pid "$SG_PID"

log "sensorgate: idle connections ($IDLE)"
SG_IDLE=$(timeout 300 cargo bench --bench idle_connections -- "$IDLE" 2>/dev/null |
    sed -n 's/.*, \([0-9.]*\) KiB per idle device connection/\1/p' | tail -1)
SG_IDLE=${SG_IDLE:-nan}

# ---------------------------------------------------------------- mosquitto
start_mosquitto() {
    MQ_PORT=$(free_port)
    rm -rf "$TMP/mq"
    mkdir -p "$TMP/mq"
    cat >"$TMP/mq/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $TMP/mq/
max_inflight_messages 0
max_queued_messages 10000
max_connections -1
log_dest file $TMP/mq/mosquitto.log
EOF
    "$MOSQUITTO" -c "$TMP/mq/mosquitto.conf" >/dev/null 2>&1 &
    MQ_PID=$!
    PIDS+=("$MQ_PID")
    wait_port "$MQ_PORT" 20
    sleep 0.3
}

run_peer() { # name, rate, extra args...
    local name=$1 rate=$2
    shift 2
    measured "$MQ_PID" "$name" "$PEER" --port "$MQ_PORT" --devices "$DEVICES" --rate "$rate" \
        --batch "$BATCH" --duration "$SECS" --drain "$DRAIN" "${ALIGN[@]}" "$@"
}

log "mosquitto: publish, $DEVICES publishers x $RATE/s, QoS 1, ${SECS}s"
start_mosquitto
run_peer mq_ingest "$RATE"
for n in $SUBS; do
    log "mosquitto: same load + $n subscriber(s)"
    run_peer "mq_sub$n" "$RATE" --subscribe --subscribers "$n"
done
log "mosquitto: half load + 1 subscriber"
run_peer mq_half "$HALF_RATE" --subscribe
stop_pid "$MQ_PID"

log "mosquitto: idle connections ($IDLE)"
start_mosquitto
MQ_BEFORE=$(status_kib "$MQ_PID" VmRSS)
timeout 120 "$PEER" --port "$MQ_PORT" --idle "$IDLE" --duration 4 >"$TMP/mq_idle.json" 2>/dev/null &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
for ((i = 0; i < 1200; i++)); do
    [ -s "$TMP/mq_idle.json" ] && break
    kill -0 "$IDLE_PID" 2>/dev/null || break
    sleep 0.05
done
sleep 2
MQ_AFTER=$(status_kib "$MQ_PID" VmRSS)
MQ_IDLE_N=$(jq -r '.idle_connected // 0' "$TMP/mq_idle.json" 2>/dev/null || echo 0)
timeout 30 tail --pid="$IDLE_PID" -f /dev/null 2>/dev/null || true
stop_pid "$MQ_PID"
MQ_IDLE=$(awk -v a="$MQ_AFTER" -v b="$MQ_BEFORE" -v n="$MQ_IDLE_N" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "nan" }')

# ---------------------------------------------------------------- report
j() { jq -r "$2 // \"nan\"" "$TMP/$1.json" 2>/dev/null || echo nan; }
cpu_per_m() { # name, readings
    awk -v t="$(cat "$TMP/$1.cpu")" -v k="$TCK" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", t / k / n * 1e6; else print "nan" }'
}
ms() { awk -v u="$1" 'BEGIN { if (u == "nan") print "nan"; else printf "%.1f", u / 1000 }'; }

SG_ACK=$(j sg_ingest .readings_per_sec)
MQ_ACK=$(j mq_ingest .acked_per_sec)

rows=()
row() { rows+=("$1|$2|$3|$4"); } # label, sensorgate, mosquitto, higher-is-better(1/0)
row "acked readings/s (no subscriber)" "$SG_ACK" "$MQ_ACK" 1
for n in $SUBS; do
    row "acked readings/s ($n subscribers)" "$(j "sg_sub$n" .readings_per_sec)" "$(j "mq_sub$n" .acked_per_sec)" 1
    row "deliveries/s ($n subscribers)" "$(j "sg_sub$n" .subscriber.deliveries_per_sec)" "$(j "mq_sub$n" .deliveries_per_sec)" 1
    row "readings dropped to slow subscribers ($n)" "$(j "sg_sub$n" .subscriber.lagged)" "$(awk -v p="$(j "mq_sub$n" .published)" -v d="$(j "mq_sub$n" .deliveries)" -v n="$n" 'BEGIN { x = p * n - d; print (x > 0 ? x : 0) }')" 0
    for q in p50 p99 p999; do
        row "$q latency ms, full load, $n subscribers" "$(ms "$(j "sg_sub$n" .subscriber.latency_us.$q)")" "$(ms "$(j "mq_sub$n" .latency_us.$q)")" 0
    done
done
for q in p50 p99 p999; do
    row "$q latency ms, half load, 1 subscriber" "$(ms "$(j sg_half .subscriber.latency_us.$q)")" "$(ms "$(j mq_half .latency_us.$q)")" 0
done
row "server CPU s per 1M readings (no sub)" "$(cpu_per_m sg_ingest "$(j sg_ingest .acked_readings)")" "$(cpu_per_m mq_ingest "$(j mq_ingest .acked)")" 0
for n in $SUBS; do
    row "server CPU s per 1M readings ($n subscribers)" "$(cpu_per_m "sg_sub$n" "$(j "sg_sub$n" .acked_readings)")" "$(cpu_per_m "mq_sub$n" "$(j "mq_sub$n" .acked)")" 0
done
for n in $SUBS; do
    row "server peak RSS MiB (full load, $n subscribers)" "$(awk -v k="$(cat "$TMP/sg_sub$n.hwm")" 'BEGIN{printf "%.1f", k/1024}')" "$(awk -v k="$(cat "$TMP/mq_sub$n.hwm")" 'BEGIN{printf "%.1f", k/1024}')" 0
done
row "KiB per idle connection ($IDLE)" "$SG_IDLE" "$MQ_IDLE" 0

echo
echo "Workload: $DEVICES devices/publishers x $RATE readings/s (half load: $HALF_RATE), batch $BATCH, ${SECS}s per phase, subscribers: $SUBS; $PHASES; CLK_TCK=$TCK"
echo "sensorgate: device-sim over WebSocket, storage.sync=batch. Mosquitto $($MOSQUITTO -h 2>&1 | head -1 | awk '{print $3}'): mqtt_peer, QoS 1, persistence true."
echo
echo "| figure | sensorgate | Mosquitto | sensorgate/Mosquitto | better |"
echo "|---|---|---|---|---|"
for r in "${rows[@]}"; do
    IFS='|' read -r label a b hib <<<"$r"
    awk -v l="$label" -v a="$a" -v b="$b" -v h="$hib" 'BEGIN {
        if (a == "nan" || b == "nan" || b + 0 == 0) { ratio = "n/a"; w = "n/a" }
        else { ratio = sprintf("%.2f", a / b); w = ((h == 1 && a >= b) || (h == 0 && a <= b)) ? "sensorgate" : "Mosquitto" }
        printf "| %s | %s | %s | %s | %s |\n", l, a, b, ratio, w
    }'
done
echo
echo "Raw reports:"
names=(sg_ingest)
for n in $SUBS; do names+=("sg_sub$n"); done
names+=(sg_half mq_ingest)
for n in $SUBS; do names+=("mq_sub$n"); done
names+=(mq_half mq_idle)
for n in "${names[@]}"; do
    printf '%s: ' "$n"
    jq -c 'del(.rejected) | del(.ack_latency_us)' "$TMP/$n.json" 2>/dev/null || echo "(none)"
done
