//! Every observable thing that happens in the daemon, one small type each,
//! whose `emit()` counts it (and logs it where a log line is useful)
//! together, so that logs and metrics never drift apart and every metric
//! name lives in this one file (after Vector's `internal_events`).
//! `docs/operations.md` lists the metrics from here.
//!
//! Naming: `sensorgate_<stage>_<what>`, stage one of `ingest`, `store`,
//! `fanout`, `mqtt` (the data flow of SPEC §1); counters end in `_total`,
//! durations are histograms in `_seconds`. No metric carries a device label
//! (unbounded cardinality); labels are small closed sets (`code`, `reason`,
//! `action`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};

const HANDSHAKES_REJECTED: &str = "sensorgate_ingest_handshakes_rejected_total";
const CONNECTIONS: &str = "sensorgate_ingest_connections_total";
const DEVICES_CONNECTED: &str = "sensorgate_ingest_devices_connected";
const BATCHES_ACCEPTED: &str = "sensorgate_ingest_batches_accepted_total";
const QUEUE_WAIT: &str = "sensorgate_ingest_queue_wait_seconds";
const OUTCOME_WAIT: &str = "sensorgate_ingest_outcome_wait_seconds";
const FRAMES_REJECTED: &str = "sensorgate_ingest_frames_rejected_total";
const COMMIT_BATCHES: &str = "sensorgate_store_commit_batches";
const COMMIT_SECONDS: &str = "sensorgate_store_commit_seconds";
const FLUSH_SECONDS: &str = "sensorgate_store_flush_seconds";
const READINGS_STORED: &str = "sensorgate_store_readings_stored_total";
const PRUNED_BYTES: &str = "sensorgate_store_pruned_bytes_total";
const SUBSCRIBERS: &str = "sensorgate_fanout_subscribers";
const DELIVERIES: &str = "sensorgate_fanout_deliveries_total";
const SLOW_SUBSCRIBERS: &str = "sensorgate_fanout_slow_subscribers_total";
const SKIPPED_READINGS: &str = "sensorgate_fanout_skipped_readings_total";
const MQTT_CONNECTED: &str = "sensorgate_mqtt_connected";
const MQTT_BACKLOG: &str = "sensorgate_mqtt_backlog";
const MQTT_PUBLISHED: &str = "sensorgate_mqtt_published_total";
const MQTT_PUBLISH_SECONDS: &str = "sensorgate_mqtt_publish_seconds";
const MQTT_DROPPED: &str = "sensorgate_mqtt_dropped_total";
const MQTT_RELAYED: &str = "sensorgate_mqtt_relayed_total";
const MQTT_RELAY_REJECTED: &str = "sensorgate_mqtt_relay_rejected_total";
const ACCEPT_ERRORS: &str = "sensorgate_ingest_accept_errors_total";
const PENDING_HANDSHAKES: &str = "sensorgate_ingest_pending_handshakes";
const WRITE_TIMEOUTS: &str = "sensorgate_ingest_write_timeouts_total";
const DUPLICATE_BATCHES: &str = "sensorgate_ingest_duplicate_batches_total";
const STORE_WRITABLE: &str = "sensorgate_store_writable";
const STORE_REFUSED: &str = "sensorgate_store_refused_batches_total";
const STORE_FAILURES: &str = "sensorgate_store_failures_total";

/// Bucket bounds of the duration histograms (seconds): 100 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Bucket bounds of the group commit size (batches), up to the writer's
/// `MAX_BATCHES_PER_COMMIT`.
pub const COMMIT_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// The histogram named [`COMMIT_BATCHES`], for its buckets.
pub const COMMIT_SIZE_METRIC: &str = COMMIT_BATCHES;

