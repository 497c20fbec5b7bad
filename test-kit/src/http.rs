//! The daemon's HTTP read side as tests use it: stored readings through
//! `GET /v1/readings` (every page) and one metric from `GET /metrics`.

use sensorgate::auth::{Authenticator, Role};
use serde_json::Value;

use crate::SECRET;

/// Every stored reading of the daemon at `host:port`, via `/v1/readings`.
pub async fn stored_at(base: &str) -> Vec<Value> {
    stored_matching(base, "#").await
}

/// Every stored reading matching `topic` on the daemon at `base`
/// (`host:port`), page by page through `GET /v1/readings`.
pub async fn stored_matching(base: &str, topic: &str) -> Vec<Value> {
    let mut since = 0u64;
    let mut out = Vec::new();
    loop {
        let (items, next) = readings_page(base, topic, since, 10_000).await;
        // An empty page with `next > since`: the scan bound was hit with no
        // match; continue from `next` (docs/protocol.md).
        if items.is_empty() && next == since {
            return out;
        }
        since = next;
        out.extend(items);
    }
}

/// One `GET /v1/readings` page of the daemon at `base`: its items and `next`.
pub async fn readings_page(base: &str, topic: &str, since: u64, limit: u64) -> (Vec<Value>, u64) {
    try_readings_page(base, topic, since, limit)
        .await
        .unwrap_or_else(|body| panic!("GET /v1/readings?topic={topic}&since={since}: {body}"))
}

/// [`readings_page`], or the error body the daemon answered with.
pub async fn try_readings_page(
    base: &str,
    topic: &str,
    since: u64,
    limit: u64,
) -> Result<(Vec<Value>, u64), Value> {
    let token = Authenticator::new(SECRET).mint(Role::Subscriber, "tests", None, None);
    let body: Value = reqwest::Client::new()
        .get(format!("http://{base}/v1/readings"))
        .query(&[
            ("topic", topic.to_string()),
            ("since", since.to_string()),
            ("limit", limit.to_string()),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    match (body["items"].as_array(), body["next"].as_u64()) {
        (Some(items), Some(next)) => Ok((items.clone(), next)),
        _ => Err(body),
    }
}

/// One metric's value from the daemon at `base` (`host:port`): the sum over
/// its samples whose labels contain `labels`; 0 when absent.
pub async fn metric(base: &str, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("http://{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
