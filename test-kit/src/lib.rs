//! Test harness: a real daemon on 127.0.0.1:0 with its sled store in a temp
//! dir, and real WebSocket/HTTP clients. Shared by every integration test.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sensorgate::auth::{Authenticator, Role};
use sensorgate::config::Config;
use sensorgate::Daemon;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub config: Arc<Config>,
    pub dir: tempfile::TempDir,
}

/// A config for tests: loopback port 0, store in `dir`, limits generous
/// unless a test tightens them through `tweak`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::with_secret(SECRET);
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.storage.path = dir.join("store");
    c.limits.readings_per_sec = 1_000_000;
    c.limits.burst = 1_000_000;
    c.limits.handshakes_per_ip = 10_000;
    c
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> TestDaemon {
        let config = Arc::new(config);
        let daemon = Daemon::start(config.clone()).await.expect("daemon starts");
        TestDaemon {
            daemon: Some(daemon),
            config,
            dir,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.daemon.as_ref().unwrap().local_addr()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn token(&self, role: Role, sub: &str) -> String {
        Authenticator::new(&self.config.auth.jwt_secret).mint(
            role,
            sub,
            Some(Duration::from_secs(3600)),
            None,
        )
    }

    /// Connects device `sub` and returns the socket and its welcome.
    pub async fn device(&self, sub: &str) -> (Ws, Value) {
        let mut ws = self
            .connect_ingest(&self.token(Role::Device, sub))
            .await
            .expect("device connects");
        let welcome = recv_frame(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    pub async fn connect_ingest(
        &self,
        token: &str,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}/v1/ingest", self.addr())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }

    /// Stored readings via `GET /v1/readings` (all of them, following `next`).
    pub async fn stored(&self, topic: &str) -> Vec<Value> {
        stored_matching(&self.addr().to_string(), topic).await
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

pub fn mp(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

/// A batch of `n` numeric readings on `sensor`.
pub fn batch(seq: Option<u64>, sensor: &str, n: usize) -> Value {
    let readings: Vec<Value> = (0..n)
        .map(|i| json!({"sensor": sensor, "ts": 1_763_800_000_000_i64 + i as i64, "value": i as f64 + 0.5, "unit": "C"}))
        .collect();
    match seq {
        Some(s) => json!({"seq": s, "readings": readings}),
        None => json!({"readings": readings}),
    }
}

pub async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Binary(mp(v).into())).await.unwrap();
}

/// Next server frame, decoded from MessagePack to JSON (pings skipped).
pub async fn recv_frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10s")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Binary(b) => {
                return rmp_serde::from_slice(&b).expect("server frames are MessagePack")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Waits for the server to close the socket; returns the close code.
pub async fn recv_close(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("close within 10s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends raw bytes as one binary frame (for hand-built or broken MessagePack).
pub async fn send_bytes(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// Next server frame, which must be an `error` with `code`; returns it.
pub async fn recv_error(ws: &mut Ws, code: &str) -> Value {
    let e = recv_frame(ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], code, "{e}");
    assert!(e["detail"].is_string(), "{e}");
    e
}

/// A device token for `sub` signed with the test secret, with custom claims.
pub fn jwt(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Seconds since the Unix epoch, for `exp`/`nbf` claims.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A port that was free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port for a server (broker, daemon) that a test stops and starts again. It must not
/// come from the kernel's ephemeral range (as port 0 would): while the broker
/// is stopped, any other socket of this process (another test's daemon or
/// broker, a browser's outgoing connection) could be handed the same port, and the "restarted" broker would
/// then be someone else's. Ports below the ephemeral range, handed out once
/// per process from a counter and offset by the pid, cannot be taken that way.
pub fn restartable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Writes `dir/sensorgate.toml` for a child daemon on `port` with its store
/// in `dir/store`, generous limits, and `extra` appended; returns its path.
pub fn write_config(dir: &std::path::Path, port: u16, extra: &str) -> std::path::PathBuf {
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
shutdown_timeout = "5s"

[auth]
jwt_secret = "{SECRET}"

[limits]
readings_per_sec = 1000000
burst = 1000000
handshakes_per_ip = 10000

[storage]
path = "{store}"

[log]
level = "warn"
{extra}
"#,
        store = dir.join("store").display(),
    );
    let path = dir.join("sensorgate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Adds `keys` (TOML lines) to `[section]` of a config from [`write_config`]
/// (whose `extra` lands after its last section).
pub fn add_keys(config: &std::path::Path, section: &str, keys: &str) {
    let header = format!("[{section}]\n");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains(&header),
        "no {header} in {}",
        config.display()
    );
    std::fs::write(config, text.replace(&header, &format!("{header}{keys}"))).unwrap();
}

/// The `sensorgate` binary with no `SENSORGATE__*` overrides inherited.
pub fn sensorgate_cmd() -> std::process::Command {
    without_overrides(std::process::Command::new(env!("CARGO_BIN_EXE_sensorgate")))
}

/// `cmd` with no `SENSORGATE__*` variable inherited from the test's environment.
pub fn without_overrides(mut cmd: std::process::Command) -> std::process::Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SENSORGATE__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child daemon, SIGKILLed when dropped (a failing test leaves nothing
/// running).
pub struct ChildDaemon {
    pub child: std::process::Child,
    pub port: u16,
}

impl ChildDaemon {
    /// Starts `sensorgate run --config <config>` (output appended to
    /// `log`) and waits until `/healthz` answers.
    pub async fn start(config: &std::path::Path, port: u16, log: &std::path::Path) -> ChildDaemon {
        Self::start_wrapped(&[], config, port, log).await
    }

    /// [`ChildDaemon::start`] under a wrapper command (`strace ...`): runs
    /// `wrapper... sensorgate run --config <config>`. `child` is then the
    /// wrapper; [`ChildDaemon::daemon_pid`] finds sensorgate itself.
    pub async fn start_wrapped(
        wrapper: &[&str],
        config: &std::path::Path,
        port: u16,
        log: &std::path::Path,
    ) -> ChildDaemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = match wrapper.split_first() {
            None => sensorgate_cmd(),
            Some((program, args)) => {
                let mut c = without_overrides(std::process::Command::new(program));
                c.args(args).arg(env!("CARGO_BIN_EXE_sensorgate"));
                c
            }
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning sensorgate");
        let mut d = ChildDaemon { child, port };
        d.wait_healthy(log).await;
        d
    }

    /// The pid of the sensorgate process: the child itself, or the child's
    /// child under a wrapper.
    pub fn daemon_pid(&self, wrapped: bool) -> u32 {
        let pid = self.child.id();
        if !wrapped {
            return pid;
        }
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("reading the wrapper's children");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the wrapper has a child")
    }

    async fn wait_healthy(&mut self, log: &std::path::Path) {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sensorgate exited early ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let ok = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no /healthz within 30s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then waits (polling, at most `within`, else the test fails
    /// with the daemon's `log`) for the exit; returns its code and how long
    /// it took.
    pub async fn sigterm(
        &mut self,
        within: Duration,
        log: &std::path::Path,
    ) -> (Option<i32>, Duration) {
        let sent = std::time::Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
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

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A WebSocket client on `/v1/ingest` of the daemon at `host:port` with a
/// device token for `sub` signed with the test secret.
pub async fn connect_device(base: &str, sub: &str) -> Ws {
    let token = Authenticator::new(SECRET).mint(Role::Device, sub, None, None);
    let mut req = format!("ws://{base}/v1/ingest")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("device connects")
        .0
}

/// Every stored reading of the daemon at `host:port`, via `/v1/readings`.
pub async fn stored_at(base: &str) -> Vec<Value> {
    stored_matching(base, "#").await
}

/// Every stored reading matching `topic` on the daemon at `base`
/// (`host:port`), page by page through `GET /v1/readings`.
pub async fn stored_matching(base: &str, topic: &str) -> Vec<Value> {
    let mut since = 0u64;
    let mut out = Vec::new();
    loop {
        let (items, next) = readings_page(base, topic, since, 10_000).await;
        // An empty page with `next > since`: the scan bound was hit with no
        // match; continue from `next` (docs/protocol.md).
        if items.is_empty() && next == since {
            return out;
        }
        since = next;
        out.extend(items);
    }
}

/// One `GET /v1/readings` page of the daemon at `base`: its items and `next`.
pub async fn readings_page(base: &str, topic: &str, since: u64, limit: u64) -> (Vec<Value>, u64) {
    let token = Authenticator::new(SECRET).mint(Role::Subscriber, "tests", None, None);
    let body: Value = reqwest::Client::new()
        .get(format!("http://{base}/v1/readings"))
        .query(&[
            ("topic", topic.to_string()),
            ("since", since.to_string()),
            ("limit", limit.to_string()),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = body["items"].as_array().unwrap().clone();
    (items, body["next"].as_u64().unwrap())
}

/// Opens `/v1/stream?{query}` with an optional bearer token, subprotocol
/// offer and `Origin`; returns the socket and the handshake response.
pub async fn connect_stream_with(
    addr: std::net::SocketAddr,
    query: &str,
    token: Option<&str>,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/v1/stream?{query}")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    if let Some(t) = token {
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(p) = protocol {
        h.insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        h.insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}

impl TestDaemon {
    /// A JSON subscriber on `/v1/stream?{query}` with a subscriber token.
    pub async fn subscriber(&self, query: &str) -> Ws {
        let token = self.token(Role::Subscriber, "web");
        connect_stream_with(self.addr(), query, Some(&token), None, None)
            .await
            .expect("subscriber connects")
            .0
    }
}

/// Next subscriber message: JSON text or MessagePack binary, as JSON.
pub async fn recv_msg(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20s")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("text frames are JSON"),
            Message::Binary(b) => {
                return rmp_serde::from_slice(&b).expect("binary frames are MessagePack")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Sends a JSON op as a text frame.
pub async fn send_op(ws: &mut Ws, op: &Value) {
    ws.send(Message::Text(op.to_string().into())).await.unwrap();
}

/// Reads `readings` frames until `n` items arrived; any other message fails.
pub async fn recv_items(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = recv_msg(ws).await;
        assert_eq!(m["type"], "readings", "{m}");
        out.extend(m["items"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(out.len(), n, "more items than expected");
    out
}

/// The ids of JSON items.
pub fn ids_of(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["id"].as_u64().unwrap()).collect()
}

/// Sends `batches` acked batches of `n` readings on `sensor` from an
/// already connected device, starting at `first_seq`; returns the next seq.
pub async fn publish_acked(
    ws: &mut Ws,
    first_seq: u64,
    batches: u64,
    sensor: &str,
    n: usize,
) -> u64 {
    for seq in first_seq..first_seq + batches {
        send(ws, &batch(Some(seq), sensor, n)).await;
        let ack = recv_frame(ws).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    first_seq + batches
}

/// This process's resident set size in KiB (Linux).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// One metric's value from the daemon at `base` (`host:port`): the sum over
/// its samples whose labels contain `labels`; 0 when absent.
pub async fn metric(base: &str, name: &str, labels: &str) -> f64 {
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

/// Batches of one device on a fresh store, every 5th one big enough (500
/// readings of 250-byte strings) that sled writes part of the store to
/// `blobs/` files: what the durability tests need to cover every file kind.
pub mod blob_batches {
    use serde_json::{json, Value};

    pub fn readings_in(seq: u64) -> u64 {
        if seq % 5 == 0 {
            500
        } else {
            20
        }
    }

    /// The newest id after batches `1..=seq`: ids are the running count of
    /// readings when one device's batches are stored in seq order.
    pub fn last_id_of(seq: u64) -> u64 {
        (1..=seq).map(readings_in).sum()
    }

    /// Batch `seq`; reading `i` has `ts = seq * 1000 + i`.
    pub fn batch_for(seq: u64) -> Value {
        let readings: Vec<Value> = (0..readings_in(seq))
            .map(|i| {
                let ts = (seq * 1000 + i) as i64;
                if seq % 5 == 0 {
                    json!({"sensor": "note", "ts": ts, "value": format!("{ts:0>250}")})
                } else {
                    json!({"sensor": "s", "ts": ts, "value": ts})
                }
            })
            .collect();
        json!({"seq": seq, "readings": readings})
    }

    /// [`super::write_config`] with a frame limit the big batches fit in.
    pub fn config_for(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
        let config = super::write_config(dir, port, "");
        super::add_keys(&config, "limits", "max_frame_bytes = \"1MiB\"\n");
        config
    }
}
