//! A small MQTT load client: the Mosquitto side of `benches/load.sh`.
//!
//! Publishers: one MQTT connection per device, each publishing JSON readings
//! of about the size a sensorgate subscriber receives, at QoS 1, `--batch`
//! readings every `batch / rate` seconds (the same schedule as device-sim).
//! Each publisher starts at a random point of its first interval (as
//! device-sim does; `--aligned` for lock-step). With `--subscribe`,
//! `--subscribers N` (default 1) subscribers on `sensorgate/#` (QoS 1) count
//! deliveries and record now − send time (µs, carried in the payload) in an
//! HDR histogram each, merged at the end. Prints one JSON line.
//!
//! With `--idle N`: opens N connections that stay silent, prints
//! `{"idle_connected":N}` once all have their CONNACK, holds them for
//! `--duration` seconds and exits (the script reads the broker's RSS).
//!
//!   cargo bench --bench mqtt_peer -- --port P --devices 50 --rate 2000 \
//!       --batch 50 --duration 10 [--subscribe [--subscribers 10]] [--drain 5]
//!   cargo bench --bench mqtt_peer -- --port P --idle 5000 --duration 5
//!
//! Every loop is bounded by the deadline; only 127.0.0.1 is contacted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::time::Instant;

struct Args {
    port: u16,
    devices: usize,
    rate: f64,
    batch: usize,
    duration: f64,
    drain: f64,
    subscribe: bool,
    subscribers: usize,
    aligned: bool,
    idle: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        port: 1883,
        devices: 50,
        rate: 2000.0,
        batch: 50,
        duration: 10.0,
        drain: 5.0,
        subscribe: false,
        subscribers: 1,
        aligned: false,
        idle: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = |i: usize| -> String { argv.get(i + 1).cloned().unwrap_or_default() };
        match argv[i].as_str() {
            "--port" => a.port = val(i).parse().expect("--port"),
            "--devices" => a.devices = val(i).parse().expect("--devices"),
            "--rate" => a.rate = val(i).parse().expect("--rate"),
            "--batch" => a.batch = val(i).parse().expect("--batch"),
            "--duration" => a.duration = val(i).parse().expect("--duration"),
            "--drain" => a.drain = val(i).parse().expect("--drain"),
            "--idle" => a.idle = val(i).parse().expect("--idle"),
            "--subscribers" => a.subscribers = val(i).parse().expect("--subscribers"),
            "--subscribe" => {
                a.subscribe = true;
                i += 1;
                continue;
            }
            "--aligned" => {
                a.aligned = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; ignore anything unknown.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(
        a.rate > 0.0 && a.batch > 0 && a.duration > 0.0 && a.subscribers > 0,
        "bad arguments"
    );
    a
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(1000)
        .set_max_packet_size(1 << 16, 1 << 16);
    o
}

const SENSORS: [&str; 4] = ["temp", "humidity", "pressure", "co2"];

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    connacks: AtomicU64,
}

#[derive(serde::Deserialize)]
struct Sent {
    sent_us: u64,
}

async fn idle(args: &Args) {
    let c = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(args.idle);
    let mut clients = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let (client, mut ev) = AsyncClient::new(options(&format!("idle{i}"), args.port), 4);
        clients.push(client);
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        c.connacks.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        c.errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (c.connacks.load(Relaxed) as usize) < args.idle && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{}",
        serde_json::json!({"idle_connected": c.connacks.load(Relaxed), "errors": c.errors.load(Relaxed)})
    );
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    for t in tasks {
        t.abort();
    }
    drop(clients);
}

