# Shell helpers sourced by load/load.sh and load/ab.sh: ports, /proc
# readings and the daemon's config for load runs. Loopback only.

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

wait_ready() { # port, seconds: polls /readyz every 5 ms until it answers 200
    local i
    for ((i = 0; i < $2 * 200; i++)); do
        curl -sf --max-time 1 "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.005
    done
    log "127.0.0.1:$1 not ready after $2 s"
    return 1
}

cpu_ticks() { # utime + stime of a pid
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
status_kib() { # pid, field (VmHWM, VmRSS)
    awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}

# The daemon's config for load runs: storage.sync = "batch" (an ack follows
# the fdatasync of its group commit; STORAGE_SYNC=interval FLUSH_INTERVAL=2ms for the
# other mode), limits out of the way, log level warn.
# EXTRA_CONFIG, if set, is appended: TOML sections of its own, e.g.
# EXTRA_CONFIG=$'[fanout]\nsubscriber_queue = 50000'.
#
#   daemon_config PORT SECRET STORE_DIR > sensorgate.toml
daemon_config() {
    cat <<EOF2
[server]
listen = "127.0.0.1:$1"
[auth]
jwt_secret = "$2"
[limits]
readings_per_sec = 10000000
burst = 10000000
handshakes_per_ip = 100000
[storage]
path = "$3"
sync = "${STORAGE_SYNC:-batch}"
flush_interval = "${FLUSH_INTERVAL:-50ms}"
[log]
level = "warn"
EOF2
    if [ -n "${EXTRA_CONFIG:-}" ]; then
        printf '%s\n' "$EXTRA_CONFIG"
    fi
}

# A run's scratch: a temp dir (removed on exit, and the daemon in $PID
# killed), a free port, a secret and the daemon's config in the dir.
#
#   run_dir NAME   # sets TMP, PORT, SECRET, PID; writes $TMP/sensorgate.toml
run_dir() {
    TMP=$(mktemp -d "/tmp/sensorgate-$1.XXXXXX")
    PID=
    trap run_dir_cleanup EXIT
    PORT=$(free_port)
    SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    daemon_config "$PORT" "$SECRET" "$TMP/store" >"$TMP/sensorgate.toml"
}
# Writes back what other processes left in the page cache before a measured
# run or phase. A release build just linked leaves ~100 MiB of binaries
# dirty, and their writeback, some 30 s later, queues ahead of the daemon's
# fdatasyncs: 150 MiB left dirty before a 40 s run at goal 3's shape gave a
# device p999 of 25-28 ms against 2.6-2.7 ms after a `sync` (BENCHMARKS.md,
# "Someone else's writeback"). It costs a server that does not sync nothing.
settle_disk() {
    sync
}
# Starts a sensorgate binary on the run's config, its output in LOG, and
# sets PID (so that the run's cleanup kills it).
#
#   start_daemon BIN LOG
start_daemon() {
    "$1" run --config "$TMP/sensorgate.toml" >"$2" 2>&1 &
    PID=$!
}
run_dir_cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    rm -rf "$TMP"
}
