//! Hostile and broken peers cannot pin the daemon (SPEC §3, §8): half-sent
//! requests, peers that stop reading, and SIGTERM while they are connected.
//! Each test runs the real binary on loopback and asserts on what the
//! peers and `/metrics` see, with generous "eventually" bounds.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use sensorgate::auth::{Authenticator, Role};
use sensorgate_test_kit::*;
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
    // This process holds 2,000 sockets too.
    sensorgate::http::serve::raise_open_files_limit().unwrap();
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
    // Every one that is not open was refused at the cap or, on a machine
    // slow to open 2,000 sockets, closed by the header timeout first (which
    // made room under the cap for later ones).
    let rejected = "sensorgate_ingest_handshakes_rejected_total";
    let at_cap = metric(&base, rejected, "pending_per_ip").await;
    let timed_out = metric(&base, rejected, "\"timeout\"").await;
    assert!(at_cap > 0.0, "none refused at the per-address cap");
    assert!(
        at_cap + timed_out >= (2000 - sensorgate::http::serve::PENDING_PER_IP) as f64,
        "{at_cap} refused at the cap, {timed_out} timed out, {open} still open"
    );

    let (code, _) = d.sigterm(Duration::from_secs(3 + 3), &log).await;
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
    assert!(metric(&base, "sensorgate_ingest_pending_handshakes", "").await >= 1.0);
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
        metric(&base, "sensorgate_ingest_pending_handshakes", "").await == 0.0
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
    // First the kernel's send buffer fills (autotuned up to tcp_wmem's
    // maximum, 4 MiB on Debian, with ~20-byte duplicate acks: ~20 s here),
    // then one send waits `idle_timeout` and the socket is dropped.
    let idle = tokio::spawn(flood_without_reading(raw_device(&base, "idle").await));
    tokio::time::timeout(Duration::from_secs(90), idle)
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
    let (code, _) = d.sigterm(Duration::from_secs(3 + 3), &log).await;
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
        metric(&base, "sensorgate_fanout_subscribers", "").await == 1.0
    })
    .await;

    // A device keeps storing readings (and reading its acks) meanwhile.
    let mut ws = connect_device(&base, "d1").await;
    assert_eq!(recv_frame(&mut ws).await["type"], "welcome");
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&base, "sensorgate_fanout_subscribers", "").await != 0.0 {
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
    let (code, _) = d.sigterm(Duration::from_secs(3 + 3), &log).await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn stream_handshakes_are_rate_limited_per_ip_before_the_token() {
    let d = TestDaemon::start_with(|c| c.limits.handshakes_per_ip = 5).await;
    let (mut limited, mut unauthorized) = (0, 0);
    for _ in 0..30 {
        let status = reqwest::get(d.http("/v1/stream")).await.unwrap().status();
        match status.as_u16() {
            429 => limited += 1,
            401 => unauthorized += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        unauthorized >= 1 && limited >= 20,
        "{limited} × 429, {unauthorized} × 401"
    );
}

#[tokio::test]
async fn a_seq_at_or_above_2_63_is_invalid_and_does_not_brick_the_device() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("big").await;
    for seq in [1u64 << 63, u64::MAX] {
        send(&mut ws, &batch(Some(seq), "t", 1)).await;
        let e = recv_error(&mut ws, "invalid").await;
        assert_eq!(e["seq"].as_u64(), Some(seq), "{e}");
    }
    send(&mut ws, &batch(Some(1), "t", 1)).await;
    assert_eq!(
        recv_frame(&mut ws).await,
        serde_json::json!({"type": "ack", "seq": 1})
    );
    let max = (1u64 << 63) - 1;
    send(&mut ws, &batch(Some(max), "t", 1)).await;
    let e = recv_error(&mut ws, "out_of_order").await;
    assert_eq!(e["expected"], 2);
    // A reconnect still starts from the stored seq.
    drop(ws);
    let (_ws, welcome) = d.device("big").await;
    assert_eq!(welcome["last_seq"], 1);
}

#[tokio::test]
async fn duplicate_resends_are_counted_on_their_own() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("dup").await;
    send(&mut ws, &batch(Some(1), "t", 1)).await;
    assert_eq!(recv_frame(&mut ws).await["seq"], 1);
    for _ in 0..3 {
        send(&mut ws, &batch(Some(1), "t", 1)).await;
        assert_eq!(recv_frame(&mut ws).await["duplicate"], true);
    }
    let base = d.addr().to_string();
    assert!(metric(&base, "sensorgate_ingest_duplicate_batches_total", "").await >= 3.0);
    assert_eq!(d.stored("#").await.len(), 1);
}

