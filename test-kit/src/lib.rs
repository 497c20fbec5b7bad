//! The workspace's one test harness, a dev-only crate: the real daemon
//! (in-process on 127.0.0.1:0 or the built binary as a child process) with
//! its sled store in a temp dir, real WebSocket and HTTP clients, a real
//! Mosquitto ([`mosquitto`]) and a real headless Chromium ([`browser`]).
//! sensorgate's integration tests, its benches and device-sim's tests all
//! use it (`use sensorgate_test_kit::*;`).
//!
//! It panics instead of returning errors (a failed step is a failed test),
//! so it must stay out of every `[dependencies]` table.

mod child;
mod daemon;
mod http;
mod system;
mod ws;

pub mod big_batches;
pub mod browser;
pub mod mosquitto;

pub use child::*;
pub use daemon::*;
pub use http::*;
pub use system::*;
pub use ws::*;

use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The JWT secret of every test daemon's config.
pub const SECRET: &str = "test-secret";

/// A client WebSocket, plain or TLS.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
