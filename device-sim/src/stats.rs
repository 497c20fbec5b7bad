//! Run-wide counters and latency histograms, shared by every device task
//! and the subscriber, and the end-of-run report (a table, or one JSON
//! object with `--json`). Counters are atomics; the by-code rejection map and
//! the HDR histograms sit behind short-held mutexes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Default)]
pub struct Stats {
    /// Readings in batches sent for the first time (resends not counted).
    pub sent_readings: AtomicU64,
    pub sent_batches: AtomicU64,
    /// Batches sent again (after a reconnect, `out_of_order` or a retry).
    pub resent_batches: AtomicU64,
    /// Readings the server confirmed stored: acked (duplicates included),
    /// or covered by a welcome's `last_seq` / an `out_of_order`'s `expected`.
    pub acked_readings: AtomicU64,
    pub acked_batches: AtomicU64,
    /// Acks marked `duplicate` (a resend of something already stored).
    pub duplicate_acks: AtomicU64,
    /// Sent at least once, never confirmed by the end of the drain.
    pub lost_batches: AtomicU64,
    pub lost_readings: AtomicU64,
    /// Sampled but never sent (the run ended first).
    pub unsent_readings: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Devices that got a welcome at least once.
    pub devices_connected_ever: AtomicU64,
    /// Devices connected right now.
    pub connected: AtomicU64,
    pub garbage_sent: AtomicU64,
    pub subscriber_readings: AtomicU64,
    pub subscriber_lagged: AtomicU64,
    /// The most recent connection failure, shown when nothing connected.
    pub last_error: Mutex<Option<String>>,
    rejected: Mutex<BTreeMap<String, u64>>,
    ack_latency: Mutex<Option<Histogram<u64>>>,
    sub_latency: Mutex<Option<Histogram<u64>>>,
}

/// An empty latency histogram: 1 µs to an hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

fn record(h: &Mutex<Option<Histogram<u64>>>, us: u64) {
    let mut h = h.lock().unwrap();
    let h = h.get_or_insert_with(latency_histogram);
    h.saturating_record(us.max(1));
}

fn summary(h: &Mutex<Option<Histogram<u64>>>) -> Value {
    match &*h.lock().unwrap() {
        Some(h) => json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        }),
        None => json!({"count": 0, "p50": 0, "p99": 0, "p999": 0, "max": 0}),
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn reject(&self, code: &str) {
        *self
            .rejected
            .lock()
            .unwrap()
            .entry(code.to_string())
            .or_default() += 1;
    }

    pub fn rejected(&self) -> BTreeMap<String, u64> {
        self.rejected.lock().unwrap().clone()
    }

    pub fn ack_latency(&self, d: Duration) {
        record(&self.ack_latency, d.as_micros() as u64);
    }

    /// Folds one subscriber connection's latencies into the run's.
    pub fn merge_subscriber_latency(&self, local: &Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        let mut h = self.sub_latency.lock().unwrap();
        // Same bounds on both sides, so adding cannot fail.
        let _ = h.get_or_insert_with(latency_histogram).add(local);
    }

    /// One line for the live progress display.
    pub fn progress(&self, elapsed: Duration) -> String {
        format!(
            "{:>5.1}s  connected {:>6}  sent {:>10}  acked {:>10}  rejected {:>6}  reconnects {:>5}",
            elapsed.as_secs_f64(),
            self.connected.load(Relaxed),
            self.sent_readings.load(Relaxed),
            self.acked_readings.load(Relaxed),
            self.rejected().values().sum::<u64>(),
            self.reconnects.load(Relaxed),
        )
    }

    /// The report: `latency_us` is device-to-subscriber latency when a
    /// subscriber ran, ack latency otherwise (both are also given by name).
    pub fn report(&self, meta: &RunMeta, elapsed: Duration) -> Value {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let acked = self.acked_readings.load(Relaxed);
        let ack = summary(&self.ack_latency);
        let mut v = json!({
            "devices": meta.devices,
            "scenario": meta.scenario,
            "sent_readings": self.sent_readings.load(Relaxed),
            "sent_batches": self.sent_batches.load(Relaxed),
            "resent_batches": self.resent_batches.load(Relaxed),
            "acked_readings": acked,
            "acked_batches": self.acked_batches.load(Relaxed),
            "duplicate_acks": self.duplicate_acks.load(Relaxed),
            "lost_batches": self.lost_batches.load(Relaxed),
            "lost_readings": self.lost_readings.load(Relaxed),
            "unsent_readings": self.unsent_readings.load(Relaxed),
            "rejected": self.rejected(),
            "reconnects": self.reconnects.load(Relaxed),
            "connect_failures": self.connect_failures.load(Relaxed),
            // Why the last failed attempt failed: a count alone does not
            // say whether the server refused, timed out or never answered.
            "last_error": self.last_error.lock().unwrap().clone(),
            "devices_connected": self.devices_connected_ever.load(Relaxed),
            "garbage_sent": self.garbage_sent.load(Relaxed),
            "latency_source": if meta.subscribed { "subscriber" } else { "ack" },
            "latency_us": ack.clone(),
            "ack_latency_us": ack,
            "duration_s": (secs * 1000.0).round() / 1000.0,
            "readings_per_sec": ((acked as f64 / secs) * 10.0).round() / 10.0,
        });
        if meta.subscribed {
            let sub = summary(&self.sub_latency);
            let deliveries = self.subscriber_readings.load(Relaxed);
            v["latency_us"] = sub.clone();
            v["subscriber"] = json!({
                "connections": meta.subscribers,
                "readings": deliveries,
                "deliveries_per_sec": ((deliveries as f64 / secs) * 10.0).round() / 10.0,
                "lagged": self.subscriber_lagged.load(Relaxed),
                "latency_us": sub,
            });
        }
        v
    }
}

