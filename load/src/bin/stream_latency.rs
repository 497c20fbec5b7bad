//! End-to-end fan-out: deliveries per second and device-to-subscriber
//! latency, through the real daemon over real WebSockets.
//!
//! The daemon runs in-process on 127.0.0.1:0 (`storage.sync = "batch"`: a
//! reading is fanned out only after the flush that made it durable). S JSON
//! subscribers on `#`; D devices each send `rate` readings per second in
//! batches of B with seq, carrying their send time (µs since the epoch) as
//! the value; each subscriber records now − value in an HDR histogram.
//! Subscribers, devices and daemon share the same two cores, so at high
//! subscriber counts the subscribers' own JSON parsing is part of the cost.
//!
//!   cargo run --release -p sensorgate-load --bin stream_latency -- SUBSCRIBERS DEVICES RATE BATCH SECONDS
//!
//! Defaults: 10 subscribers, 20 devices, 1000 readings/s each, batch 50, 10 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
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

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn main() {
    let subs = arg(1, 10) as usize;
    let devices = arg(2, 20) as usize;
    let rate = arg(3, 1000);
    let batch = arg(4, 50) as usize;
    let seconds = arg(5, 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(
        subs,
        devices,
        rate,
        batch,
        Duration::from_secs(seconds),
    ));
}

async fn run(subs: usize, devices: usize, rate: u64, batch: usize, duration: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sensorgate_load::daemon::unthrottled_config(dir.path());
    config.fanout.subscriber_queue = 1_000_000;
    let daemon = sensorgate::Daemon::start(Arc::new(config)).await.unwrap();
    let addr = daemon.local_addr();
    let auth = Authenticator::new(sensorgate_load::daemon::BENCH_SECRET);

    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let expected = devices as u64 * rate * duration.as_secs() / batch as u64 * batch as u64;
    let mut sub_tasks = Vec::new();
    for s in 0..subs {
        let token = auth.mint(Role::Subscriber, &format!("bench-sub{s}"), None, None);
        let url = format!("ws://{addr}/v1/stream?topic=%23&access_token={token}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
            .await
            .unwrap();
        // Wait for `subscribed` so every subscriber sees the whole run.
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "subscribed" {
                    break;
                }
            }
        }
        let hist = hist.clone();
        sub_tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut got, mut lagged) = (0u64, 0u64);
            let deadline = tokio::time::Instant::now() + duration + Duration::from_secs(10);
            while got + lagged < expected {
                let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(m))) => m,
                    _ => break,
                };
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("readings") => {
                        let now = now_us();
                        for item in v["items"].as_array().unwrap() {
                            let sent = item["value"].as_u64().unwrap_or(now);
                            local.record(now.saturating_sub(sent).max(1)).unwrap();
                            got += 1;
                        }
                    }
                    Some("lagged") => lagged += v["dropped"].as_u64().unwrap_or(0),
                    _ => {}
                }
            }
            hist.lock().unwrap().add(&local).unwrap();
            (got, lagged)
        }));
    }

    let started = Instant::now();
    let mut dev_tasks = Vec::new();
    for d in 0..devices {
        let token = auth.mint(Role::Device, &format!("bench{d}"), None, None);
        dev_tasks.push(tokio::spawn(async move {
            let mut req = format!("ws://{addr}/v1/ingest").into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let (mut tx, mut rx) = ws.split();
            let _welcome = rx.next().await;
            // Acks are drained but not awaited: the send schedule is fixed.
            tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let batches = rate * duration.as_secs() / batch as u64;
            let every = Duration::from_secs_f64(batch as f64 / rate as f64);
            let mut tick = tokio::time::interval(every);
            for seq in 1..=batches {
                tick.tick().await;
                let sent = now_us();
                let readings: Vec<Value> = (0..batch)
                    .map(|i| json!({"sensor": format!("s{}", i % 4), "ts": sent / 1000, "value": sent}))
                    .collect();
                let frame = rmp_serde::to_vec_named(&json!({"seq": seq, "readings": readings})).unwrap();
                tx.send(Message::Binary(frame.into())).await.unwrap();
            }
        }));
    }
    for t in dev_tasks {
        t.await.unwrap();
    }
    let (mut delivered, mut lagged) = (0u64, 0u64);
    for t in sub_tasks {
        let (g, l) = t.await.unwrap();
        delivered += g;
        lagged += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = hist.lock().unwrap().clone();
    println!(
        "stream_latency subscribers={subs} devices={devices} rate={rate}/s/device batch={batch}: \
         offered {} readings/s, {delivered} deliveries ({:.0}/s), lagged {lagged}, \
         latency p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms max {:.2} ms",
        devices as u64 * rate,
        delivered as f64 / elapsed,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
    daemon.shutdown().await;
}
