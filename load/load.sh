#!/usr/bin/env bash
# End-to-end load comparison: sensorgate (driven by device-sim) against
# Mosquitto (driven by mqtt_peer) and NATS JetStream (driven by nats_peer) on
# the same workload, all on 127.0.0.1 only. Prints one table.
#
#   load/load.sh [DEVICES] [RATE] [BATCH] [SECONDS] [IDLE_CONNS]
#
# Defaults (SHAPE=peak): 50 devices, 2000 readings/s per device, batches of
# 50, 10 s per phase, 10000 idle connections, subscriber phases SUBS="1 10
# 100". SHAPE=fleet: 1000 devices x one 10-reading batch per second
# (DEVICES 1000, RATE 10, BATCH 10) and SUBS="1"; arguments and SUBS still
# override. Phases, per server: no subscriber, then each SUBS count of
# subscriber connections (all on every subject, so each gets every
# reading), then half the rate with 1 subscriber; sensorgate also with one
# MessagePack subscriber (when device-sim offers a subscriber format); then
# idle connections. Each server runs fresh for its column. Devices start at
# random points of their first interval on every side (ALIGNED=1 for
# lock-step bursts).
#
# Columns (PEERS selects the peer ones; default all four):
#   mosquitto        Mosquitto, one MQTT message per reading
#   mosquitto-batch  Mosquitto, one MQTT message per batch (mqtt_peer --batch-payload)
#   nats             NATS JetStream, one message per reading (a publish counts at its PubAck)
#   nats-batch       NATS JetStream, one message per batch
#
# Needs jq, python3 (free ports), getconf, /usr/sbin/mosquitto and
# /usr/sbin/nats-server (its own instance on a free port and a temp store;
# the system one is never touched). Every phase is bounded by `timeout`.
set -euo pipefail

SHAPE=${SHAPE:-peak}
case "$SHAPE" in
peak) D_DEVICES=50 D_RATE=2000 D_BATCH=50 D_SUBS="1 10 100" ;;
fleet) D_DEVICES=1000 D_RATE=10 D_BATCH=10 D_SUBS="1" ;;
*)
    echo "SHAPE must be peak or fleet (got $SHAPE)" >&2
    exit 2
    ;;
esac
DEVICES=${1:-$D_DEVICES}
RATE=${2:-$D_RATE}
BATCH=${3:-$D_BATCH}
SECS=${4:-10}
IDLE=${5:-10000}
SUBS=${SUBS:-$D_SUBS}
PEERS=${PEERS:-mosquitto mosquitto-batch nats nats-batch}
# Seconds every client waits after the load for acks (and deliveries) still
# owed; a saturated client (100 subscribers) needs long for its own acks.
DRAIN=${DRAIN:-30}
ALIGN=()
PHASES="random phases"
if [ "${ALIGNED:-0}" = 1 ]; then ALIGN=(--aligned); PHASES="aligned phases"; fi
# Connections stay well under the 20,000 open files of this machine.
for n in $SUBS; do
    if ((DEVICES + n > 15000 || IDLE > 15000)); then
        echo "at most 15000 connections per phase (DEVICES + subscribers, IDLE_CONNS)" >&2
        exit 2
    fi
done
HALF_RATE=$(awk -v r="$RATE" 'BEGIN { print r / 2 }')
SECRET=load-bench-secret
MOSQUITTO=/usr/sbin/mosquitto
NATS_SERVER=/usr/sbin/nats-server

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

# shellcheck source=load/lib.sh
. "$ROOT/load/lib.sh"

TCK=$(getconf CLK_TCK)
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }

