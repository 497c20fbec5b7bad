//! sensorgate: authenticated WebSocket ingest of sensor readings into durable
//! storage, with live fan-out and an MQTT bridge. See `ARCHITECTURE.md` for
//! how the tasks and channels fit together.
//!
//! [`Daemon::start`] is the one entry point, used alike by `main` and by the
//! tests (on port 0). Shutdown has one path: cancel the daemon's token; the
//! edge (listener, connections) stops first and the pipeline behind it drains
//! as its inputs close.

pub mod auth;
pub mod bridge;
pub mod cli_docs;
pub mod config;
pub mod events;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod protocol;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod time;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::ingest::{DeviceLimiter, HandshakeLimiter, Ingest, Registry};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage.path {path}: {source}")]
    StorageDir {
        path: String,
        source: std::io::Error,
    },
    #[error("storage.path: opening the store: {0}")]
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
async fn close_store(store: Arc<Store>) {
    for _ in 0..200 {
        if Arc::strong_count(&store) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if Arc::strong_count(&store) > 1 {
        tracing::warn!(
            "store still referenced at shutdown; it closes when the last reference goes"
        );
    }
    let _ = tokio::task::spawn_blocking(move || drop(store)).await;
}

/// A running daemon.
pub struct Daemon {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Daemon {
    /// Opens the store, binds `server.listen` and starts serving. Returns
    /// once the daemon is ready (what `/readyz` and systemd's READY=1 mean).
    pub async fn start(config: Arc<Config>) -> Result<Daemon, StartError> {
        // TLS files are checked first: a bad path should fail fast, before the
        // store is opened or the port taken.
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key)?),
            _ => None,
        };
        let path = config.storage.path.clone();
        std::fs::create_dir_all(&path).map_err(|source| StartError::StorageDir {
            path: path.display().to_string(),
            source,
        })?;
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .expect("store open task")?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;

        // The fan-out hub: routes each commit to `/v1/stream` subscribers.
        let hub = fanout::Hub::new(config.fanout.subscriber_queue, config.fanout.slow_policy);
        // The MQTT bridge (off unless `mqtt.url`): the writer wakes it after
        // each commit; it drains after the writer at shutdown. With
        // `mqtt.relay` it hands other instances' readings to the hub.
        let bridge = bridge::Bridge::start(&config.mqtt, store.clone(), hub.clone()).await?;
        let mut listeners: Vec<Arc<dyn store::CommitListener>> = Vec::new();
        listeners.extend(bridge.as_ref().map(|b| b.listener()));
        let (seed_hub, seed_store) = (hub.clone(), store.clone());
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || seed_hub.seed_devices(&seed_store)).await
        {
            tracing::warn!(error = %e, "could not seed /v1/devices from the store");
        }
        listeners.push(hub.clone());

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (writer, writer_thread) = store::writer::spawn(
            store.clone(),
            config.storage.sync,
            config.storage.flush_interval,
            config.ingest.queue_capacity,
            listeners,
        );
        if let Some(period) = systemd::watchdog_period() {
            let queue = writer.sender().clone();
            tracker.spawn(systemd::watchdog(
                period,
                move || {
                    let queue = queue.clone();
                    async move { systemd::ping_writer(&queue, period).await }
                },
                systemd::notify_watchdog,
                shutdown.clone(),
            ));
        }
        let auth = Arc::new(Authenticator::new(&config.auth.jwt_secret));
        let limiter = DeviceLimiter::new(config.limits.readings_per_sec, config.limits.burst);
        let handshakes = HandshakeLimiter::new(config.limits.handshakes_per_ip);
        let ingest = Arc::new(Ingest {
            config: config.clone(),
            auth: auth.clone(),
            registry: Arc::new(Registry::default()),
            limiter: limiter.clone(),
            writer,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
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
        };

        tracker.spawn(store::retention::run(
            store.clone(),
            config.storage.retention,
            config.storage.max_bytes,
            shutdown.clone(),
        ));
        tracker.spawn(ingest::limits::prune_forever(
            limiter,
            handshakes,
            shutdown.clone(),
        ));

        let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let grace = config.server.shutdown_timeout;
        let stop = shutdown.clone();
        let store_for_close = store.clone();
        let done = tokio::spawn(async move {
            let served = match tls {
                None => {
                    use axum::serve::ListenerExt;
                    // Acks and subscriber frames are small writes that must
                    // leave at once: with Nagle on, a frame written while the
                    // previous one is unacknowledged waits for the peer's
                    // delayed ACK (~40 ms on Linux).
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop.clone().cancelled_owned())
                        .await
                }
                Some(tls) => {
                    use axum::serve::ListenerExt;
                    // `tap_io` only makes axum's connect-info see the peer
                    // address of a custom listener.
                    let listener =
                        http::tls::TlsListener::new(listener, tls, stop.clone()).tap_io(|_| {});
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop.clone().cancelled_owned())
                        .await
                }
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "listener failed");
            }
            // The listener is closed; connections are closing with 1001 and
            // acking what becomes durable. Wait for them, then for the writer,
            // which ends once the last connection drops its queue handle.
            tracker.close();
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(?grace, "connections still open at server.shutdown_timeout");
            }
            let flushed = tokio::task::spawn_blocking(move || writer_thread.join());
            match tokio::time::timeout(grace.max(Duration::from_secs(1)), flushed).await {
                Ok(Ok(Ok(()))) => tracing::info!("store flushed; shut down cleanly"),
                Ok(_) => tracing::error!("writer thread failed during shutdown"),
                Err(_) => tracing::error!("writer did not finish within server.shutdown_timeout"),
            }
            // Hand the outbox to the broker if it is up, then disconnect.
            if let Some(bridge) = bridge {
                bridge.finish(grace).await;
            }
            close_store(store_for_close).await;
        });
        tracing::info!(addr = %local_addr, "sensorgate listening");
        Ok(Daemon {
            local_addr,
            shutdown,
            done,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the daemon (SPEC §8) and waits until it has drained.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the daemon stops (after its token is cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}