/// HELP and TYPE of every metric; called where the recorder is installed.
pub fn describe() {
    describe_counter!(
        HANDSHAKES_REJECTED,
        "Device handshakes refused before the upgrade, by reason (rate_limited, auth)."
    );
    describe_counter!(CONNECTIONS, "Device WebSocket connections accepted.");
    describe_gauge!(DEVICES_CONNECTED, "Devices connected right now.");
    describe_counter!(BATCHES_ACCEPTED, "Batches handed to the ingest queue.");
    describe_histogram!(
        QUEUE_WAIT,
        "Time a batch waited for room in the ingest queue (ingest.queue_capacity, ingest.enqueue_timeout_ms)."
    );
    describe_histogram!(
        OUTCOME_WAIT,
        "Time from a batch entering the ingest queue to its outcome reaching its connection: the writer's share of an ack's latency, the log's sync included."
    );
    describe_counter!(
        FRAMES_REJECTED,
        "Device frames answered with an error, by code (invalid, unsupported_frame, rate_limited, overloaded, out_of_order)."
    );
    describe_histogram!(
        COMMIT_BATCHES,
        "Requests (batches) taken into one group commit."
    );
    describe_histogram!(
        COMMIT_SECONDS,
        "Time to decide one group commit and write it to the write-ahead log, before its sync."
    );
    describe_histogram!(
        FLUSH_SECONDS,
        "Time of one durable point (the write-ahead log's fdatasync, or a checkpoint waited for); acks wait for it (storage.sync)."
    );
    describe_counter!(READINGS_STORED, "Readings stored durably.");
    describe_counter!(
        PRUNED_BYTES,
        "Bytes of readings removed by retention (storage.retention, storage.max_bytes)."
    );
    describe_gauge!(SUBSCRIBERS, "Live /v1/stream subscribers.");
    describe_counter!(DELIVERIES, "Readings queued to live subscribers.");
    describe_counter!(
        SLOW_SUBSCRIBERS,
        "Subscribers that fell behind (fanout.slow_policy), by action: lagged (skipped forward with a notice) or disconnected (closed with 4008)."
    );
    describe_counter!(
        SKIPPED_READINGS,
        "Readings skipped for subscribers that fell behind (fanout.subscriber_queue)."
    );
    describe_gauge!(
        MQTT_CONNECTED,
        "1 while the MQTT bridge is connected to its broker."
    );
    describe_gauge!(
        MQTT_BACKLOG,
        "Stored readings not yet acknowledged by the broker (mqtt.max_backlog)."
    );
    describe_counter!(
        MQTT_PUBLISHED,
        "Readings the broker acknowledged (PUBACK; written, at QoS 0)."
    );
    describe_histogram!(
        MQTT_PUBLISH_SECONDS,
        "Time from writing a QoS 1 publish to its PUBACK."
    );
    describe_counter!(
        MQTT_DROPPED,
        "Outbox readings dropped unpublished, by reason (backlog, retention)."
    );
    describe_counter!(
        MQTT_RELAYED,
        "Readings of other instances delivered to local subscribers (mqtt.relay)."
    );
    describe_counter!(
        MQTT_RELAY_REJECTED,
        "Relayed MQTT messages dropped, by reason (malformed, topic, no_origin)."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "Failed accepts on the listener (out of descriptors, say); the accept loop backs off."
    );
    describe_gauge!(
        PENDING_HANDSHAKES,
        "Connections accepted whose TLS handshake or first request headers are not complete yet."
    );
    describe_counter!(
        WRITE_TIMEOUTS,
        "Peers closed because a socket write did not finish within server.idle_timeout, by peer (device, subscriber)."
    );
    describe_counter!(
        DUPLICATE_BATCHES,
        "Batches resent with a seq already stored (answered as duplicates, stored once)."
    );
    describe_gauge!(
        STORE_WRITABLE,
        "1 while the store accepts writes, 0 while it refuses them (full disk, failed store); /readyz says why."
    );
    describe_counter!(
        STORE_REFUSED,
        "Batches refused with overloaded because the store could not take them, by reason (disk_full, store_failed)."
    );
    describe_counter!(
        STORE_FAILURES,
        "Store writes or syncs that failed; the store was closed and is reopened once possible."
    );
}

/// The listener failed to accept a connection.
pub struct AcceptFailed;

impl AcceptFailed {
    pub fn emit(self) {
        counter!(ACCEPT_ERRORS).increment(1);
    }
}

/// The number of connections still in their handshake changed.
pub struct PendingHandshakes(pub usize);

impl PendingHandshakes {
    pub fn emit(self) {
        gauge!(PENDING_HANDSHAKES).set(self.0 as f64);
    }
}

/// A peer's socket write timed out and the peer was closed.
pub struct WriteTimedOut {
    pub peer: &'static str,
}

impl WriteTimedOut {
    pub fn emit(self) {
        counter!(WRITE_TIMEOUTS, "peer" => self.peer).increment(1);
    }
}

/// A batch was resent with a seq already stored.
pub struct DuplicateBatch;

impl DuplicateBatch {
    pub fn emit(self) {
        counter!(DUPLICATE_BATCHES).increment(1);
    }
}

/// The store started or stopped refusing writes.
pub struct StoreWritable(pub bool);

impl StoreWritable {
    pub fn emit(self) {
        gauge!(STORE_WRITABLE).set(if self.0 { 1.0 } else { 0.0 });
    }
}

/// `batches` batches were refused because the store could not take them.
pub struct StoreRefused {
    pub reason: &'static str,
    pub batches: u64,
}

