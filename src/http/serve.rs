//! The accept loop and the HTTP/1.1 connections behind it (plain or TLS).
//!
//! Our own loop instead of `axum::serve`, because that one exposes no
//! bound on a peer's waits. Here:
//! - every accepted socket gets `TCP_NODELAY` (acks and subscriber frames
//!   are small writes that must leave at once, not wait ~40 ms for the
//!   peer's delayed ACK);
//! - before any TLS, parsing or token work a connection must pass the
//!   [`Gate`] (unfinished handshakes per IP and overall), and it must
//!   finish its TLS handshake and send its first request's headers within
//!   [`HANDSHAKE_TIMEOUT`]; later requests on a keep-alive connection get
//!   hyper's header-read timeout of the same length;
//! - `accept` failing for lack of descriptors (EMFILE/ENFILE) backs off
//!   (doubling up to [`MAX_ACCEPT_BACKOFF`]) instead of spinning; the
//!   descriptors freed by closing connections let `/healthz` in again;
//! - every connection task is in the daemon's [`TaskTracker`]; at shutdown
//!   the listener closes at once, requests in progress may finish until
//!   [`Shutdown::drain_deadline`], and whatever is still open then is
//!   dropped. Upgraded WebSockets hold a token of the same tracker and are
//!   bounded by their own loops ([`crate::ws`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::gate::{self, Gate, Pending};
use crate::shutdown::Shutdown;

/// How long a new connection has to finish TLS and send its first request's
/// headers, and a keep-alive connection to send the next request's headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Unfinished handshakes admitted per client address.
pub const PENDING_PER_IP: usize = 256;
/// Unfinished handshakes admitted overall (further bounded by the open-files
/// limit: see [`pending_total`]).
pub const PENDING_TOTAL: usize = 4096;
/// Connections the kernel may hold, handshake done, for the accept loop.
/// std's and mio's 128 overflowed when a fleet reconnected at once (after a
/// restart or an upgrade): past it the kernel drops handshakes, and each
/// device dropped waits out its SYN retransmits (1 s, then 3 s, 7 s...).
/// The kernel caps it at `net.core.somaxconn` (4096 by default since 5.4).
pub const ACCEPT_BACKLOG: u32 = 4096;
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Everything a connection task needs.
#[derive(Clone)]
pub struct Server {
    pub router: Router,
    pub tls: Option<TlsAcceptor>,
    pub gate: Gate,
    pub shutdown: Shutdown,
    pub tracker: TaskTracker,
}

/// The overall cap: [`PENDING_TOTAL`], but at most half the open-files limit
/// so that half-open peers alone can never exhaust descriptors.
pub fn pending_total() -> usize {
    let nofile = open_files_limit().map_or(1024, |(soft, _)| soft);
    PENDING_TOTAL.min((nofile / 2) as usize).max(1)
}

/// The listening socket on `addr`, with `SO_REUSEADDR` (a restart rebinds
/// while the last run's connections are in TIME_WAIT) and a backlog of
/// [`ACCEPT_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Accepts until shutdown, then returns (closing the listening socket).
pub async fn accept_loop(listener: TcpListener, server: Server) {
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = MIN_ACCEPT_BACKOFF;
                a
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Usually EMFILE/ENFILE. The pending connection stays in the
                // kernel's backlog; retrying at once would spin a core.
                crate::events::AcceptFailed.emit();
                tracing::warn!(error = %e, ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = server.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match server.gate.enter(peer.ip()) {
            Ok(pending) => {
                let s = server.clone();
                server.tracker.spawn(connection(tcp, peer, pending, s));
            }
            Err(why) => {
                tracing::debug!(%peer, ?why, "connection refused at the handshake gate");
                gate::refuse(tcp, why);
            }
        }
    }
}

/// Errors that concern only the one connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// One connection: TLS (if on), then HTTP/1.1 with upgrades.
async fn connection(tcp: TcpStream, peer: SocketAddr, pending: Pending, server: Server) {
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    match server.tls.clone() {
        None => http(tcp, peer, pending, handshake_deadline, server).await,
        Some(acceptor) => {
            let tls = tokio::select! {
                _ = server.shutdown.cancelled() => return,
                r = tokio::time::timeout_at(handshake_deadline, acceptor.accept(tcp)) => r,
            };
            match tls {
                Ok(Ok(tls)) => http(tls, peer, pending, handshake_deadline, server).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    pending: Pending,
    handshake_deadline: Instant,
    server: Server,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The first request's arrival ends the handshake: the service (called
    // only once hyper has parsed the headers) frees the gate's place.
    let (first_tx, mut first_rx) = oneshot::channel::<()>();
    let first = Arc::new(Mutex::new(Some((pending, first_tx))));
    let service =
        server
            .router
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                if let Some((pending, tx)) = first.lock().expect("first-request lock").take() {
                    drop(pending);
                    let _ = tx.send(());
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let (mut started, mut draining) = (false, false);
    loop {
        tokio::select! {
            // Our deadline first: hyper's header-read timer (the backstop
            // for later requests) starts a moment after it and can fire in
            // the same timer tick; checked in random order, hyper won about
            // half such ties and the timeout went uncounted.
            biased;
            _ = tokio::time::sleep_until(handshake_deadline), if !started => {
                tracing::debug!(%peer, "no request headers within the handshake timeout");
                crate::events::HandshakeRejected { reason: "timeout" }.emit();
                return;
            }
            _ = &mut first_rx, if !started => started = true,
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = server.shutdown.cancelled(), if !draining => {
                // Finish the request in progress (if any), then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep_until(server.shutdown.drain_deadline()), if draining => {
                tracing::debug!(%peer, "request still running at the shutdown deadline; dropped");
                return;
            }
        }
    }
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn open_files_limit() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-files limit to the hard one (every connection is a
/// descriptor; the common soft default of 1024 is far below what a fleet
/// needs). Returns the limits before and after.
#[allow(clippy::type_complexity)]
pub fn raise_open_files_limit() -> std::io::Result<((libc::rlim_t, libc::rlim_t), libc::rlim_t)> {
    let (soft, hard) = open_files_limit()?;
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(((soft, hard), open_files_limit()?.0))
}
