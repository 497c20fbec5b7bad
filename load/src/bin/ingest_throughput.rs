//! End-to-end ingest throughput: acked, durable readings per second.
//!
//! Starts the real daemon in-process on 127.0.0.1:0 with a temp sled store
//! (`storage.sync = "batch"`: every ack follows an fsync'd group commit), then
//! drives it with N device connections over real WebSockets, each keeping a
//! window of batches in flight, for a bounded time. Load generator and
//! daemon share the machine, as they would in a single-box test.
//!
//! ```text
//! cargo run --release -p sensorgate-load --bin ingest_throughput -- [devices] [batch] [window] [seconds]
//! ```
//!
//! Defaults: 32 devices, 500 readings per batch, 8 batches in flight, 10 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sensorgate::auth::{Authenticator, Role};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let devices = arg(1, 32) as usize;
    let batch = arg(2, 500) as usize;
    let window = arg(3, 8);
    let seconds = arg(4, 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(devices, batch, window, Duration::from_secs(seconds)));
}

async fn run(devices: usize, batch: usize, window: u64, duration: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sensorgate_load::daemon::unthrottled_config(dir.path());
    config.limits.max_readings_per_frame = batch.max(500);
    config.limits.max_frame_bytes = 4 * 1024 * 1024;
    let config = Arc::new(config);
    let daemon = sensorgate::Daemon::start(config.clone()).await.unwrap();
    let addr = daemon.local_addr();
    let auth = Authenticator::new(sensorgate_load::daemon::BENCH_SECRET);

    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in 0..devices {
        let token = auth.mint(Role::Device, &format!("bench{d}"), None, None);
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = format!("ws://{addr}/v1/ingest").into_client_request().unwrap();
            req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let _welcome = rx.next().await;
            // The readings are encoded once; each frame only prepends its seq,
            // so the load generator spends its CPU on sockets, not encoding.
            let readings: Vec<Value> = (0..batch)
                .map(|i| json!({"sensor": format!("s{}", i % 8), "ts": 1_763_800_000_000_i64 + i as i64, "value": i as f64 * 0.25}))
                .collect();
            let body = rmp_serde::to_vec_named(&readings).unwrap();
            let frame = |seq: u64| -> Vec<u8> {
                let mut f = Vec::with_capacity(body.len() + 24);
                rmp::encode::write_map_len(&mut f, 2).unwrap();
                rmp::encode::write_str(&mut f, "seq").unwrap();
                rmp::encode::write_uint(&mut f, seq).unwrap();
                rmp::encode::write_str(&mut f, "readings").unwrap();
                f.extend_from_slice(&body);
                f
            };
            let (mut next, mut done) = (1u64, 0u64);
            while next <= window {
                tx.send(Message::Binary(frame(next).into())).await.unwrap();
                next += 1;
            }
            while let Some(Ok(msg)) = rx.next().await {
                if let Message::Binary(b) = msg {
                    let v: Value = rmp_serde::from_slice(&b).unwrap();
                    assert_eq!(v["type"], "ack", "{v}");
                    done += 1;
                    acked.fetch_add(batch as u64, Ordering::Relaxed);
                    if Instant::now() < deadline {
                        tx.send(Message::Binary(frame(next).into())).await.unwrap();
                        next += 1;
                    } else if done + 1 == next {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = acked.load(Ordering::Relaxed);
    println!(
        "ingest_throughput devices={devices} batch={batch} window={window} sync=batch: {total} acked readings in {elapsed:.1}s = {:.0} readings/s",
        total as f64 / elapsed
    );
    daemon.shutdown().await;
}
