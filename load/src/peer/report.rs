//! Counting and the one-line JSON report. Counts are in readings (a batch
//! message counts its readings), so one-reading and batch runs compare
//! directly; `messages` says how many messages carried them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use super::payload::Received;
use super::{unix_us, PeerArgs};

/// The run's counters, shared by every task.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub messages: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    /// One message of `readings` handed to the client.
    pub fn sent(&self, readings: u64) {
        self.published.fetch_add(readings, Relaxed);
        self.messages.fetch_add(1, Relaxed);
    }

    pub fn acked(&self, readings: u64) {
        self.acked.fetch_add(readings, Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// Every published reading acked and delivered to each subscriber.
    pub fn settled(&self, subscribers: usize) -> bool {
        let p = self.published.load(Relaxed);
        self.acked.load(Relaxed) >= p && self.delivered.load(Relaxed) >= p * subscribers as u64
    }
}

/// Receive latency up to two minutes at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// One subscriber's measurements: its own histogram (its lock is never
/// contended while the run lasts), merged into the report at the end.
#[derive(Clone)]
pub struct Meter {
    counters: Arc<Counters>,
    latency: Arc<Mutex<Histogram<u64>>>,
}

impl Meter {
    pub fn new(counters: Arc<Counters>) -> Meter {
        Meter {
            counters,
            latency: Arc::new(Mutex::new(latency_histogram())),
        }
    }

    /// Books one received message: its readings as deliveries, each with
    /// now − sent.
    pub fn on_message(&self, payload: &[u8]) {
        let now = unix_us();
        let Some(r) = Received::parse(payload) else {
            self.counters.error();
            return;
        };
        let n = r.count();
        self.counters.delivered.fetch_add(n, Relaxed);
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.record_n(now.saturating_sub(r.sent_us).max(1), n);
    }
}

/// The report `load.sh` reads, one JSON object.
pub fn report(
    args: &PeerArgs,
    c: &Counters,
    meters: &[Meter],
    elapsed_s: f64,
) -> serde_json::Value {
    let mut h = latency_histogram();
    for m in meters {
        let _ = h.add(&*m.latency.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let published = c.published.load(Relaxed);
    let acked = c.acked.load(Relaxed);
    let delivered = c.delivered.load(Relaxed);
    let per_s = |n: u64| ((n as f64 / elapsed_s) * 10.0).round() / 10.0;
    serde_json::json!({
        "devices": args.devices,
        "rate": args.rate,
        "batch": args.batch,
        "payload": if args.batch_payload { "batch" } else { "reading" },
        "subscribers": args.subscriber_count(),
        "duration_s": (elapsed_s * 1000.0).round() / 1000.0,
        "messages": c.messages.load(Relaxed),
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
}

/// The idle mode's line, printed once every connection is up (or the
/// deadline passed).
pub fn idle_report(connected: u64, errors: u64) -> serde_json::Value {
    serde_json::json!({"idle_connected": connected, "errors": errors})
}
