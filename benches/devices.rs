//! Per-device cost of the `/v1/devices` book past its cap: 150,000
//! distinct device ids reporting round-robin into a book that keeps
//! 100,000, so from the 100,001st on every new report evicts one. Prints
//! the cost per report for each block of 10,000 reports; a flat column is
//! the point (an eviction that scanned would grow with the book).
//!
//!   cargo bench --bench devices

use std::sync::Arc;
use std::time::Instant;

use sensorgate::devices::{DeviceBook, MAX_DEVICES};
use sensorgate::protocol::{Reading, Value};

const DEVICES: usize = 150_000;
const BLOCK: usize = 10_000;
const ROUNDS: usize = 2;

fn main() {
    let ids: Vec<Arc<str>> = (0..DEVICES)
        .map(|i| Arc::from(format!("dev-{i:06}")))
        .collect();
    let book = DeviceBook::default();
    let mut clock = 1_763_800_000_000i64;
    println!("devices: {DEVICES} ids round-robin, book cap {MAX_DEVICES}, {ROUNDS} rounds");
    println!("{:>8} {:>8} {:>12}", "round", "book", "ns/report");
    for round in 0..ROUNDS {
        for block in ids.chunks(BLOCK) {
            let readings: Vec<Reading> = block
                .iter()
                .map(|d| {
                    clock += 1;
                    Reading {
                        id: 0,
                        device: d.clone(),
                        sensor: "temp".into(),
                        ts: clock,
                        value: Value::Float(21.5),
                        unit: None,
                        received: clock,
                    }
                })
                .collect();
            let start = Instant::now();
            // One commit per report, as a round-robin fleet produces.
            for r in &readings {
                book.observe(std::slice::from_ref(r));
            }
            let ns = start.elapsed().as_nanos() as f64 / block.len() as f64;
            println!("{round:>8} {:>8} {ns:>12.0}", book.len());
        }
    }
    assert_eq!(book.len(), MAX_DEVICES);
}