/// Opens `/v1/ingest` by hand (so the test can write frames no client
/// library would) and reads past the HTTP response; returns the socket.
async fn raw_ingest(d: &TestDaemon, sub: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(d.addr()).await.unwrap();
    let req = format!(
        "GET /v1/ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {}\r\n\r\n",
        d.token(Role::Device, sub)
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Reads server frames until a close frame; returns its code (`None` when
/// the socket ends without one).
async fn raw_close_code(tcp: &mut TcpStream) -> Option<u16> {
    loop {
        let (b0, payload) = raw_frame(tcp).await?;
        if b0 & 0x0f == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// A client frame: FIN per `fin`, `opcode`, masked with a zero key unless
/// `masked` is false.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(mask_bit | payload.len() as u8);
    } else {
        f.push(mask_bit | 126);
        f.extend((payload.len() as u16).to_be_bytes());
    }
    if masked {
        f.extend([0, 0, 0, 0]);
    }
    f.extend(payload);
    f
}

#[tokio::test]
async fn protocol_violations_close_with_1002_and_bad_utf8_with_1007() {
    let d = TestDaemon::start().await;
    let mut rsv1 = client_frame(true, 0x2, b"hi", true);
    rsv1[0] |= 0x40;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("unmasked", client_frame(true, 0x2, b"hi", false), 1002),
        ("rsv1 without an extension", rsv1, 1002),
        (
            "reserved opcode 0x3",
            client_frame(true, 0x3, b"hi", true),
            1002,
        ),
        (
            "continuation with nothing to continue",
            client_frame(true, 0x0, b"hi", true),
            1002,
        ),
        (
            "ping of 200 bytes",
            client_frame(true, 0x9, &[0; 200], true),
            1002,
        ),
        (
            "fragmented ping",
            client_frame(false, 0x9, b"p", true),
            1002,
        ),
        (
            "text not UTF-8",
            client_frame(true, 0x1, &[0xff, 0xfe], true),
            1007,
        ),
    ];
    for (i, (what, frame, code)) in cases.into_iter().enumerate() {
        let mut tcp = raw_ingest(&d, &format!("v{i}")).await;
        tcp.write_all(&frame).await.unwrap();
        assert_eq!(raw_close_code(&mut tcp).await, Some(code), "{what}");
    }
}

/// RFC 6455 §5.5.1: a client's close is answered with a close carrying its
/// code, after a ping was answered with a pong carrying its payload.
#[tokio::test]
async fn pings_get_pongs_and_a_close_is_echoed() {
    let d = TestDaemon::start().await;
    let mut tcp = raw_ingest(&d, "echo").await;
    let (b0, _welcome) = raw_frame(&mut tcp).await.expect("a welcome");
    assert_eq!(b0, 0x82, "the welcome is one binary frame");
    tcp.write_all(&client_frame(true, 0x9, b"are you there", true))
        .await
        .unwrap();
    assert_eq!(
        raw_frame(&mut tcp).await,
        Some((0x8a, b"are you there".to_vec()))
    );
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend(b"done");
    tcp.write_all(&client_frame(true, 0x8, &close, true))
        .await
        .unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, Some(4000));
}

/// SPEC §10: a frame counts as activity, and so does one still arriving: a
/// device on a slow link whose batch takes longer than
/// `server.idle_timeout` to arrive is not cut off as idle.
#[tokio::test]
async fn a_frame_still_arriving_counts_as_activity() {
    let d = TestDaemon::start_with(|c| {
        c.server.idle_timeout = Duration::from_secs(1);
        c.server.ping_interval = Duration::from_millis(300);
    })
    .await;
    let mut tcp = raw_ingest(&d, "slow").await;
    let frame = client_frame(true, 0x2, &mp(&batch(Some(1), "t", 20)), true);
    // 4 pieces 600 ms apart: 1.8 s from the first byte to the last, never
    // a whole second without one.
    let step = frame.len().div_ceil(4);
    for (i, piece) in frame.chunks(step).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        tcp.write_all(piece).await.unwrap();
    }
    // The welcome, pings we never answered, then the ack.
    let mut binary = Vec::new();
    while binary.len() < 2 {
        match raw_frame(&mut tcp).await {
            Some((0x82, payload)) => binary.push(payload),
            Some((0x89, _)) => continue,
            other => panic!("{other:?}: closed as idle?"),
        }
    }
    let ack: serde_json::Value = rmp_serde::from_slice(&binary[1]).unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seq"], 1);
}

