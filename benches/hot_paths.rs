//! Micro-benchmarks of the ingest hot paths: decoding and validating a
//! device frame (alone, and as a connection does, with its sensor names
//! known from earlier batches), topic-filter matching, encoding for
//! subscribers (JSON and MessagePack: one reading in a frame of its own,
//! and a device's batch of 50 as one list), and one durable group commit
//! to sled.
//!
//! `cargo bench --bench hot_paths`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sensorgate::config::SyncMode;
use sensorgate::fanout::wire::{readings_frame, Encoding, Routed};
use sensorgate::fanout::TopicFilter;
use sensorgate::protocol::{decode_batch, decode_batch_with, Names, Reading, Value};
use sensorgate::store::{self, IngestBatch, Store, WriteRequest};
use serde_json::json;

fn frame(n: usize) -> Vec<u8> {
    let readings: Vec<_> = (0..n)
        .map(|i| json!({"sensor": format!("s{}", i % 8), "ts": 1_763_800_000_000_i64 + i as i64, "value": i as f64 * 0.25, "unit": "C"}))
        .collect();
    rmp_serde::to_vec_named(&json!({"seq": 42, "readings": readings})).unwrap()
}

fn reading(i: u64) -> Reading {
    Reading {
        id: i,
        device: Arc::from("boiler-7"),
        sensor: "temp".into(),
        ts: 1_763_800_000_000,
        value: Value::Float(21.5),
        unit: Some("C".into()),
        received: 1_763_800_000_100,
    }
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_batch");
    for n in [10usize, 100, 500] {
        let f = frame(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &f, |b, f| {
            b.iter(|| decode_batch(f, 500).unwrap())
        });
    }
    g.finish();
}

/// device-sim's first four sensors and their units, which its devices
/// send in turn.
const DEVICE_SIM_SENSORS: [(&str, &str); 4] = [
    ("temp", "C"),
    ("humidity", "%"),
    ("pressure", "hPa"),
    ("co2", "ppm"),
];

/// A batch as device-sim's devices send it: four sensors in turn, each
/// with its unit.
fn device_frame(n: usize) -> Vec<u8> {
    let readings: Vec<_> = (0..n)
        .map(|i| {
            let (sensor, unit) = DEVICE_SIM_SENSORS[i % DEVICE_SIM_SENSORS.len()];
            json!({"sensor": sensor, "ts": 1_763_800_000_000_i64, "value": 21.5 + i as f64, "unit": unit})
        })
        .collect();
    rmp_serde::to_vec_named(&json!({"seq": 42, "readings": readings})).unwrap()
}

/// Decoding as a device connection does, batch after batch: its sensor
/// names and units are known from the batches before.
fn decode_on_a_connection(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_batch_on_a_connection");
    for n in [10usize, 50] {
        let f = device_frame(n);
        let mut names = Names::default();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &f, |b, f| {
            b.iter(|| decode_batch_with(f, 500, &mut names).unwrap())
        });
    }
    g.finish();
}

fn topic_matching(c: &mut Criterion) {
    let filters: Vec<TopicFilter> = ["boiler-7/temp", "+/temp", "boiler-7/#", "#", "other/+"]
        .iter()
        .map(|f| TopicFilter::parse(f).unwrap())
        .collect();
    c.bench_function("topic_filter_matches_x5", |b| {
        b.iter(|| {
            filters
                .iter()
                .filter(|f| f.matches("boiler-7", "temp"))
                .count()
        })
    });
}

/// One reading encoded for subscribers as the daemon does it: a new
/// routed list of one, encoded on first use, in a frame of its own.
fn encoding(c: &mut Criterion) {
    let r = reading(1201);
    let mut g = c.benchmark_group("encode_reading");
    for (name, enc) in [("json", Encoding::Json), ("msgpack", Encoding::Msgpack)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || Routed::new(vec![r.clone()], None),
                |list| readings_frame(enc, &[(&list, 0..1)]),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// A list of one device's batch routed to subscribers, encoded whole on
/// first use and framed: four sensors in turn, each with its unit, as
/// device-sim sends them (per reading: what a list costs its readings).
fn encoding_a_list(c: &mut Criterion) {
    let sensors: Vec<(Arc<str>, Arc<str>)> = DEVICE_SIM_SENSORS
        .iter()
        .map(|(s, u)| (Arc::from(*s), Arc::from(*u)))
        .collect();
    let device: Arc<str> = Arc::from("sim-17");
    let readings: Vec<Reading> = (0..50u64)
        .map(|i| {
            let (sensor, unit) = &sensors[i as usize % sensors.len()];
            Reading {
                id: 1_000_000 + i,
                device: device.clone(),
                sensor: sensor.clone(),
                ts: 1_763_800_000_000,
                value: Value::Float(21.5 + i as f64 * 0.25),
                unit: Some(unit.clone()),
                received: 1_763_800_000_003,
            }
        })
        .collect();
    let mut g = c.benchmark_group("encode_list_of_50");
    g.throughput(Throughput::Elements(readings.len() as u64));
    for (name, enc) in [("json", Encoding::Json), ("msgpack", Encoding::Msgpack)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || Routed::new(readings.clone(), None),
                |list| readings_frame(enc, &[(&list, 0..list.len())]),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// One group commit of `n` readings (one batch), applied and flushed.
fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut storage = sensorgate::config::Config::with_secret("bench").storage;
    storage.path = dir.path().join("store");
    storage.sync = SyncMode::Batch;
    let store = Store::open(&storage.path).unwrap();
    // The writer is a thread of its own: spawning it needs no runtime.
    let (writer, _thread) = store::writer::spawn(store, &storage, 16, Vec::new());
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(20);
    for n in [500usize, 5000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || {
                    let one = decode_batch(&frame(500), 500).unwrap().readings;
                    let mut all = Vec::with_capacity(n);
                    while all.len() < n {
                        all.extend(one.iter().cloned());
                    }
                    all
                },
                |readings| {
                    rt.block_on(async {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let req = WriteRequest::Batch(IngestBatch {
                            device: Arc::from("bench"),
                            seq: None,
                            readings,
                            received: 1_763_800_000_000,
                            queued: std::time::Instant::now(),
                            reply: Some(tx),
                        });
                        writer.sender().send(req).await.unwrap();
                        rx.await.unwrap()
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    decode,
    decode_on_a_connection,
    topic_matching,
    encoding,
    encoding_a_list,
    group_commit
);
criterion_main!(benches);
