//! Device ingest: `GET /v1/ingest` (SPEC §3), after the handshake
//! ([`crate::http`] checks the per-IP handshake rate and the device JWT).
//!
//! Owns: the one-connection-per-device registry, the per-device reading rate
//! limit, and the per-connection protocol loop that turns frames into queued
//! batches and writer outcomes into acks ([`connection`]). Hands on:
//! [`crate::store::WriteRequest`]s to the bounded ingest queue; the store's
//! writer decides and makes them durable.
//! Never: acks anything the writer has not reported durable, or buffers
//! without bound (a connection stops reading while its in-flight window is
//! full, and the queue is bounded).

pub mod connection;
pub mod limits;
pub mod registry;

use std::sync::Arc;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::store::WriterHandle;

pub use limits::{DeviceLimiter, HandshakeLimiter};
pub use registry::Registry;

/// Shared state of the ingest path, one per daemon.
pub struct Ingest {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub limiter: DeviceLimiter,
    pub writer: WriterHandle,
    pub shutdown: Shutdown,
}
