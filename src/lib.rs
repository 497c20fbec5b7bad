//! sensorgate: authenticated WebSocket ingest of sensor readings into durable
//! storage, with live fan-out and an MQTT bridge. See `ARCHITECTURE.md` for
//! how the tasks and channels fit together.
//!
//! [`Daemon::start`] is the one entry point, used alike by `main` and by the
//! tests (on port 0). Shutdown has one path: cancel the daemon's token; the
//! edge (listener, connections) stops first and the pipeline behind it drains
//! as its inputs close, every stage against one deadline ([`shutdown`]).
//! Every task but the daemon's own (the accept loop, then the drain) is on
//! one of two trackers: `edge` (connections, upgraded WebSockets, the systemd
//! watchdog) and `pipeline` (retention, limiter pruning, the fan-out's
//! router, the MQTT bridge).

// The module docs are written for the engineer working on the daemon, and
// name the private functions and types that do the work: read them with
// `cargo doc --document-private-items` (CI builds them so, warnings denied).
#![allow(rustdoc::private_intra_doc_links)]

pub mod allocator;
pub mod auth;
pub mod bridge;
pub mod cli_docs;
pub mod config;
pub mod devices;
pub mod events;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod protocol;
pub mod shutdown;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod time;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::devices::DeviceBook;
use crate::ingest::{DeviceLimiter, HandshakeLimiter, Ingest, Registry};
use crate::shutdown::Shutdown;
use crate::store::{OpenOptions, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage.path {path}: {source}")]
    StorageDir {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("server.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] http::tls::TlsError),
    #[error("{0}")]
    Mqtt(#[from] bridge::BridgeError),
}

/// Waits (briefly) until this is the last handle on the store, so that when
/// [`Daemon::shutdown`] returns, sled has closed the database and released
/// its lock: a restart in the same process (tests) or a new process can open
/// it at once. axum drops a finished connection's service (which holds the
/// store) just after it reports the connection closed, hence the wait.
async fn close_store(store: Arc<Store>, deadline: Instant) {
    let waited = deadline.min(Instant::now() + Duration::from_secs(1));
    while Arc::strong_count(&store) > 1 && Instant::now() < waited {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if Arc::strong_count(&store) > 1 {
        tracing::warn!(
            "store still referenced at shutdown; it closes when the last reference goes"
        );
    }
    let closed = tokio::task::spawn_blocking(move || drop(store));
    if tokio::time::timeout_at(deadline, closed).await.is_err() {
        tracing::error!("closing the store did not finish by the shutdown deadline; abandoned");
    }
}

/// A running daemon.
pub struct Daemon {
    local_addr: SocketAddr,
    shutdown: Shutdown,
    done: JoinHandle<()>,
    store: std::sync::Weak<Store>,
}

/// Tells when a daemon has let go of its store ([`Daemon::released`]).
pub struct Released(std::sync::Weak<Store>);

impl Released {
    /// True once nothing holds the store any more: the writer thread ended
    /// and every task that used the store is gone.
    pub fn is_released(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl Daemon {
    /// Opens the store, binds `server.listen` and starts serving. Returns
    /// once the daemon is ready (what `/readyz` and systemd's READY=1 mean).
    pub async fn start(config: Arc<Config>) -> Result<Daemon, StartError> {
        Self::start_with(config, OpenOptions::default()).await
    }

    /// [`Daemon::start`] with options for opening the store (the operator's
    /// `--accept-data-loss`).
    pub async fn start_with(config: Arc<Config>, open: OpenOptions) -> Result<Daemon, StartError> {
        // TLS files are checked first: a bad path should fail fast, before the
        // store is opened or the port taken.
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(http::tls::acceptor(cert, key)?),
            _ => None,
        };
        let path = config.storage.path.clone();
        std::fs::create_dir_all(&path).map_err(|source| StartError::StorageDir {
            path: path.display().to_string(),
            source,
        })?;
        // The device book behind `/v1/devices`: seeded as the start reads
        // back the newest stored readings, then fed by the writer after
        // every commit.
        let devices = Arc::new(DeviceBook::default());
        let book = devices.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_seeing(&path, open, &*book))
            .await
            .expect("store open task")?;
        let listener =
            http::serve::bind(config.server.listen).map_err(|source| StartError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;

        // The fan-out hub: routes each commit to `/v1/stream` subscribers.
        let hub = fanout::Hub::new(config.fanout.subscriber_queue, config.fanout.slow_policy);
        hub.stored_before_start(store.last_id());
        // The MQTT bridge (off unless `mqtt.url`): the writer wakes it after
        // each commit; it drains after the writer at shutdown. With
        // `mqtt.relay` it hands other instances' readings to the hub.
        let shutdown = Shutdown::new(config.server.shutdown_timeout);
        let (edge, pipeline) = (TaskTracker::new(), TaskTracker::new());
        let bridge =
            bridge::Bridge::start(&config.mqtt, store.clone(), hub.clone(), &pipeline).await?;
        let mut listeners: Vec<Arc<dyn store::CommitListener>> = Vec::new();
        listeners.extend(bridge.as_ref().map(|b| b.listener()));
        listeners.push(devices.clone());
        listeners.push(hub.spawn_router(&pipeline));

        let (writer, writer_thread) = store::writer::spawn(
            store.clone(),
            &config.storage,
            config.ingest.queue_capacity,
            listeners,
        );
        if let Some(period) = systemd::watchdog_period() {
            let queue = writer.sender().clone();
            // On the edge tracker: it holds a queue handle, which must be
            // gone before the writer can drain and end.
            edge.spawn(systemd::watchdog(
                period,
                move || {
                    let queue = queue.clone();
                    async move { systemd::ping_writer(&queue, period).await }
                },
                systemd::notify_watchdog,
                shutdown.token().clone(),
            ));
        }
        let auth = Arc::new(Authenticator::new(&config.auth.jwt_secret));
        let limiter = DeviceLimiter::new(config.limits.readings_per_sec, config.limits.burst);
        let handshakes = HandshakeLimiter::new(config.limits.handshakes_per_ip);
        let ingest = Arc::new(Ingest {
            config: config.clone(),
            registry: Arc::new(Registry::default()),
            limiter: limiter.clone(),
            writer,
            shutdown: shutdown.clone(),
        });
        let state = http::AppState {
            config: config.clone(),
            auth,
            store: store.clone(),
            ingest,
            handshakes: handshakes.clone(),
            metrics: telemetry::metrics_handle(),
            bridge: bridge.as_ref().map(|b| b.status()),
            hub,
            devices,
            shutdown: shutdown.clone(),
            edge: edge.clone(),
        };

        pipeline.spawn(store::retention::run(
            store.clone(),
            config.storage.retention,
            config.storage.max_bytes,
            shutdown.token().clone(),
        ));
        pipeline.spawn(ingest::limits::prune_forever(
            limiter,
            handshakes,
            shutdown.token().clone(),
        ));

        let server = http::serve::Server {
            router: http::router(state),
            tls,
            gate: http::gate::Gate::new(http::serve::PENDING_PER_IP, http::serve::pending_total()),
            shutdown: shutdown.clone(),
            tracker: edge.clone(),
        };
        let weak_store = Arc::downgrade(&store);
        let stages = Stages {
            shutdown: shutdown.clone(),
            edge,
            pipeline,
            writer_thread,
            bridge,
            store,
        };
        let done = tokio::spawn(async move {
            http::serve::accept_loop(listener, server).await;
            stages.drain().await;
        });
        tracing::info!(addr = %local_addr, "sensorgate listening");
        Ok(Daemon {
            local_addr,
            shutdown,
            done,
            store: weak_store,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.token().clone()
    }

    /// Stops the daemon (SPEC §8) and waits until it has drained, which is
    /// by `server.shutdown_timeout` from now whatever any peer does.
    pub async fn shutdown(self) {
        self.shutdown.token().cancel();
        self.shutdown.deadline();
        let _ = self.done.await;
    }

    /// A probe for when the store is released. A daemon dropped without
    /// [`Daemon::shutdown`] (its runtime ended) still drains its writer,
    /// which writes into the store's directory: whoever removes that
    /// directory waits for this first.
    pub fn released(&self) -> Released {
        Released(self.store.clone())
    }

    /// The shutdown deadline (fixed when shutdown begins).
    pub fn deadline(&self) -> Instant {
        self.shutdown.deadline()
    }
}

/// What runs behind the listener, stopped in order at shutdown.
struct Stages {
    shutdown: Shutdown,
    edge: TaskTracker,
    pipeline: TaskTracker,
    writer_thread: std::thread::JoinHandle<()>,
    bridge: Option<bridge::Bridge>,
    store: Arc<Store>,
}

impl Stages {
    /// After the listener closed: connections close with 1001 and ack what
    /// becomes durable until the drain deadline; then the writer (it ends
    /// once the last connection drops its queue handle), the bridge and the
    /// store, all by the one deadline. What is still running then is
    /// abandoned and logged; acked readings are already durable.
    async fn drain(self) {
        let deadline = self.shutdown.deadline();
        self.edge.close();
        let drain_by = self.shutdown.drain_deadline();
        if tokio::time::timeout_at(drain_by, self.edge.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.edge.len(),
                "connections still open at the drain deadline; abandoned"
            );
        }
        let writer_thread = self.writer_thread;
        let flushed = tokio::task::spawn_blocking(move || writer_thread.join());
        match tokio::time::timeout_at(deadline, flushed).await {
            Ok(Ok(Ok(()))) => tracing::info!("store flushed; shut down cleanly"),
            Ok(_) => tracing::error!("writer thread failed during shutdown"),
            Err(_) => tracing::error!(
                "writer did not finish by the shutdown deadline; abandoned (acked readings are durable)"
            ),
        }
        // Hand the outbox to the broker if it is up, then disconnect.
        if let Some(bridge) = self.bridge {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout_at(deadline, bridge.finish(left))
                .await
                .is_err()
            {
                tracing::error!("mqtt bridge did not stop by the shutdown deadline; abandoned");
            }
        }
        self.pipeline.close();
        if tokio::time::timeout_at(deadline, self.pipeline.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.pipeline.len(),
                "background tasks abandoned at shutdown"
            );
        }
        close_store(self.store, deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §8 "whatever any peer does": a writer stuck in sled and a
    /// connection that never ends are abandoned at the one deadline.
    #[tokio::test]
    async fn stuck_stages_are_abandoned_at_the_shutdown_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let held = store.clone();
        let writer_thread = std::thread::spawn(move || {
            let _ = stuck.recv();
            drop(held);
        });
        let grace = Duration::from_millis(500);
        let shutdown = Shutdown::new(grace);
        let stages = Stages {
            shutdown: shutdown.clone(),
            edge: TaskTracker::new(),
            pipeline: TaskTracker::new(),
            writer_thread,
            bridge: None,
            store,
        };
        stages.edge.spawn(std::future::pending::<()>());
        stages.pipeline.spawn(std::future::pending::<()>());
        shutdown.token().cancel();
        tokio::time::timeout(grace + Duration::from_secs(5), stages.drain())
            .await
            .expect("drain returns by the deadline although nothing finished");
        drop(release);
    }
}