async fn load(args: &Args) {
    let c = Arc::new(Counters::default());
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap(),
    ));
    let mut tasks = Vec::new();

    // The subscribers first, so they see every publish.
    let subscribers = if args.subscribe { args.subscribers } else { 0 };
    let mut subscribed = Vec::new();
    // One histogram per subscriber (its lock is never contended), merged
    // at the end.
    let mut locals = Vec::new();
    for n in 0..subscribers {
        let (client, mut ev) = AsyncClient::new(options(&format!("peer-sub{n}"), args.port), 64);
        let mut fresh = hist.lock().unwrap().clone();
        fresh.reset();
        let local = Arc::new(Mutex::new(fresh));
        locals.push(local.clone());
        let c2 = c.clone();
        let (sub_tx, sub_rx) = tokio::sync::oneshot::channel::<()>();
        subscribed.push(sub_rx);
        tasks.push(tokio::spawn(async move {
            let mut sub_tx = Some(sub_tx);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.try_subscribe("sensorgate/#", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = sub_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let now = unix_us();
                        c2.delivered.fetch_add(1, Relaxed);
                        if let Ok(s) = serde_json::from_slice::<Sent>(&p.payload) {
                            let mut h = local.lock().unwrap();
                            let _ = h.record(now.saturating_sub(s.sent_us).max(1));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        c2.errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    for sub_rx in subscribed {
        tokio::time::timeout(Duration::from_secs(30), sub_rx)
            .await
            .expect("subscribed within 30 s")
            .expect("subscriber task");
    }

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let interval = Duration::from_secs_f64(args.batch as f64 / args.rate);
    let max_ticks = (args.duration / interval.as_secs_f64()).ceil() as u64 + 1;
    let mut publishers = Vec::new();
    for d in 1..=args.devices {
        let device = format!("sim-{d}");
        let (client, mut ev) = AsyncClient::new(options(&format!("peer-{device}"), args.port), 256);
        let c2 = c.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        c2.acked.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        c2.errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
        let (c2, batch) = (c.clone(), args.batch);
        let phase = if args.aligned {
            Duration::ZERO
        } else {
            interval
                .min(Duration::from_secs_f64(args.duration / 4.0))
                .mul_f64(rand_fraction(d))
        };
        publishers.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let topics: Vec<String> = SENSORS
                .iter()
                .map(|s| format!("sensorgate/{device}/{s}"))
                .collect();
            let mut next = Instant::now();
            let mut id = 0u64;
            for _ in 0..max_ticks {
                if Instant::now() >= end {
                    break;
                }
                let ts_ms = unix_us() / 1000;
                for k in 0..batch {
                    id += 1;
                    let sensor = k % SENSORS.len();
                    // The shape of a reading as a sensorgate subscriber gets it.
                    let payload = format!(
                        "{{\"id\":{id},\"device\":\"{device}\",\"sensor\":\"{}\",\"ts\":{ts_ms},\
                         \"value\":{:.2},\"sent_us\":{}}}",
                        SENSORS[sensor],
                        20.0 + (id % 100) as f64 / 10.0,
                        unix_us()
                    );
                    if client
                        .publish(&topics[sensor], QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return client;
                    }
                    c2.published.fetch_add(1, Relaxed);
                }
                next += interval;
                tokio::time::sleep_until(next).await;
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for p in publishers {
        if let Ok(cl) = p.await {
            clients.push(cl);
        }
    }
    let sent_end = Instant::now();
    // Drain: wait for PUBACKs (and deliveries) still owed, bounded.
    let drain_end = sent_end + Duration::from_secs_f64(args.drain);
    loop {
        let p = c.published.load(Relaxed);
        let acked_all = c.acked.load(Relaxed) >= p;
        let delivered_all = c.delivered.load(Relaxed) >= p * subscribers as u64;
        if (acked_all && delivered_all) || Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    for t in &tasks {
        t.abort();
    }
    for local in &locals {
        let _ = hist.lock().unwrap().add(&*local.lock().unwrap());
    }
    drop(clients);
    let h = hist.lock().unwrap();
    let published = c.published.load(Relaxed);
    let acked = c.acked.load(Relaxed);
    let delivered = c.delivered.load(Relaxed);
    let per_s = |n: u64| ((n as f64 / elapsed) * 10.0).round() / 10.0;
    println!(
        "{}",
        serde_json::json!({
            "devices": args.devices,
            "rate": args.rate,
            "batch": args.batch,
            "subscribers": subscribers,
            "duration_s": (elapsed * 1000.0).round() / 1000.0,
            "published": published,
            "acked": acked,
            "published_per_sec": per_s(published),
            "acked_per_sec": per_s(acked),
            "deliveries": delivered,
            "deliveries_per_sec": per_s(delivered),
            "errors": c.errors.load(Relaxed),
            "latency_us": {
                "count": h.len(),
                "p50": h.value_at_quantile(0.50),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
        })
    );
}

/// A fraction in [0, 1) that differs per publisher (no rand dependency
/// needed for a phase offset): the golden-ratio sequence, seeded by time.
fn rand_fraction(n: usize) -> f64 {
    let seed = (unix_us() % 1000) as f64 / 1000.0;
    (seed + n as f64 * 0.618_033_988_75).fract()
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if args.idle > 0 {
            idle(&args).await
        } else {
            load(&args).await
        }
    });
}