# Runs one load phase (a client command) against the server with pid
# SERVER_PID and books the server's CPU ticks and peak RSS for the phase
# under NAME.
measured() { # server pid, name, command...
    local pid=$1 name=$2
    shift 2
    local t0 t1
    reset_hwm "$pid"
    settle_disk
    t0=$(cpu_ticks "$pid")
    timeout "$(awk -v s="$SECS" -v d="$DRAIN" 'BEGIN { printf "%d", s + d + 60 }')" \
        "$@" >"$TMP/$name.json" 2>"$TMP/$name.err" ||
        log "$(basename "$1") $name exited with $? (see its report)"
    t1=$(cpu_ticks "$pid")
    echo $((t1 - t0)) >"$TMP/$name.cpu"
    status_kib "$pid" VmHWM >"$TMP/$name.hwm"
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    timeout 15 tail --pid="$1" -f /dev/null 2>/dev/null || kill -9 "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------- build
log "building release binaries"
cargo build --release -p sensorgate -p device-sim -p sensorgate-load >&2
BIN=$ROOT/target/release
SIM=$BIN/device-sim
SG=$BIN/sensorgate
for b in "$SIM" "$SG" "$BIN/mqtt_peer" "$BIN/nats_peer" "$BIN/idle_connections"; do
    [ -x "$b" ] || { log "$b not built"; exit 1; }
done
# A MessagePack subscriber phase needs device-sim to offer the format.
SUB_FORMAT_FLAG=
if "$SIM" --help | grep -q -- '--subscriber-format'; then SUB_FORMAT_FLAG=--subscriber-format; fi

# ---------------------------------------------------------------- sensorgate
start_sensorgate() {
    SG_PORT=$(free_port)
    mkdir -p "$TMP/sg"
    rm -rf "$TMP/sg/store"
    daemon_config "$SG_PORT" "$SECRET" "$TMP/sg/store" >"$TMP/sg/sensorgate.toml"
    "$SG" run --config "$TMP/sg/sensorgate.toml" >"$TMP/sg/out.log" 2>&1 &
    SG_PID=$!
    PIDS+=("$SG_PID")
    wait_port "$SG_PORT" 20
    sleep 0.3
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
STREAM="ws://127.0.0.1:$SG_PORT/v1/stream"
run_sim sg_ingest "$RATE"
for n in $SUBS; do
    log "sensorgate: same load + $n subscriber(s)"
    run_sim "sg_sub$n" "$RATE" --subscribe "$STREAM" --subscribers "$n"
done
log "sensorgate: half load ($HALF_RATE/s per device) + 1 subscriber"
run_sim sg_half "$HALF_RATE" --subscribe "$STREAM"
if [ -n "$SUB_FORMAT_FLAG" ]; then
    log "sensorgate: same load + 1 MessagePack subscriber"
    run_sim sg_msgpack "$RATE" --subscribe "$STREAM" "$SUB_FORMAT_FLAG" msgpack
else
    log "sensorgate: no MessagePack subscriber phase: device-sim has no --subscriber-format"
fi
stop_pid "$SG_PID"

log "sensorgate: idle connections ($IDLE)"
SG_IDLE=$(SENSORGATE_BIN=$SG timeout 300 "$BIN/idle_connections" "$IDLE" 2>/dev/null |
    sed -n 's/.*, \([0-9.]*\) KiB per idle device connection/\1/p' | tail -1)
echo "${SG_IDLE:-nan}" >"$TMP/sg.idle"

# ---------------------------------------------------------------- peers
start_mosquitto() {
    SRV_PORT=$(free_port)
    rm -rf "$TMP/mq"
    mkdir -p "$TMP/mq"
    cat >"$TMP/mq/mosquitto.conf" <<EOF
listener $SRV_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $TMP/mq/
max_inflight_messages 0
max_queued_messages 10000
max_connections -1
log_dest file $TMP/mq/mosquitto.log
EOF
    "$MOSQUITTO" -c "$TMP/mq/mosquitto.conf" >/dev/null 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    wait_port "$SRV_PORT" 20
    sleep 0.3
}

start_nats() {
    SRV_PORT=$(free_port)
    rm -rf "$TMP/nats"
    mkdir -p "$TMP/nats"
    "$NATS_SERVER" -js -a 127.0.0.1 -p "$SRV_PORT" -sd "$TMP/nats" -l "$TMP/nats/nats.log" >/dev/null 2>&1 &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    wait_port "$SRV_PORT" 20
    # The stream the subjects sensorgate.> are stored in (file storage).
    timeout 30 "$BIN/nats_peer" --port "$SRV_PORT" --create-stream >"$TMP/nats/stream.json"
    log "nats: stream $(jq -c . "$TMP/nats/stream.json")"
}

# One peer column: its server, its driver, its extra driver flags.
peer_setup() { # column
    case "$1" in
    mq) START=start_mosquitto PEER=$BIN/mqtt_peer PEER_FLAGS=() ;;
    mqb) START=start_mosquitto PEER=$BIN/mqtt_peer PEER_FLAGS=(--batch-payload) ;;
    nt) START=start_nats PEER=$BIN/nats_peer PEER_FLAGS=() ;;
    ntb) START=start_nats PEER=$BIN/nats_peer PEER_FLAGS=(--batch-payload) ;;
    esac
}

run_peer() { # name, rate, extra args...
    local name=$1 rate=$2
    shift 2
    measured "$SRV_PID" "$name" "$PEER" --port "$SRV_PORT" --devices "$DEVICES" --rate "$rate" \
        --batch "$BATCH" --duration "$SECS" --drain "$DRAIN" "${ALIGN[@]}" "${PEER_FLAGS[@]}" "$@"
}

