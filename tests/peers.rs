//! Hostile and broken peers cannot pin the daemon (SPEC §3, §8): half-sent
//! requests, peers that stop reading, and SIGTERM while they are connected.
//! Each test runs the real binary on loopback and asserts on what the
//! peers and `/metrics` see, with generous "eventually" bounds.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sensorgate::auth::{Authenticator, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A child daemon whose `[server]` section gets `server` (replacing the
/// harness's `shutdown_timeout`).
async fn start(dir: &Path, server: &str) -> (ChildDaemon, std::path::PathBuf) {
    let port = free_port();
    let config = write_config(dir, port, "");
    let toml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("shutdown_timeout = \"5s\"", server)
        .replace("level = \"warn\"", "level = \"info\"");
    std::fs::write(&config, toml).unwrap();
    let log = dir.join("sensorgate.log");
    (ChildDaemon::start(&config, port, &log).await, log)
}

/// Sends SIGTERM and waits (up to `within`) for the exit; returns the
/// exit code and how long it took.
async fn sigterm(d: &mut ChildDaemon, within: Duration, log: &Path) -> (Option<i32>, Duration) {
    let sent = Instant::now();
    kill(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM).unwrap();
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            return (status.code(), sent.elapsed());
        }
        assert!(
            sent.elapsed() < within,
            "still running {within:?} after SIGTERM: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP connection from `source` (another loopback address, so the
/// harness's own clients on 127.0.0.1 have their own per-IP budget) that
/// sends the start of an upgrade request and then nothing.
async fn half_sent(source: &str, base: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = sock.connect(base.parse().unwrap()).await.unwrap();
    let _ = tcp
        .write_all(b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await;
    tcp
}

/// Whether the server has closed `tcp` (EOF or reset after whatever it
/// sent), without waiting.
fn closed_by_server(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tcp.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// One metric's value from `/metrics` (the sum over its label sets that
/// contain `labels`), 0 when absent.
async fn metric(base: &str, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("http://{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to 30 s) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 30s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn healthz(base: &str) -> bool {
    reqwest::Client::new()
        .get(format!("http://{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn half_sent_requests_neither_starve_others_nor_hold_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, log) = start(dir.path(), "shutdown_timeout = \"3s\"").await;
    let base = d.base();
    let mut held = Vec::new();
    for _ in 0..2000 {
        held.push(half_sent("127.0.0.2", &base).await);
    }
    // Others are served meanwhile.
    assert!(healthz(&base).await);
    let mut ws = connect_device(&base, "d1").await;
    assert_eq!(recv_frame(&mut ws).await["type"], "welcome");
    send(&mut ws, &batch(Some(1), "t", 3)).await;
    assert_eq!(recv_frame(&mut ws).await["seq"], 1);
    // Past the per-address cap, connections were refused at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = held.iter().filter(|t| !closed_by_server(t)).count();
    assert!(
        open <= sensorgate::http::serve::PENDING_PER_IP,
        "{open} half-sent requests still open"
    );
    assert!(open > 0, "the first ones wait for their headers");
    assert!(
        metric(
            &base,
            "sensorgate_handshakes_rejected_total",
            "pending_per_ip"
        )
        .await
            >= (2000 - sensorgate::http::serve::PENDING_PER_IP) as f64
    );

    let (code, _) = sigterm(&mut d, Duration::from_secs(3 + 3), &log).await;
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("open-files limit"), "{text}");
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, _log) = start(dir.path(), "shutdown_timeout = \"3s\"").await;
    let base = _d.base();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(half_sent("127.0.0.3", &base).await);
    }
    // A bare connection that sends nothing is no different.
    held.push(TcpStream::connect(&base).await.unwrap());
    assert!(metric(&base, "sensorgate_pending_handshakes", "").await >= 1.0);
    for mut tcp in held {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            sensorgate::http::serve::HANDSHAKE_TIMEOUT + Duration::from_secs(10),
            tcp.read_to_end(&mut buf),
        )
        .await
        .expect("closed after the handshake timeout");
        assert!(read.is_err() || buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"));
    }
    eventually("no handshake pending", || async {
        metric(&base, "sensorgate_pending_handshakes", "").await == 0.0
    })
    .await;
}

/// Sends one batch, then the same seq again and again (each answered by a
/// duplicate ack) without ever reading; returns once a send fails (the
/// server dropped the connection).
async fn flood_without_reading(mut ws: Ws) {
    let frame = mp(&batch(Some(1), "t", 1));
    loop {
        if ws
            .send(Message::Binary(frame.clone().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn a_device_that_floods_and_never_reads_is_closed_by_idle_4001_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = "shutdown_timeout = \"3s\"\nidle_timeout = \"2s\"\nping_interval = \"500ms\"";
    let (mut d, log) = start(dir.path(), server).await;
    let base = d.base();

    // Idle: acks (and pings) pile up unread; the server gives up on it.
    let idle = tokio::spawn(flood_without_reading(raw_device(&base, "idle").await));
    tokio::time::timeout(Duration::from_secs(30), idle)
        .await
        .expect("the non-reading device is dropped after idle_timeout")
        .unwrap();

    // Replacement: the new connection is served and the old one is dropped.
    let old = tokio::spawn(flood_without_reading(raw_device(&base, "dup").await));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = connect_device(&base, "dup").await;
    assert_eq!(recv_frame(&mut new).await["type"], "welcome");
    tokio::time::timeout(Duration::from_secs(30), old)
        .await
        .expect("the replaced device is dropped")
        .unwrap();
    send(&mut new, &batch(Some(1), "t", 1)).await;
    assert_eq!(recv_frame(&mut new).await["seq"], 1);

    // Shutdown: a flooding, non-reading device does not delay the exit.
    let _stuck = tokio::spawn(flood_without_reading(raw_device(&base, "stuck").await));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _) = sigterm(&mut d, Duration::from_secs(3 + 3), &log).await;
    assert_eq!(code, Some(0));
}

/// A device connection whose welcome is left unread.
async fn raw_device(base: &str, sub: &str) -> Ws {
    connect_device(base, sub).await
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_closed_while_readings_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = "shutdown_timeout = \"3s\"\nidle_timeout = \"2s\"\nping_interval = \"500ms\"";
    let (mut d, log) = start(dir.path(), server).await;
    let base = d.base();
    let token = Authenticator::new(SECRET).mint(Role::Subscriber, "s", None, None);
    let mut req = format!("ws://{base}/v1/stream?topic=%23")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (_sub, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    eventually("the subscriber is registered", || async {
        metric(&base, "sensorgate_subscribers", "").await == 1.0
    })
    .await;

    // A device keeps storing readings (and reading its acks) meanwhile.
    let mut ws = connect_device(&base, "d1").await;
    assert_eq!(recv_frame(&mut ws).await["type"], "welcome");
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&base, "sensorgate_subscribers", "").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "non-reading subscriber still connected"
        );
        for _ in 0..20 {
            seq += 1;
            send(&mut ws, &batch(Some(seq), "t", 500)).await;
            assert_eq!(recv_frame(&mut ws).await["seq"], seq);
        }
    }
    assert!(seq > 0);
    let (code, _) = sigterm(&mut d, Duration::from_secs(3 + 3), &log).await;
    assert_eq!(code, Some(0));
}
