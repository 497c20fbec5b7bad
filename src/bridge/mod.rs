//! The MQTT bridge (SPEC §6): store-and-forward publishing of every stored
//! reading to `<mqtt.topic_prefix>/<device>/<sensor>`.
//!
//! Owns: the outbox cursor (`m/bridge_cursor` in the store), the MQTT
//! connection, and the bridge state shown by `/readyz`.
//!
//! The outbox *is* the readings log past the cursor: storing a reading puts
//! it in the outbox at no extra write. The writer only wakes the bridge
//! ([`Wake`], a `Notify`); the bridge reads batches from the store, publishes
//! them in id order with at most [`WINDOW`] unacknowledged, and advances the
//! cursor over the contiguous prefix the broker acknowledged (PUBACK at QoS 1,
//! written to the socket at QoS 0). The cursor is persisted every
//! [`PERSIST_EVERY`] and at shutdown without a flush of its own, so after a
//! crash a few readings may be published again: at least once.
//!
//! Tasks: [`connection::run`] polls the rumqttc `EventLoop` continuously and
//! reconnects with backoff; [`Runner::run`] drives the outbox. Neither ever
//! blocks the writer or ingest: while the broker is down readings just stay
//! in the store, bounded by `mqtt.max_backlog` (past it the oldest are
//! skipped and counted in `sensorgate_mqtt_dropped_total`).
//!
//! Relay (`mqtt.relay`, SPEC §6): the connection subscribes to
//! `<prefix>/#` on every ConnAck and hands each incoming message to
//! [`relay_handler`], which delivers other instances' readings to the
//! fan-out hub, live only, and skips our own by their `origin`.
//!
//! Never: holds readings in memory beyond one read batch plus the window,
//! or calls sled from async code except through `spawn_blocking`.

mod connection;
mod outbox;
pub mod payload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, QoS};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{MqttConfig, Payload};
use crate::fanout::Hub;
use crate::store::{Commit, CommitListener, Store};

pub use connection::backoff;
use connection::{ConnEvent, Gate, OnPublish};
use outbox::Outbox;

/// Readings handed to the MQTT client and not yet acknowledged, at most.
/// Also rumqttc's `inflight`, so the client never has to queue on its own.
pub const WINDOW: usize = 256;
/// Readings read from the store at a time.
const READ_BATCH: usize = 1024;
/// How often the cursor is written to the store (and the backlog checked
/// while idle).
pub const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// Connection events waiting for the outbox: a few windows' worth; when full
/// the connection task waits, which only delays acks, never the writer.
const EVENT_QUEUE: usize = 4 * WINDOW;

/// The relay's subscription QoS (see docs/mqtt.md): at most once, since
/// relayed readings are live only and a clean session drops undelivered
/// messages at a reconnect anyway.
const RELAY_QOS: QoS = QoS::AtMostOnce;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("mqtt.url: mqtts: {0}")]
    Tls(String),
    #[error("storage.path: reading the bridge cursor: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The bridge state for `/readyz`, shared with the HTTP layer.
#[derive(Debug, Default)]
pub struct BridgeStatus {
    connected: AtomicBool,
    cursor: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl BridgeStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Readings dropped from the outbox since start-up (backlog overflow or
    /// deleted by retention before they were published).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Everything with `id <= cursor` has left the outbox.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// `{"connected", "backlog", "dropped", "last_error"}` given the store's
    /// newest id.
    pub fn to_json(&self, last_id: u64) -> serde_json::Value {
        json!({
            "connected": self.connected(),
            "backlog": last_id.saturating_sub(self.cursor()),
            "dropped": self.dropped(),
            "last_error": *self.last_error.lock().expect("status lock"),
        })
    }

    fn set_connected(&self, up: bool, error: Option<String>) {
        self.connected.store(up, Ordering::Release);
        crate::events::MqttConnection { up }.emit();
        if let Some(e) = error {
            *self.last_error.lock().expect("status lock") = Some(e);
        }
    }

    /// Readings left the outbox without being published: logged and counted
    /// together, here only.
    fn record_dropped(&self, n: u64, reason: &'static str) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        crate::events::MqttDropped {
            readings: n,
            reason,
        }
        .emit();
    }
}

