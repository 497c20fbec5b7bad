//! Bounded work per request (SPEC §5, §10; docs/protocol.md): a
//! `/v1/readings` page and a stream replay step touch at most
//! `ScanBound::REQUEST` of the store whatever the filter matches, and
//! `next` lets the client continue past a scanned range with no match.

use sensorgate::store::ScanBound;
use sensorgate_test_kit::*;
use serde_json::Value;

/// Readings stored by [`fill`]: 2.5 times the per-request readings bound.
const STORED: u64 = ScanBound::REQUEST.readings as u64 * 5 / 2;
const BATCH: u64 = 500;

/// Stores [`STORED`] readings from device `bulk` (sensor `t`), pipelined.
async fn fill(d: &TestDaemon) {
    let (mut ws, _) = d.device("bulk").await;
    let batches = STORED / BATCH;
    let window = 16;
    let mut sent = 0;
    let mut acked = 0;
    while acked < batches {
        while sent < batches && sent - acked < window {
            sent += 1;
            send(&mut ws, &batch(Some(sent), "t", BATCH as usize)).await;
        }
        assert_eq!(recv_frame(&mut ws).await["type"], "ack");
        acked += 1;
    }
}

/// Follows `next` until an empty page with `next == since`; returns the
/// items and the number of requests.
async fn walk(base: &str, topic: &str, limit: u64) -> (Vec<Value>, usize) {
    let (mut since, mut out, mut requests) = (0, Vec::new(), 0);
    loop {
        let (items, next) = readings_page(base, topic, since, limit).await;
        requests += 1;
        assert!(next >= since, "next never goes back");
        if items.is_empty() && next == since {
            return (out, requests);
        }
        assert!(!items.is_empty() || next > since, "an empty page moves on");
        out.extend(items);
        since = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_matching_nothing_scans_a_bounded_range_per_request() {
    let d = TestDaemon::start().await;
    fill(&d).await;
    let base = d.addr().to_string();
    let (items, next) = readings_page(&base, "nomatch/x", 0, 1).await;
    assert!(items.is_empty());
    assert!(
        next > 0 && next < STORED,
        "one request stops at the bound: next = {next}"
    );
    assert!(next <= ScanBound::REQUEST.readings as u64 + BATCH * 16);
    let (items, requests) = walk(&base, "nomatch/x", 1).await;
    assert!(items.is_empty());
    // 2.5 bounds' worth: at least 3 requests, and not many more.
    assert!((3..=8).contains(&requests), "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_match_is_found_across_bounded_pages_and_acks_keep_flowing() {
    let d = TestDaemon::start().await;
    fill(&d).await;
    // One reading from another device at the very end.
    let (mut other, _) = d.device("rare").await;
    send(&mut other, &batch(Some(1), "x", 1)).await;
    assert_eq!(recv_frame(&mut other).await["seq"], 1);

    // Eight worst-case walks in parallel while `rare` keeps storing.
    let walks: Vec<_> = (0..8)
        .map(|_| {
            let base = d.addr().to_string();
            tokio::spawn(async move { walk(&base, "nomatch/#", 10_000).await.0.len() })
        })
        .collect();
    for seq in 2..=50 {
        send(&mut other, &batch(Some(seq), "x", 1)).await;
        assert_eq!(recv_frame(&mut other).await["seq"], seq);
    }
    for w in walks {
        assert_eq!(w.await.unwrap(), 0);
    }
    let (items, _) = walk(&d.addr().to_string(), "rare/#", 7).await;
    assert_eq!(items.len(), 50, "every matching reading, once");
    assert_eq!(items[0]["id"].as_u64().unwrap(), STORED + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_matches_little_crosses_bounded_steps_without_gaps() {
    let d = TestDaemon::start().await;
    fill(&d).await;
    let (mut other, _) = d.device("rare").await;
    send(&mut other, &batch(Some(1), "x", 3)).await;
    assert_eq!(recv_frame(&mut other).await["seq"], 1);
    let mut sub = d.subscriber("topic=rare/%23&since=0").await;
    let m = recv_msg(&mut sub).await;
    assert_eq!(m["type"], "subscribed", "{m}");
    let m = recv_msg(&mut sub).await;
    assert_eq!(m["type"], "readings", "{m}");
    let expected: Vec<u64> = (STORED + 1..=STORED + 3).collect();
    assert_eq!(ids_of(m["items"].as_array().unwrap()), expected);
    // Live delivery continues after the replay.
    send(&mut other, &batch(Some(2), "x", 1)).await;
    assert_eq!(recv_frame(&mut other).await["seq"], 2);
    let m = recv_msg(&mut sub).await;
    assert_eq!(ids_of(m["items"].as_array().unwrap()), vec![STORED + 4]);
}
