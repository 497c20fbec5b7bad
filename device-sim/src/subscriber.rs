//! The `--subscribe` side: one subscriber connection (JSON frames, topic
//! `#`) that measures device-to-subscriber latency as "now minus the
//! reading's `ts`" for readings of this run's devices (the simulator sets
//! `ts` to the send time, so both clocks are this machine's).

use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::device::unix_ms;
use crate::stats::Stats;

/// Connects to `url` (a `/v1/stream` URL), says so on `ready` once the
/// server has confirmed the subscription (so devices start only when no
/// reading can be missed), and records latencies until `stop` turns true.
pub async fn run(
    url: &str,
    token: &str,
    prefix: &str,
    stats: Arc<Stats>,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}topic=%23");
    let target = Target::resolve(&url, 1).await?;
    let mut ws = conn::connect(&target, 0, token)
        .await
        .map_err(|e| anyhow::anyhow!(e.detail))
        .with_context(|| format!("subscribing at {url}"))?;
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if on_frame(t.as_str(), prefix, &stats) == Some("subscribed") {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("subscriber connection failed: {e}"),
                None => anyhow::bail!("the server closed the subscriber connection"),
            },
        }
    }
}

/// Books one frame; returns its type.
fn on_frame(text: &str, prefix: &str, stats: &Stats) -> Option<&'static str> {
    let frame = serde_json::from_str::<Value>(text).ok()?;
    let kind = match frame["type"].as_str()? {
        "subscribed" => "subscribed",
        "readings" => "readings",
        "lagged" => "lagged",
        _ => "other",
    };
    match Some(kind) {
        Some("readings") => {
            let now = unix_ms();
            for item in frame["items"].as_array().into_iter().flatten() {
                let ours = item["device"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(prefix));
                if let (true, Some(ts)) = (ours, item["ts"].as_i64()) {
                    Stats::add(&stats.subscriber_readings, 1);
                    stats.subscriber_latency_us((now - ts).max(0) as u64 * 1000);
                }
            }
        }
        Some("lagged") => {
            Stats::add(
                &stats.subscriber_lagged,
                frame["dropped"].as_u64().unwrap_or(0),
            );
        }
        _ => {}
    }
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn only_this_runs_devices_are_measured() {
        let stats = Stats::default();
        let ts = unix_ms() - 5;
        let frame = serde_json::json!({"type": "readings", "items": [
            {"id": 1, "device": "sim-1", "sensor": "temp", "ts": ts, "value": 1.0, "received": ts},
            {"id": 2, "device": "other", "sensor": "temp", "ts": ts, "value": 1.0, "received": ts},
        ]});
        on_frame(&frame.to_string(), "sim-", &stats);
        on_frame(r#"{"type":"lagged","dropped":3}"#, "sim-", &stats);
        assert_eq!(stats.subscriber_readings.load(Relaxed), 1);
        assert_eq!(stats.subscriber_lagged.load(Relaxed), 3);
        let meta = crate::stats::RunMeta {
            devices: 1,
            scenario: "steady",
            subscribed: true,
        };
        let r = stats.report(&meta, std::time::Duration::from_secs(1));
        assert!(r["latency_us"]["p50"].as_u64().unwrap() >= 5000, "{r}");
    }
}