/// The writer's hook: wakes the bridge after each durable commit. Never
/// blocks (a `Notify` permit).
pub struct Wake(Notify);

impl CommitListener for Wake {
    fn on_commit(&self, _readings: &Arc<Commit>) {
        self.0.notify_one();
    }
}

/// A running bridge.
pub struct Bridge {
    status: Arc<BridgeStatus>,
    wake: Arc<Wake>,
    drain: oneshot::Sender<Instant>,
    runner: JoinHandle<()>,
}

impl Bridge {
    /// Starts the bridge when `mqtt.url` is set; `None` when it is off.
    /// Must run inside the tokio runtime.
    /// With `mqtt.relay`, readings other instances publish go to `hub`.
    /// Its tasks are spawned on `tracker`.
    pub async fn start(
        cfg: &MqttConfig,
        store: Arc<Store>,
        hub: Arc<Hub>,
        tracker: &TaskTracker,
    ) -> Result<Option<Bridge>, BridgeError> {
        let Some(broker) = cfg.broker() else {
            return Ok(None);
        };
        let options = connection::options(cfg, &broker, WINDOW as u16)?;
        let s = store.clone();
        let cursor = tokio::task::spawn_blocking(move || -> Result<u64, BridgeError> {
            // First run on this store: publish what is stored from now on.
            // Readings stored before the bridge was ever enabled are not
            // published (see docs/mqtt.md).
            Ok(match s.bridge_cursor()? {
                Some(c) => c.min(s.last_id()),
                None => {
                    let c = s.last_id();
                    s.set_bridge_cursor(c)?;
                    c
                }
            })
        })
        .await
        .expect("cursor task")?;

        let status = Arc::new(BridgeStatus::default());
        status.cursor.store(cursor, Ordering::Release);
        crate::events::MqttConnection { up: false }.emit();
        // Room for the whole window plus a few control requests, so
        // `try_publish` within the window never finds the channel full.
        let (client, eventloop) = AsyncClient::new(options, WINDOW + 16);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let gate = Arc::new(Gate::default());
        let conn_stop = CancellationToken::new();
        let qos = if cfg.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let relay = cfg.relay.then(|| relay_handler(cfg, hub));
        let conn = tracker.spawn(connection::run(
            eventloop,
            client.clone(),
            gate.clone(),
            events_tx,
            status.clone(),
            cfg.max_backoff,
            relay
                .as_ref()
                .map(|_| (format!("{}/#", cfg.topic_prefix), RELAY_QOS)),
            relay,
            conn_stop.clone(),
        ));
        let wake = Arc::new(Wake(Notify::new()));
        let (drain, drain_rx) = oneshot::channel();
        let runner = Runner {
            store,
            status: status.clone(),
            wake: wake.clone(),
            client,
            gate,
            outbox: Outbox::new(cursor, WINDOW),
            epoch: None,
            qos,
            prefix: cfg.topic_prefix.clone(),
            payload: cfg.payload,
            origin: cfg.relay.then(|| cfg.client_id.clone()),
            max_backlog: cfg.max_backlog,
            persisted: cursor,
            last_persist: Instant::now(),
        };
        let runner = tracker.spawn(runner.run(events_rx, drain_rx, conn, conn_stop));
        tracing::info!(
            url = cfg.url.as_deref().unwrap_or(""),
            cursor,
            "mqtt bridge started"
        );
        Ok(Some(Bridge {
            status,
            wake,
            drain,
            runner,
        }))
    }

    /// The writer hook to register as a [`CommitListener`].
    pub fn listener(&self) -> Arc<dyn CommitListener> {
        self.wake.clone()
    }