# The server's RSS growth per silent connection of the peer's --idle mode.
peer_idle() { # column
    local col=$1 before after n i idle_pid
    $START
    before=$(status_kib "$SRV_PID" VmRSS)
    timeout 120 "$PEER" --port "$SRV_PORT" --idle "$IDLE" --duration 4 >"$TMP/${col}_idle.json" 2>/dev/null &
    idle_pid=$!
    PIDS+=("$idle_pid")
    for ((i = 0; i < 1200; i++)); do
        [ -s "$TMP/${col}_idle.json" ] && break
        kill -0 "$idle_pid" 2>/dev/null || break
        sleep 0.05
    done
    sleep 2
    after=$(status_kib "$SRV_PID" VmRSS)
    n=$(jq -r '.idle_connected // 0' "$TMP/${col}_idle.json" 2>/dev/null || echo 0)
    timeout 30 tail --pid="$idle_pid" -f /dev/null 2>/dev/null || true
    stop_pid "$SRV_PID"
    awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f\n", (a - b) / n; else print "nan" }' >"$TMP/$col.idle"
}

COLS=(sg)
for p in $PEERS; do
    case "$p" in
    mosquitto) COLS+=(mq) ;;
    mosquitto-batch) COLS+=(mqb) ;;
    nats) COLS+=(nt) ;;
    nats-batch) COLS+=(ntb) ;;
    *) log "unknown peer $p (mosquitto, mosquitto-batch, nats, nats-batch)"; exit 2 ;;
    esac
done

for col in "${COLS[@]:1}"; do
    peer_setup "$col"
    log "$col: publish, $DEVICES publishers x $RATE/s, ${SECS}s ${PEER_FLAGS[*]}"
    $START
    run_peer "${col}_ingest" "$RATE"
    for n in $SUBS; do
        log "$col: same load + $n subscriber(s)"
        run_peer "${col}_sub$n" "$RATE" --subscribe --subscribers "$n"
    done
    log "$col: half load + 1 subscriber"
    run_peer "${col}_half" "$HALF_RATE" --subscribe
    stop_pid "$SRV_PID"
    # Idle connections carry no payload: measured once per server.
    case "$col" in mq | nt)
        log "$col: idle connections ($IDLE)"
        peer_idle "$col"
        ;;
    esac
done

# ---------------------------------------------------------------- report
j() { jq -r "$2 // \"nan\"" "$TMP/$1.json" 2>/dev/null || echo nan; }
# One figure of one column's phase. sensorgate's report is device-sim's,
# the peers' is peer::report's.
fig() { # column, phase, kind
    local col=$1 name="$1_$2"
    case "$col:$3" in
    sg:acked_per_sec) j "$name" .readings_per_sec ;;
    sg:acked) j "$name" .acked_readings ;;
    sg:deliveries_per_sec) j "$name" .subscriber.deliveries_per_sec ;;
    sg:dropped) j "$name" .subscriber.lagged ;;
    sg:p50 | sg:p99 | sg:p999) j "$name" ".subscriber.latency_us.$3" ;;
    *:dropped)
        awk -v p="$(j "$name" .published)" -v d="$(j "$name" .deliveries)" -v n="$(j "$name" .subscribers)" \
            'BEGIN { if (p == "nan" || d == "nan") print "nan"; else { x = p * n - d; print (x > 0 ? x : 0) } }'
        ;;
    *:p50 | *:p99 | *:p999) j "$name" ".latency_us.$3" ;;
    *) j "$name" ".$3" ;;
    esac
}
cpu_per_m() { # column, phase
    local t
    t=$(cat "$TMP/$1_$2.cpu" 2>/dev/null || echo nan)
    awk -v t="$t" -v k="$TCK" -v n="$(fig "$1" "$2" acked)" \
        'BEGIN { if (t != "nan" && n != "nan" && n > 0) printf "%.2f", t / k / n * 1e6; else print "nan" }'
}
rss_mib() { awk -v k="$(cat "$TMP/$1_$2.hwm" 2>/dev/null || echo nan)" 'BEGIN { if (k == "nan") print k; else printf "%.1f", k / 1024 }'; }
ms() { awk -v u="$1" 'BEGIN { if (u == "nan") print "nan"; else printf "%.1f", u / 1000 }'; }

rows=()
# label, higher-is-better (1/0), then how to get each column's value: a
# command run with the column appended.
row() {
    local label=$1 hib=$2 col values=()
    shift 2
    for col in "${COLS[@]}"; do values+=("$("$@" "$col")"); done
    rows+=("$label|$hib|$(
        IFS='|'
        echo "${values[*]}"
    )")
}
of() { fig "$3" "$1" "$2"; }                  # phase, kind, column
lat() { ms "$(fig "$3" "$1" "$2")"; }         # phase, quantile, column
cpu() { cpu_per_m "$2" "$1"; }                # phase, column
rss() { rss_mib "$2" "$1"; }                  # phase, column
idle_kib() { cat "$TMP/$1.idle" 2>/dev/null || echo nan; }

