//! MQTT bridge publish rate: readings per second the bridge hands to a local
//! Mosquitto and gets acknowledged (PUBACK at QoS 1, written at QoS 0).
//!
//! For each QoS: stores N readings through the real ingest path while the
//! broker is down (the outbox fills), then starts the broker and times how
//! long the bridge takes to empty the outbox (`/readyz` backlog 0). Bridge,
//! broker and load share the machine.
//!
//! ```text
//! cargo run --release -p sensorgate-load --bin bridge -- [readings]
//! ```
//!
//! Default: 100000 readings, JSON payloads, no MQTT subscribers.

use std::time::{Duration, Instant};

use sensorgate_test_kit::mosquitto::Mosquitto;
use sensorgate_test_kit::*;

fn main() {
    let readings = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for qos in [1u8, 0] {
            let (secs, n) = run(qos, readings).await;
            println!(
                "bridge qos={qos}: {n} readings published in {secs:.2} s = {:.0} readings/s",
                n as f64 / secs
            );
        }
    });
}

async fn run(qos: u8, readings: u64) -> (f64, u64) {
    const PER_BATCH: u64 = 500;
    let mut broker = Mosquitto::start().await;
    broker.stop().await;
    let mut d = TestDaemon::start_with(|c| {
        c.mqtt.url = Some(broker.url());
        c.mqtt.client_id = format!("bench-{qos}-{}", std::process::id());
        c.mqtt.qos = qos;
        c.mqtt.max_backoff = Duration::from_millis(100);
        c.mqtt.max_backlog = readings * 2;
    })
    .await;
    let batches = readings.div_ceil(PER_BATCH);
    let (mut ws, _) = d.device("bench").await;
    let mut acked = 0;
    for seq in 1..=batches {
        send(&mut ws, &batch(Some(seq), "temp", PER_BATCH as usize)).await;
        // Keep a window of 16 batches in flight.
        if seq > 16 {
            recv_frame(&mut ws).await;
            acked += 1;
        }
    }
    while acked < batches {
        recv_frame(&mut ws).await;
        acked += 1;
    }
    let stored = batches * PER_BATCH;
    assert_eq!(backlog(&d).await, stored);

    let started = Instant::now();
    broker.run().await;
    let deadline = started + Duration::from_secs(300);
    while backlog(&d).await > 0 {
        assert!(Instant::now() < deadline, "bridge did not drain in 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    d.stop().await;
    (secs, stored)
}

async fn backlog(d: &TestDaemon) -> u64 {
    let body: serde_json::Value = reqwest::get(d.http("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["mqtt"]["backlog"].as_u64().unwrap()
}