    pub fn status(&self) -> Arc<BridgeStatus> {
        self.status.clone()
    }

    /// Shutdown (SPEC §8), once the writer has flushed: if the broker is up,
    /// keep publishing until the outbox is empty or `grace` has passed; then
    /// persist the cursor and disconnect. What is left stays in the outbox
    /// for the next start.
    pub async fn finish(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let _ = self.drain.send(deadline);
        // The runner bounds itself by the deadline; this is a backstop.
        let backstop = grace + Duration::from_secs(2);
        if tokio::time::timeout(backstop, self.runner).await.is_err() {
            tracing::error!("mqtt bridge did not stop in time");
        }
    }
}

/// The relay (`mqtt.relay`): what the connection task does with each
/// message on `<prefix>/#`. Another instance's reading goes to `hub` as a
/// live item with its origin; our own messages are skipped by their
/// `origin`; anything else is counted in
/// `sensorgate_mqtt_relay_rejected_total` and dropped. Runs on the
/// connection task and never blocks it: decoding plus
/// [`Hub::publish_relayed`], which only pushes to bounded queues.
fn relay_handler(cfg: &MqttConfig, hub: Arc<Hub>) -> OnPublish {
    let (format, prefix, own) = (cfg.payload, cfg.topic_prefix.clone(), cfg.client_id.clone());
    // The recorder is installed on first use; make sure it is before the
    // zero registration below.
    let _ = crate::telemetry::metrics_handle();
    for reason in [
        payload::Rejected::Malformed,
        payload::Rejected::Topic,
        payload::Rejected::NoOrigin,
    ] {
        // Registered at zero so the series shows in `/metrics` from the start.
        crate::events::MqttRelayRejected::register(reason.as_str());
    }
    Box::new(move |p| {
        match payload::relayed(format, &prefix, &own, &p.topic, &p.payload) {
            Ok(Some(r)) => {
                let origin = r.origin.unwrap_or_default();
                hub.publish_relayed(&origin, vec![r.reading]);
                crate::events::MqttRelayed.emit();
            }
            Ok(None) => {} // our own
            Err(reason) => {
                crate::events::MqttRelayRejected {
                    reason: reason.as_str(),
                    topic: &p.topic,
                }
                .emit();
            }
        }
    })
}

/// The outbox driver (one task).
struct Runner {
    store: Arc<Store>,
    status: Arc<BridgeStatus>,
    wake: Arc<Wake>,
    client: AsyncClient,
    gate: Arc<Gate>,
    outbox: Outbox,
    /// The connection publishes may go to; `None` while down.
    epoch: Option<u64>,
    qos: QoS,
    prefix: String,
    payload: Payload,
    origin: Option<String>,
    max_backlog: u64,
    persisted: u64,
    last_persist: Instant,
}