/// One server frame: its first byte and its payload (`None` once the
/// socket has ended).
async fn raw_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let b0 = tcp.read_u8().await.ok()?;
    let len = match tcp.read_u8().await.ok()? & 0x7f {
        126 => tcp.read_u16().await.ok()? as usize,
        127 => tcp.read_u64().await.ok()? as usize,
        n => n as usize,
    };
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((b0, payload))
}

#[tokio::test]
async fn out_of_descriptors_accept_backs_off_and_healthz_comes_back() {
    use std::os::unix::process::CommandExt;
    const NOFILE: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let log = dir.path().join("sensorgate.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = sensorgate_cmd();
    cmd.args(["run", "--config"])
        .arg(&config)
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE as libc::rlim_t,
                rlim_max: NOFILE as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _d = ChildDaemon {
        child: cmd.spawn().unwrap(),
        port,
    };
    let base = format!("127.0.0.1:{port}");
    eventually("the daemon answers", || healthz(&base)).await;

    // Finished keep-alive requests hold a descriptor each but no handshake
    // place: more of them than the limit allows exhaust the descriptors.
    let mut held = Vec::new();
    for _ in 0..NOFILE + 100 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.4:0".parse().unwrap()).unwrap();
        let mut tcp = sock.connect(base.parse().unwrap()).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);
    // Descriptors free again: served again, and the failed accepts were
    // retried with backoff, not in a tight loop.
    eventually("/healthz answers again", || healthz(&base)).await;
    let errors = metric(&base, "sensorgate_ingest_accept_errors_total", "").await;
    assert!(errors >= 1.0, "accept ran out of descriptors");
    assert!(
        errors <= 50.0,
        "{errors} failed accepts in ~3 s: no backoff"
    );
}

/// A fleet reconnecting at once (after a restart, say) finds its
/// handshakes held by the kernel while the accept loop catches up, not
/// dropped: the listening socket's backlog is ACCEPT_BACKLOG, not std's 128.
/// The daemon is stopped (SIGSTOP) so that nothing is accepted; connects
/// past a full backlog get no SYN-ACK and would only be retried after the
/// kernel's first SYN retransmit, one second later, so every connect is
/// given less than that.
#[tokio::test]
async fn a_reconnect_storm_is_held_in_the_backlog_not_dropped() {
    const STORM: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    sensorgate::http::serve::raise_open_files_limit().unwrap();
    let (mut d, _log) = start(dir.path(), "shutdown_timeout = \"3s\"").await;
    let base: std::net::SocketAddr = d.base().parse().unwrap();
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let connects = (0..STORM).map(|_| async move {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        tokio::time::timeout(Duration::from_millis(800), sock.connect(base)).await
    });
    let results = futures_util::future::join_all(connects).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let held: Vec<TcpStream> = results.into_iter().flatten().flatten().collect();
    assert_eq!(
        held.len(),
        STORM,
        "only {} of {STORM} handshakes completed while the daemon was stopped \
         (the kernel caps the backlog at net.core.somaxconn: {:?})",
        held.len(),
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").map(|s| s.trim().to_string())
    );
    drop(held);
    assert!(healthz(&d.base()).await);
    d.kill();
}