row "acked readings/s (no subscriber)" 1 of ingest acked_per_sec
for n in $SUBS; do
    row "acked readings/s ($n subscribers)" 1 of "sub$n" acked_per_sec
    row "deliveries/s ($n subscribers)" 1 of "sub$n" deliveries_per_sec
    row "readings dropped to slow subscribers ($n)" 0 of "sub$n" dropped
    for q in p50 p99 p999; do
        row "$q latency ms, full load, $n subscribers" 0 lat "sub$n" "$q"
    done
done
for q in p50 p99 p999; do
    row "$q latency ms, half load, 1 subscriber" 0 lat half "$q"
done
if [ -n "$SUB_FORMAT_FLAG" ]; then
    # Only sensorgate has this phase; the other columns read as nan.
    row "deliveries/s (1 MessagePack subscriber)" 1 of msgpack deliveries_per_sec
    for q in p50 p99 p999; do
        row "$q latency ms, full load, 1 MessagePack subscriber" 0 lat msgpack "$q"
    done
fi
row "server CPU s per 1M readings (no sub)" 0 cpu ingest
for n in $SUBS; do
    row "server CPU s per 1M readings ($n subscribers)" 0 cpu "sub$n"
done
for n in $SUBS; do
    row "server peak RSS MiB (full load, $n subscribers)" 0 rss "sub$n"
done
row "KiB per idle connection ($IDLE)" 0 idle_kib

label_of() {
    case "$1" in
    sg) echo "sensorgate" ;;
    mq) echo "Mosquitto" ;;
    mqb) echo "Mosquitto, batch msgs" ;;
    nt) echo "NATS JetStream" ;;
    ntb) echo "NATS JS, batch msgs" ;;
    esac
}

echo
echo "Workload ($SHAPE): $DEVICES devices/publishers x $RATE readings/s (half load: $HALF_RATE), batch $BATCH, ${SECS}s per phase, subscribers: $SUBS; $PHASES; CLK_TCK=$TCK"
echo "sensorgate: device-sim over WebSocket, storage.sync=batch (an ack follows the fdatasync of its group commit)."
echo "Mosquitto $($MOSQUITTO -h 2>&1 | head -1 | awk '{print $3}'): mqtt_peer, QoS 1, persistence true (written at autosave, not per message); JSON, one message per reading, or per batch (--batch-payload)."
echo "NATS $($NATS_SERVER --version 2>&1 | awk '{print $2}'): nats_peer, JetStream file stream, a publish counts at its PubAck. This Debian 2.9 acks once the message is in the page cache and fsyncs every two minutes (no sync_interval: always), so its ack promises less than sensorgate's."
echo
header="| figure |"
sep="|---|"
for col in "${COLS[@]}"; do
    header+=" $(label_of "$col") |"
    sep+="---|"
done
echo "$header best | sensorgate/best other |"
echo "$sep---|---|"
NAMES=$(for c in "${COLS[@]}"; do printf '%s|' "$(label_of "$c")"; done)
for r in "${rows[@]}"; do
    # Fields: label, higher-is-better, then one value per column
    # (sensorgate first). "best" names the best column; the ratio is
    # sensorgate over the best of the others.
    awk -v names="$NAMES" -v row="$r" '
    function better(a, b, h) { return h == 1 ? a + 0 > b + 0 : a + 0 < b + 0 }
    BEGIN {
        n = split(row, f, "|"); split(names, name, "|")
        h = f[2]; best = ""; ov = ""
        line = "| " f[1] " |"
        for (i = 3; i <= n; i++) {
            v = f[i]; line = line " " v " |"
            if (v == "nan") continue
            if (best == "" || better(v, bv, h)) { best = name[i - 2]; bv = v }
            if (i > 3 && (ov == "" || better(v, ov, h))) ov = v
        }
        ties = 0
        for (i = 3; i <= n; i++) if (f[i] != "nan" && f[i] + 0 == bv + 0) ties++
        if (ties > 1) best = "tie"
        ratio = (f[3] == "nan" || ov == "" || ov + 0 == 0) ? "n/a" : sprintf("%.2f", f[3] / ov)
        printf "%s %s | %s |\n", line, (best == "" ? "n/a" : best), ratio
    }'
done
echo
echo "Raw reports:"
for col in "${COLS[@]}"; do
    for name in ingest $(for n in $SUBS; do echo "sub$n"; done) half msgpack idle; do
        [ -e "$TMP/${col}_$name.json" ] || continue
        printf '%s: ' "${col}_$name"
        jq -c 'del(.rejected) | del(.ack_latency_us)' "$TMP/${col}_$name.json" 2>/dev/null || echo "(none)"
    done
done