impl Runner {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<ConnEvent>,
        mut drain: oneshot::Receiver<Instant>,
        conn: JoinHandle<()>,
        conn_stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PERSIST_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<Instant> = None;
        loop {
            while let Ok(ev) = events.try_recv() {
                self.handle(ev);
            }
            let dropped = self
                .outbox
                .enforce_backlog(self.store.last_id(), self.max_backlog);
            self.status.record_dropped(dropped, "backlog");
            if self.epoch.is_some() {
                self.fill().await;
                self.publish();
            }
            let cursor = self.outbox.cursor();
            self.status.cursor.store(cursor, Ordering::Release);
            crate::events::MqttBacklog(self.store.last_id().saturating_sub(cursor)).emit();
            if let Some(deadline) = deadline {
                let drained = cursor >= self.store.last_id();
                if drained || self.epoch.is_none() || Instant::now() >= deadline {
                    if !drained {
                        tracing::warn!(
                            backlog = self.store.last_id() - cursor,
                            "mqtt outbox not empty at shutdown; kept for the next start"
                        );
                    }
                    break;
                }
            }
            if self.last_persist.elapsed() >= PERSIST_EVERY {
                self.persist().await;
            }
            let until = deadline.map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |d| d.max(Instant::now()),
            );
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break, // connection task gone
                },
                _ = self.wake.0.notified() => {}
                _ = tick.tick() => {}
                d = &mut drain, if deadline.is_none() => {
                    deadline = Some(d.unwrap_or_else(|_| Instant::now()));
                }
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
        self.persist().await;
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
        // Disconnect politely if connected, then stop the connection task.
        if self.epoch.is_some() {
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(ev) = events.recv().await {
                    if matches!(ev, ConnEvent::Disconnected) {
                        break;
                    }
                }
            })
            .await;
        }
        conn_stop.cancel();
        let _ = conn.await;
        self.status.set_connected(false, None);
        tracing::info!(cursor = self.outbox.cursor(), "mqtt bridge stopped");
    }

    fn handle(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Connected(epoch) => {
                self.outbox.reset();
                self.epoch = Some(epoch);
            }
            ConnEvent::Disconnected => {
                self.outbox.reset();
                self.epoch = None;
            }
            ConnEvent::Written(pkid) => {
                let qos0 = self.qos == QoS::AtMostOnce;
                self.outbox.written(pkid, qos0);
                if qos0 {
                    crate::events::MqttPublished { latency: None }.emit();
                }
            }
            ConnEvent::Acked(pkid) => {
                if let Some(latency) = self.outbox.acked(pkid) {
                    crate::events::MqttPublished {
                        latency: Some(latency),
                    }
                    .emit();
                }
            }
        }
    }

    /// Reads the next batch from the store when the ready queue runs low.
    async fn fill(&mut self) {
        if self.outbox.ready_len() >= READ_BATCH / 2 {
            return;
        }
        let upper = self.store.last_id();
        if upper <= self.outbox.next() {
            return;
        }
        let store = self.store.clone();
        let since = self.outbox.next();
        // sled's deserializer panics on some damaged pages: that is an
        // error to log and retry, like any other failed read.
        let read =
            tokio::task::spawn_blocking(move || store.read_since(since, READ_BATCH, |_| true))
                .await
                .unwrap_or_else(|e| {
                    Err(crate::store::StoreError::Corrupt {
                        key: format!("readings after id {since}"),
                        detail: e.to_string(),
                    })
                });
        match read {
            Ok(readings) => {
                let exhausted = readings.len() < READ_BATCH;
                let lost = self.outbox.extend(readings, upper, exhausted);
                self.status.record_dropped(lost, "retention");
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the mqtt outbox failed");
                *self.status.last_error.lock().expect("status lock") = Some(format!("store: {e}"));
            }
        }
    }

    /// Hands readings to the client while the window has room and the
    /// connection we think is up still is.
    fn publish(&mut self) {
        let Some(epoch) = self.epoch else {
            return;
        };
        while let Some(r) = self.outbox.peek_sendable() {
            let topic = payload::topic(&self.prefix, r);
            let bytes = payload::encode(self.payload, r, self.origin.as_deref());
            let client = &self.client;
            let qos = self.qos;
            let sent = self.gate.with_open(epoch, || {
                client.try_publish(topic, qos, false, bytes).is_ok()
            });
            if sent != Some(true) {
                return; // connection gone (event on its way) or client full
            }
            self.outbox.mark_sent();
        }
    }

    async fn persist(&mut self) {
        self.last_persist = Instant::now();
        let cursor = self.outbox.cursor();
        if cursor == self.persisted {
            return;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.set_bridge_cursor(cursor)).await {
            Ok(Ok(())) => self.persisted = cursor,
            Ok(Err(e)) => tracing::error!(error = %e, "persisting the mqtt cursor failed"),
            Err(e) => tracing::error!(error = %e, "cursor task panicked"),
        }
    }
}