impl StoreRefused {
    pub fn emit(self) {
        counter!(STORE_REFUSED, "reason" => self.reason).increment(self.batches);
    }
}

/// A store write or sync failed.
pub struct StoreFailed;

impl StoreFailed {
    pub fn emit(self) {
        counter!(STORE_FAILURES).increment(1);
    }
}

/// A device handshake refused before the upgrade.
pub struct HandshakeRejected {
    pub reason: &'static str,
}

impl HandshakeRejected {
    pub fn emit(self) {
        counter!(HANDSHAKES_REJECTED, "reason" => self.reason).increment(1);
    }
}

/// Handles of the metrics emitted per batch, per group commit or per
/// broker acknowledgement, registered once. The macros look the name up in
/// the recorder's registry on every call and allocate a new handle each
/// time: on the writer thread that was 1.6 % of its time at goal 3
/// (BENCHMARKS.md, "Routing off the writer thread").
struct Hot {
    batches_accepted: Counter,
    queue_wait: Histogram,
    outcome_wait: Histogram,
    commit_batches: Histogram,
    commit_seconds: Histogram,
    flush_seconds: Histogram,
    readings_stored: Counter,
    deliveries: Counter,
    mqtt_backlog: Gauge,
    mqtt_published: Counter,
    mqtt_publish_seconds: Histogram,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// Registers the hot metrics' handles with the recorder just installed
/// (`telemetry::metrics_handle`). Until then, events go through the macros
/// to whatever recorder there is: a handle taken before the recorder was
/// installed would stay a no-op for good.
pub fn register_hot() {
    let _ = HOT.set(Hot {
        batches_accepted: counter!(BATCHES_ACCEPTED),
        queue_wait: histogram!(QUEUE_WAIT),
        outcome_wait: histogram!(OUTCOME_WAIT),
        commit_batches: histogram!(COMMIT_BATCHES),
        commit_seconds: histogram!(COMMIT_SECONDS),
        flush_seconds: histogram!(FLUSH_SECONDS),
        readings_stored: counter!(READINGS_STORED),
        deliveries: counter!(DELIVERIES),
        mqtt_backlog: gauge!(MQTT_BACKLOG),
        mqtt_published: counter!(MQTT_PUBLISHED),
        mqtt_publish_seconds: histogram!(MQTT_PUBLISH_SECONDS),
    });
}

/// Calls `$call` on a hot metric: on its registered handle, or on the
/// macro's lookup before [`register_hot`].
macro_rules! hot {
    ($field:ident, $kind:ident, $name:expr, $call:ident($arg:expr)) => {
        match HOT.get() {
            Some(hot) => hot.$field.$call($arg),
            None => $kind!($name).$call($arg),
        }
    };
}

/// A device connection was accepted.
pub struct DeviceConnected;

impl DeviceConnected {
    pub fn emit(self) {
        counter!(CONNECTIONS).increment(1);
    }
}

/// The number of connected devices changed.
pub struct DevicesConnected(pub usize);

impl DevicesConnected {
    pub fn emit(self) {
        gauge!(DEVICES_CONNECTED).set(self.0 as f64);
    }
}

/// A batch entered the ingest queue after waiting `queue_wait` for room.
pub struct BatchAccepted {
    pub queue_wait: Duration,
}

impl BatchAccepted {
    pub fn emit(self) {
        hot!(batches_accepted, counter, BATCHES_ACCEPTED, increment(1));
        hot!(
            queue_wait,
            histogram,
            QUEUE_WAIT,
            record(self.queue_wait.as_secs_f64())
        );
    }
}

/// A queued batch's outcome reached its connection `waited` after the batch
/// entered the ingest queue.
pub struct BatchDecided {
    pub waited: Duration,
}

impl BatchDecided {
    pub fn emit(self) {
        hot!(
            outcome_wait,
            histogram,
            OUTCOME_WAIT,
            record(self.waited.as_secs_f64())
        );
    }
}

/// A device frame was answered with an error.
pub struct FrameRejected {
    pub code: &'static str,
}

impl FrameRejected {
    pub fn emit(self) {
        counter!(FRAMES_REJECTED, "code" => self.code).increment(1);
    }
}

/// The writer applied one group commit of `batches` requests in `took`.
pub struct GroupCommitted {
    pub batches: usize,
    pub took: Duration,
}

impl GroupCommitted {
    pub fn emit(self) {
        hot!(
            commit_batches,
            histogram,
            COMMIT_BATCHES,
            record(self.batches as f64)
        );
        hot!(
            commit_seconds,
            histogram,
            COMMIT_SECONDS,
            record(self.took.as_secs_f64())
        );
    }
}

/// One store flush, successful or not, took `took`.
pub struct StoreFlushed {
    pub took: Duration,
}

impl StoreFlushed {
    pub fn emit(self) {
        hot!(
            flush_seconds,
            histogram,
            FLUSH_SECONDS,
            record(self.took.as_secs_f64())
        );
    }
}

/// Readings became durable.
pub struct ReadingsStored(pub usize);

impl ReadingsStored {
    pub fn emit(self) {
        hot!(
            readings_stored,
            counter,
            READINGS_STORED,
            increment(self.0 as u64)
        );
    }
}

/// Retention removed old readings.
pub struct RetentionPruned {
    pub segments: u64,
    pub bytes: u64,
}

impl RetentionPruned {
    pub fn emit(self) {
        counter!(PRUNED_BYTES).increment(self.bytes);
        tracing::info!(
            segments = self.segments,
            bytes = self.bytes,
            "retention pruned old readings"
        );
    }
}

/// The number of live subscribers changed.
pub struct SubscribersConnected(pub u64);

impl SubscribersConnected {
    pub fn emit(self) {
        gauge!(SUBSCRIBERS).set(self.0 as f64);
    }
}

/// Readings were queued to live subscribers.
pub struct Delivered(pub u64);

impl Delivered {
    pub fn emit(self) {
        hot!(deliveries, counter, DELIVERIES, increment(self.0));
    }
}

/// A subscriber's queue overflowed and `readings` were skipped for it.
pub struct ReadingsSkipped(pub u64);

impl ReadingsSkipped {
    pub fn emit(self) {
        counter!(SKIPPED_READINGS).increment(self.0);
    }
}

/// What happened to a subscriber that fell behind.
pub enum SlowSubscriber {
    /// Told with a `lagged` notice and skipped forward (`drop_oldest`).
    Lagged,
    /// Closed with 4008 (`disconnect`).
    Disconnected,
}

impl SlowSubscriber {
    pub fn emit(self) {
        let action = match self {
            SlowSubscriber::Lagged => "lagged",
            SlowSubscriber::Disconnected => "disconnected",
        };
        counter!(SLOW_SUBSCRIBERS, "action" => action).increment(1);
    }
}

/// The bridge's broker connection went up or down.
pub struct MqttConnection {
    pub up: bool,
}

impl MqttConnection {
    pub fn emit(self) {
        gauge!(MQTT_CONNECTED).set(if self.up { 1.0 } else { 0.0 });
    }
}

/// Stored readings the broker has not acknowledged yet.
pub struct MqttBacklog(pub u64);

impl MqttBacklog {
    pub fn emit(self) {
        hot!(mqtt_backlog, gauge, MQTT_BACKLOG, set(self.0 as f64));
    }
}

/// The broker took a reading: PUBACK after `latency` at QoS 1, `None` at
/// QoS 0 (written is delivered).
pub struct MqttPublished {
    pub latency: Option<Duration>,
}

impl MqttPublished {
    pub fn emit(self) {
        hot!(mqtt_published, counter, MQTT_PUBLISHED, increment(1));
        if let Some(latency) = self.latency {
            hot!(
                mqtt_publish_seconds,
                histogram,
                MQTT_PUBLISH_SECONDS,
                record(latency.as_secs_f64())
            );
        }
    }
}

/// Outbox readings left unpublished.
pub struct MqttDropped {
    pub readings: u64,
    pub reason: &'static str,
}

impl MqttDropped {
    pub fn emit(self) {
        counter!(MQTT_DROPPED, "reason" => self.reason).increment(self.readings);
        tracing::warn!(
            dropped = self.readings,
            reason = self.reason,
            "mqtt outbox readings dropped unpublished"
        );
    }
}

/// Another instance's reading was delivered to local subscribers.
pub struct MqttRelayed;

impl MqttRelayed {
    pub fn emit(self) {
        counter!(MQTT_RELAYED).increment(1);
    }
}

/// A relayed MQTT message was dropped.
pub struct MqttRelayRejected<'a> {
    pub reason: &'static str,
    pub topic: &'a str,
}

impl MqttRelayRejected<'_> {
    pub fn emit(self) {
        counter!(MQTT_RELAY_REJECTED, "reason" => self.reason).increment(1);
        tracing::debug!(topic = %self.topic, reason = self.reason, "mqtt relay: message dropped");
    }

    /// Shows the series in `/metrics` at zero from the start.
    pub fn register(reason: &'static str) {
        counter!(MQTT_RELAY_REJECTED, "reason" => reason).increment(0);
    }
}
