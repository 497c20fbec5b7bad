//! Deliveries per second through the fan-out hub (routing a commit to every
//! matching subscriber's queue), with 1, 10 and 100 subscribers; and the
//! same with each subscriber's JSON frame built from the shared encodings.
//!
//! `cargo bench --bench fanout`. One commit is 500 readings from 50
//! devices; half the subscribers use `#`, the other half `+/temp`-style
//! and `dN/#` filters, plus 1,000 idle subscribers on other devices that
//! routing must not pay for.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sensorgate::config::SlowPolicy;
use sensorgate::fanout::wire::{readings_frame, Encoding};
use sensorgate::fanout::{Hub, Subscriber, TopicFilter};
use sensorgate::protocol::{Reading, Value};
use sensorgate::store::Commit;

const COMMIT: usize = 500;

fn commit(first_id: u64) -> Arc<Commit> {
    let readings = (0..COMMIT).map(|i| Reading {
        id: first_id + i as u64,
        device: format!("d{}", i % 50).into(),
        sensor: if i % 2 == 0 { "temp" } else { "hum" }.into(),
        ts: 1_763_800_000_000 + i as i64,
        value: Value::Float(21.5 + i as f64),
        unit: Some("C".into()),
        received: 1_763_800_000_100,
    });
    Arc::new(readings.collect())
}

fn setup(n: usize) -> (Arc<Hub>, Vec<Subscriber>, Vec<Subscriber>, u64) {
    let hub = Hub::new(100_000, SlowPolicy::DropOldest);
    let mut subs = Vec::new();
    let mut matched = 0u64;
    for i in 0..n {
        let mut s = hub.subscriber();
        let (filters, per_commit): (Vec<&str>, u64) = if i % 2 == 0 {
            (vec!["#"], COMMIT as u64)
        } else {
            (vec!["+/temp", "d7/#"], (COMMIT / 2 + COMMIT / 50) as u64)
        };
        let filters: Vec<TopicFilter> = filters
            .iter()
            .map(|f| TopicFilter::parse(f).unwrap())
            .collect();
        s.add(&filters);
        matched += per_commit;
        subs.push(s);
    }
    let idle = (0..1000)
        .map(|i| {
            let mut s = hub.subscriber();
            s.add(&[TopicFilter::parse(&format!("other{i}/#")).unwrap()]);
            s
        })
        .collect();
    (hub, subs, idle, matched)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for n in [1usize, 10, 100] {
        let (hub, subs, _idle, matched) = setup(n);
        let mut id = 1;
        group.throughput(Throughput::Elements(matched));
        group.bench_with_input(BenchmarkId::new("route", n), &n, |b, _| {
            b.iter(|| {
                let readings = commit(id);
                id += COMMIT as u64;
                hub.publish(&readings);
                for s in &subs {
                    let taken = s.queue().take(usize::MAX);
                    criterion::black_box(taken.len());
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("route_and_json_frames", n), &n, |b, _| {
            b.iter(|| {
                let readings = commit(id);
                id += COMMIT as u64;
                hub.publish(&readings);
                for s in &subs {
                    let taken = s.queue().take(usize::MAX);
                    let runs: Vec<_> = taken.runs().collect();
                    criterion::black_box(readings_frame(Encoding::Json, &runs));
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
