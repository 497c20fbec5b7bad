//! The `--subscribe` side: `--subscribers` connections (topic `#`, JSON
//! text frames, or MessagePack binary frames with `--subscriber-format
//! msgpack`, the `sensorgate.msgpack` subprotocol), each counting the
//! readings of this run's devices it receives (deliveries) and measuring
//! device-to-subscriber latency: receive time minus the batch's first send,
//! looked up in the [`SendLog`] (µs), or minus the reading's `ts` (ms) when
//! the batch is no longer there. Both clocks are this machine's.
//!
//! Frames are read for the two fields measured, borrowing from the frame
//! ([`crate::frame`]), and each connection keeps its own histogram (merged
//! into the shared one a few times a second), so a hundred subscribers are
//! not throttled by the measuring itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::frame::{self, Frame};
use crate::sendlog::{self, SendLog};
use crate::stats::{self, Stats};

/// How often a connection folds its latencies into the shared histogram.
const MERGE_EVERY: Duration = Duration::from_millis(250);

/// The encoding a subscriber asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Msgpack,
}

impl Format {
    fn subprotocol(self) -> Option<&'static str> {
        match self {
            Format::Json => None,
            Format::Msgpack => Some("sensorgate.msgpack"),
        }
    }
}

/// One subscriber connection's measurements.
struct Meter {
    log: Arc<SendLog>,
    stats: Arc<Stats>,
    latency: Histogram<u64>,
    last_merge: Instant,
}

impl Meter {
    fn new(log: Arc<SendLog>, stats: Arc<Stats>) -> Meter {
        Meter {
            log,
            stats,
            latency: stats::latency_histogram(),
            last_merge: Instant::now(),
        }
    }

    /// Books one JSON frame received at `now_us`; returns its type.
    fn on_frame<'f>(&mut self, text: &'f str, now_us: u64) -> Option<&'f str> {
        Some(self.book(frame::json(text)?, now_us))
    }

    /// Books one MessagePack frame received at `now_us`; returns its type.
    fn on_binary<'f>(&mut self, bytes: &'f [u8], now_us: u64) -> Option<&'f str> {
        Some(self.book(frame::msgpack(bytes)?, now_us))
    }

    fn book<'f>(&mut self, frame: Frame<'f>, now_us: u64) -> &'f str {
        match frame.kind {
            "readings" => {
                let mut ours = 0;
                // Readings of one batch arrive together and share device
                // and ts: look their send time up once.
                let mut cached: Option<(&str, i64, u64)> = None;
                for item in &frame.items {
                    let sent = match cached {
                        Some((d, ts, sent)) if d == item.device && ts == item.ts => sent,
                        _ => {
                            let Some(index) = self.log.index_of(item.device) else {
                                continue;
                            };
                            let sent = self
                                .log
                                .first_send(index, item.ts)
                                .unwrap_or((item.ts.max(0) as u64) * 1000);
                            cached = Some((item.device, item.ts, sent));
                            sent
                        }
                    };
                    ours += 1;
                    self.latency
                        .saturating_record(now_us.saturating_sub(sent).max(1));
                }
                Stats::add(&self.stats.subscriber_readings, ours);
            }
            "lagged" => Stats::add(&self.stats.subscriber_lagged, frame.dropped),
            _ => {}
        }
        if self.last_merge.elapsed() >= MERGE_EVERY {
            self.merge();
        }
        frame.kind
    }

    fn merge(&mut self) {
        self.stats.merge_subscriber_latency(&self.latency);
        self.latency.reset();
        self.last_merge = Instant::now();
    }
}

/// Connects to `url` (a `/v1/stream` URL), says so on `ready` once the
/// server has confirmed the subscription (so devices start only when no
/// reading can be missed), and measures until `stop` turns true.
pub async fn run(
    url: &str,
    token: &str,
    format: Format,
    log: Arc<SendLog>,
    stats: Arc<Stats>,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}topic=%23");
    let target = Target::resolve(&url, 1).await?;
    let mut ws = conn::connect_with(
        &target,
        0,
        token,
        format.subprotocol(),
        conn::SUBSCRIBER_READ_BUFFER,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.detail))
    .with_context(|| format!("subscribing at {url}"))?;
    let mut meter = Meter::new(log, stats);
    let mut ready = Some(ready);
    let result = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    let now = sendlog::unix_us();
                    let kind = match &m {
                        Message::Text(t) => meter.on_frame(t.as_str(), now),
                        Message::Binary(b) => meter.on_binary(b, now),
                        _ => None,
                    };
                    if kind == Some("subscribed") {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::anyhow!("subscriber connection failed: {e}")),
                None => break Err(anyhow::anyhow!("the server closed the subscriber connection")),
            },
        }
    };
    meter.merge();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn only_this_runs_devices_are_measured_from_their_first_send() {
        let stats = Arc::new(Stats::default());
        let log = Arc::new(SendLog::new("sim-", 2));
        let now = sendlog::unix_us();
        let ts = (now / 1000) as i64 - 20;
        // sim-1's batch is in the log (sent 2 ms before now); sim-2's is
        // not, so it is measured from its ts (about 20 ms).
        log.sent(0, ts, now - 2_000);
        let frame = serde_json::json!({"type": "readings", "items": [
            {"id": 1, "device": "sim-1", "sensor": "temp", "ts": ts, "value": 1.0, "received": ts},
            {"id": 2, "device": "sim-1", "sensor": "hum", "ts": ts, "value": "x", "unit": "%", "received": ts},
            {"id": 3, "device": "other", "sensor": "temp", "ts": ts, "value": 1.0, "received": ts},
            {"id": 4, "device": "sim-2", "sensor": "temp", "ts": ts, "value": true, "received": ts},
        ]});
        let mut meter = Meter::new(log, stats.clone());
        assert_eq!(meter.on_frame(&frame.to_string(), now), Some("readings"));
        // One laid out as the daemon writes it (the fast path).
        let daemons = format!(
            r#"{{"type":"readings","items":[{{"id":6,"device":"sim-1","sensor":"temp","ts":{ts},"value":1.5,"received":{ts}}}]}}"#
        );
        assert_eq!(meter.on_frame(&daemons, now), Some("readings"));
        assert_eq!(
            meter.on_frame(r#"{"type":"lagged","dropped":3}"#, now),
            Some("lagged")
        );
        assert_eq!(meter.on_frame("not json", now), None);
        let packed = rmp_serde::to_vec_named(&serde_json::json!({"type": "readings", "items": [
            {"id": 5, "device": "sim-1", "sensor": "temp", "ts": ts, "value": 2.5, "received": ts},
        ]}))
        .unwrap();
        assert_eq!(meter.on_binary(&packed, now), Some("readings"));
        assert_eq!(meter.on_binary(b"\xc1", now), None);
        meter.merge();
        assert_eq!(stats.subscriber_readings.load(Relaxed), 5);
        assert_eq!(stats.subscriber_lagged.load(Relaxed), 3);
        let meta = crate::stats::RunMeta {
            devices: 1,
            scenario: "steady",
            subscribed: true,
            subscribers: 1,
        };
        let r = stats.report(&meta, Duration::from_secs(1));
        let lat = &r["subscriber"]["latency_us"];
        assert_eq!(lat["count"], 5, "{r}");
        let p50 = lat["p50"].as_u64().unwrap();
        assert!((1_990..=2_010).contains(&p50), "µs from the send log: {r}");
        assert!(lat["max"].as_u64().unwrap() >= 19_000, "ms from ts: {r}");
    }
}
