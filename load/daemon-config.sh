# Sourced by load/load.sh and load/ab.sh: the daemon's config for load runs.
# storage.sync = "batch" (an ack follows the fdatasync of its group commit),
# limits out of the way, log level warn.
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
sync = "batch"
[log]
level = "warn"
EOF2
}
