//! The Mosquitto side of `load/load.sh`: the same workload as device-sim's,
//! over MQTT at QoS 1 (a publish counts once its PUBACK arrived).
//!
//! Publishers: one connection per device, sending on device-sim's schedule
//! either one JSON reading per message (the shape of a sensorgate stream
//! item) or, with `--batch-payload`, one message per batch. With
//! `--subscribe`, `--subscribers N` QoS 1 subscribers on `sensorgate/#`
//! count deliveries and record now − send time (µs, carried in the payload).
//! Prints one JSON line (`sensorgate_load::peer::report`).
//!
//! With `--idle N`: opens N silent connections, prints `{"idle_connected":N}`
//! once all have their CONNACK, holds them for `--duration` s and exits (the
//! script reads the broker's RSS meanwhile).
//!
//!   mqtt_peer --port P --devices 50 --rate 2000 --batch 50 --duration 10 \
//!       [--batch-payload] [--subscribe [--subscribers 10]] [--drain 5]
//!   mqtt_peer --port P --idle 5000 --duration 5
//!
//! Every loop is bounded by the deadline; only 127.0.0.1 is contacted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use sensorgate_load::peer::report::{self, Counters, Meter};
use sensorgate_load::peer::schedule::{self, Plan, Publish};
use sensorgate_load::peer::PeerArgs;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// MQTT load against a broker on 127.0.0.1.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    peer: PeerArgs,
}

/// Unacknowledged QoS 1 publishes per connection (rumqttc's window).
const INFLIGHT: u16 = 1000;

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(INFLIGHT)
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// A publisher's client; its event loop runs in [`drive_publisher`].
struct MqttPublisher(AsyncClient);

impl Publish for MqttPublisher {
    const SEPARATOR: char = '/';

    async fn publish(&mut self, topic: &str, payload: Vec<u8>, _readings: u64) -> bool {
        self.0
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_ok()
    }
}

/// Polls a publisher's event loop, booking each PUBACK as the readings one
/// message of this run carries (every message of a run carries the same
/// number: 1, or the batch).
async fn drive_publisher(mut ev: EventLoop, per_message: u64, c: Arc<Counters>) {
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Incoming::PubAck(_))) => c.acked(per_message),
            Ok(_) => {}
            Err(_) => {
                c.error();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A subscriber on `sensorgate/#`; says so on `ready` at its SUBACK.
async fn subscribe(
    n: usize,
    port: u16,
    meter: Meter,
    ready: tokio::sync::oneshot::Sender<()>,
    c: Arc<Counters>,
) {
    let (client, mut ev) = AsyncClient::new(options(&format!("peer-sub{n}"), port), 64);
    let mut ready = Some(ready);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let _ = client.try_subscribe("sensorgate/#", QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => meter.on_message(&p.payload),
            Ok(_) => {}
            Err(_) => {
                c.error();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn load(args: &PeerArgs) -> anyhow::Result<serde_json::Value> {
    let c = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    // The subscribers first, so they see every publish.
    let port = args.port;
    let meters = schedule::start_subscribers(
        args.subscriber_count(),
        &c,
        &mut tasks,
        |n, meter, ready| subscribe(n, port, meter, ready, c.clone()),
    )
    .await?;

    let start = Instant::now();
    let plan = Plan::new(args);
    let mut publishers = JoinSet::new();
    for n in 1..=args.devices {
        let (client, ev) = AsyncClient::new(options(&format!("peer-sim-{n}"), args.port), 256);
        tasks.spawn(drive_publisher(ev, args.readings_per_message(), c.clone()));
        publishers.spawn(schedule::publish_on_schedule(
            plan,
            n,
            MqttPublisher(client),
            c.clone(),
        ));
    }
    // Keep the connections open until the acks are in.
    let clients = publishers.join_all().await;
    schedule::wait_drained(&c, args.subscriber_count(), args.drain()).await;
    let elapsed = start.elapsed().as_secs_f64();
    tasks.abort_all();
    drop(clients);
    Ok(report::report(args, &c, &meters, elapsed))
}

async fn idle(args: &PeerArgs) {
    let connected = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mut clients = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let (client, mut ev) = AsyncClient::new(options(&format!("idle{i}"), args.port), 4);
        clients.push(client);
        let (connected, errors) = (connected.clone(), errors.clone());
        tasks.spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        connected.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        // Paced, so the broker's accept queue never overflows.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (connected.load(Relaxed) as usize) < args.idle && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{}",
        report::idle_report(connected.load(Relaxed), errors.load(Relaxed))
    );
    tokio::time::sleep(args.duration()).await;
    tasks.abort_all();
    drop(clients);
}

fn main() -> anyhow::Result<()> {
    let args = Cli::parse().peer;
    args.check()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        if args.idle > 0 {
            idle(&args).await;
        } else {
            println!("{}", load(&args).await?);
        }
        Ok(())
    })
}
