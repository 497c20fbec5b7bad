//! Opening WebSocket connections to the daemon: one resolved target for the
//! whole run, a TCP connection per device (bound to a spread of 127.0.0.x
//! source addresses when one loopback address would run out of ephemeral
//! ports), then the handshake with the bearer token. Knows nothing of frames.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Connections per loopback source address: well under the ~28k ephemeral
/// ports Linux hands out per (source, destination) pair.
pub const PER_SOURCE_ADDR: usize = 20_000;

/// Where to connect, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// Bind connection `i` to 127.0.0.(1 + i / PER_SOURCE_ADDR).
    pub spread_sources: bool,
}

impl Target {
    pub async fn resolve(url: &str, connections: usize) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => bail!("{url}: wss:// is not supported by device-sim; use ws://"),
            _ => bail!("{url}: the URL must start with ws://"),
        }
        let host = uri.host().context("the URL has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            spread_sources: host == "127.0.0.1" && connections > PER_SOURCE_ADDR,
        })
    }
}

/// The loopback source address for connection `index` when spreading.
pub fn source_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, (1 + index / PER_SOURCE_ADDR).min(254) as u8)
}

/// Raises the open-files soft limit towards `want` (at most to the hard
/// limit): a fleet needs one descriptor per connection. Returns the limit
/// now in force.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return u64::MAX;
        }
        let want = want as libc::rlim_t;
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur as u64
}

#[cfg(not(unix))]
pub fn raise_fd_limit(_want: u64) -> u64 {
    u64::MAX
}

/// Why a connection attempt failed, and whether trying again can help.
#[derive(Debug)]
pub struct ConnectError {
    pub permanent: bool,
    pub detail: String,
}

/// How much a device connection reads from its socket at a time. What a
/// device receives is mostly acks of a few dozen bytes (and a welcome, and
/// now and then an error frame). tungstenite zero-fills its read buffer's
/// spare room before every read: with its default of 128 KiB that was an
/// eighth of device-sim's CPU (BENCHMARKS.md, "A lighter load
/// generator"), on cores it shares with the daemon it measures. Frames
/// bigger than this still arrive, over several reads.
pub const DEVICE_READ_BUFFER: usize = 4 * 1024;
/// The same for a subscriber, whose frames carry a commit's readings
/// (tens of KiB at the peak shapes).
pub const SUBSCRIBER_READ_BUFFER: usize = 32 * 1024;

/// Connects connection number `index` with `token` (empty: no token), as
/// a device.
pub async fn connect(target: &Target, index: usize, token: &str) -> Result<Ws, ConnectError> {
    connect_with(target, index, token, None, DEVICE_READ_BUFFER).await
}

/// [`connect`], asking for a WebSocket subprotocol (`sensorgate.msgpack`
/// for MessagePack subscriber frames) and reading up to `read_buffer`
/// bytes at a time.
pub async fn connect_with(
    target: &Target,
    index: usize,
    token: &str,
    subprotocol: Option<&str>,
    read_buffer: usize,
) -> Result<Ws, ConnectError> {
    let transient = |detail: String| ConnectError {
        permanent: false,
        detail,
    };
    let stream = if target.spread_sources {
        let source = source_addr(index);
        let socket = TcpSocket::new_v4().map_err(|e| transient(e.to_string()))?;
        socket
            .bind(SocketAddr::new(source.into(), 0))
            .map_err(|e| transient(format!("bind {source}: {e}")))?;
        socket.connect(target.addr).await
    } else {
        TcpStream::connect(target.addr).await
    }
    .map_err(|e| transient(format!("connect {}: {e}", target.addr)))?;
    let _ = stream.set_nodelay(true);
    let mut req = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError {
            permanent: true,
            detail: e.to_string(),
        })?;
    if let Some(p) = subprotocol {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            p.parse().map_err(|_| ConnectError {
                permanent: true,
                detail: format!("bad subprotocol {p}"),
            })?,
        );
    }
    // An empty token sends no header (public subscribers).
    if !token.is_empty() {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| ConnectError {
                    permanent: true,
                    detail: "the token is not a valid header value".into(),
                })?,
        );
    }
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ConnectError {
                // A bad token or a wrong role will not get better; a 429 or a
                // 5xx might.
                permanent: matches!(status, 400 | 401 | 403 | 404),
                detail: format!("HTTP {status} {body}"),
            })
        }
        Err(e) => Err(transient(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_loopback_addresses_by_twenty_thousand() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(19_999), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(20_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(usize::MAX / 2), Ipv4Addr::new(127, 0, 0, 254));
    }

    #[tokio::test]
    async fn only_big_fleets_on_127_0_0_1_spread() {
        let url = "ws://127.0.0.1:8750/v1/ingest";
        assert!(!Target::resolve(url, 20_000).await.unwrap().spread_sources);
        assert!(Target::resolve(url, 20_001).await.unwrap().spread_sources);
        let other = "ws://localhost:8750/v1/ingest";
        assert!(!Target::resolve(other, 50_000).await.unwrap().spread_sources);
        assert!(Target::resolve("wss://127.0.0.1/", 1).await.is_err());
        assert!(Target::resolve("http://127.0.0.1/", 1).await.is_err());
    }
}
