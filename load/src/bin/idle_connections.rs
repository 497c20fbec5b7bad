//! Memory per idle device connection.
//!
//! Starts the release `sensorgate` binary as a child process (so its RSS is
//! the daemon's alone), opens N device connections that receive their
//! welcome and then stay silent, and reports the daemon's RSS growth per
//! connection, read from `/proc/<pid>/status`. N is kept well under the
//! machine's 20,000 open-file limit (each connection is one fd on each
//! side, both in this machine).
//!
//! ```text
//! cargo build --release -p sensorgate -p sensorgate-load
//! target/release/idle_connections [connections]
//! ```
//!
//! Default: 5000 connections.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use sensorgate::auth::{Authenticator, Role};
use sensorgate_load::daemon::sensorgate_binary;
use sensorgate_load::peer::MAX_CONNECTIONS;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    assert!(
        n <= MAX_CONNECTIONS,
        "at most {MAX_CONNECTIONS} connections (open-file limit)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("sensorgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[auth]\njwt_secret = \"bench\"\n\
             [limits]\nhandshakes_per_ip = 100000\n[storage]\npath = \"{}\"\n[log]\nlevel = \"warn\"\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let daemon = sensorgate_binary().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(daemon)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let base = format!("http://127.0.0.1:{port}/healthz");
        for _ in 0..100 {
            if reqwest::get(&base).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(pid);
        let auth = Authenticator::new("bench");
        let mut conns = Vec::with_capacity(n);
        // Small client buffers so the load generator itself stays small.
        let client_cfg = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        for i in 0..n {
            let token = auth.mint(Role::Device, &format!("idle{i}"), None, None);
            let mut req = format!("ws://127.0.0.1:{port}/v1/ingest").into_client_request().unwrap();
            req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(client_cfg), false)
                .await
                .unwrap();
            let _welcome = ws.next().await;
            conns.push(ws);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        println!(
            "idle_connections n={n}: daemon RSS {before} KiB -> {after} KiB, {:.1} KiB per idle device connection",
            per / 1024.0
        );
        drop(conns);
    });
    let _ = child.kill();
    let _ = child.wait();
}
