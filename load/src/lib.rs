//! The load drivers' shared parts. The binaries in `src/bin/` are the
//! drivers `load.sh` runs: the peers (`mqtt_peer`, `nats_peer`) that put the
//! same workload on another server, and the in-process or child-process
//! sensorgate drivers (`ingest_throughput`, `stream_latency`,
//! `idle_connections`, `bridge`).
//!
//! This library owns what the two peers share, so both measure the same
//! thing the same way: arguments, the send schedule, payloads, counters,
//! latency histograms and the JSON report ([`peer`]); and where the
//! sensorgate binary is found ([`daemon`]). Nothing here contacts anything
//! but 127.0.0.1, and every loop is bounded in count and time.

pub mod daemon;
pub mod peer;