/// What the report says about the run's shape.
pub struct RunMeta {
    pub devices: usize,
    pub scenario: &'static str,
    pub subscribed: bool,
    /// Subscriber connections (0 without `--subscribe`).
    pub subscribers: usize,
}

/// The human summary table for stdout.
pub fn table(r: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("  {k:<20}{v}\n"));
    out.push_str(&format!(
        "device-sim: {} devices, scenario {}, {}s\n",
        r["devices"],
        r["scenario"].as_str().unwrap_or(""),
        r["duration_s"]
    ));
    for k in [
        "sent_readings",
        "acked_readings",
        "readings_per_sec",
        "resent_batches",
        "duplicate_acks",
        "lost_batches",
        "lost_readings",
        "unsent_readings",
        "reconnects",
        "connect_failures",
        "devices_connected",
        "garbage_sent",
    ] {
        line(&mut out, k, r[k].to_string());
    }
    if let Some(e) = r["last_error"].as_str() {
        line(&mut out, "last_error", e.to_string());
    }
    let rejected = r["rejected"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    line(
        &mut out,
        "rejected",
        if rejected.is_empty() {
            "none".into()
        } else {
            rejected
        },
    );
    let lat = |h: &Value| {
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  (n={})",
            h["p50"], h["p99"], h["p999"], h["max"], h["count"]
        )
    };
    line(&mut out, "ack latency us", lat(&r["ack_latency_us"]));
    if let Some(sub) = r.get("subscriber") {
        line(&mut out, "sub latency us", lat(&sub["latency_us"]));
        line(
            &mut out,
            "sub deliveries",
            format!(
                "{} over {} connections, {}/s (lagged {})",
                sub["readings"], sub["connections"], sub["deliveries_per_sec"], sub["lagged"]
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_STEADY_DEVICE: RunMeta = RunMeta {
        devices: 1,
        scenario: "steady",
        subscribed: false,
        subscribers: 0,
    };

    #[test]
    fn report_has_the_spec_fields() {
        let s = Stats::default();
        Stats::add(&s.sent_readings, 10);
        Stats::add(&s.acked_readings, 10);
        s.reject("rate_limited");
        s.ack_latency(Duration::from_micros(1500));
        let r = s.report(&ONE_STEADY_DEVICE, Duration::from_secs(2));
        assert_eq!(r["sent_readings"], 10);
        assert_eq!(r["acked_readings"], 10);
        assert_eq!(r["rejected"]["rate_limited"], 1);
        assert_eq!(r["readings_per_sec"], 5.0);
        for k in ["p50", "p99", "p999", "max"] {
            assert!(r["latency_us"][k].as_u64().unwrap() >= 1400, "{r}");
        }
        assert!(table(&r).contains("rate_limited=1"));
        assert!(r["last_error"].is_null(), "no attempt failed: {r}");
        assert!(!table(&r).contains("last_error"));
    }

    /// A failed connection attempt says why, in the report and the table.
    #[test]
    fn the_last_connect_error_is_reported() {
        let s = Stats::default();
        Stats::add(&s.connect_failures, 2);
        *s.last_error.lock().unwrap() = Some("HTTP 429 too many".into());
        let r = s.report(&ONE_STEADY_DEVICE, Duration::from_secs(1));
        assert_eq!(r["connect_failures"], 2);
        assert_eq!(r["last_error"], "HTTP 429 too many");
        assert!(table(&r).contains("HTTP 429 too many"), "{}", table(&r));
    }
}
