//! Device ingest: `GET /v1/ingest` (SPEC §3).
//!
//! Owns: the handshake checks (per-IP handshake rate, device JWT), the
//! one-connection-per-device registry, the per-device reading rate limit, and
//! the per-connection protocol loop that turns frames into queued batches and
//! writer outcomes into acks. Hands on: [`crate::store::WriteRequest`]s to the
//! bounded ingest queue; the store's writer decides and makes them durable.
//! Never: acks anything the writer has not reported durable, or buffers
//! without bound (a connection stops reading while its in-flight window is
//! full, and the queue is bounded).

mod connection;
pub mod limits;
pub mod registry;

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::store::WriterHandle;

pub use limits::{DeviceLimiter, HandshakeLimiter};
pub use registry::Registry;

/// Shared state of the ingest path, one per daemon.
pub struct Ingest {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub registry: Arc<Registry>,
    pub limiter: DeviceLimiter,
    pub writer: WriterHandle,
    pub shutdown: Shutdown,
    pub tracker: TaskTracker,
}

impl Ingest {
    /// Upgrades an authenticated device request and runs its connection
    /// until it closes. The task is tracked so shutdown can wait for its
    /// last acks.
    pub fn upgrade(self: &Arc<Self>, ws: WebSocketUpgrade, identity: Identity) -> Response {
        let limits = &self.config.limits;
        let ingest = self.clone();
        let token = self.tracker.token();
        ws
            // tungstenite reads into a buffer of this size, allocated up
            // front per connection (128 KiB by default). Frames are at most
            // `max_frame_bytes` and usually far smaller; 4 KiB keeps tens of
            // thousands of idle devices cheap, and the buffer grows as needed.
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(limits.max_frame_bytes)
            .max_frame_size(limits.max_frame_bytes)
            .on_upgrade(move |socket| async move {
                connection::run(socket, identity.sub.into(), ingest).await;
                drop(token);
            })
            .into_response()
    }
}
