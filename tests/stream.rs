//! Subscribers over a real WebSocket (SPEC §4): filters, encodings, ops,
//! auth, the replay/live seam, truncation, slow subscribers, shutdown; and
//! `/v1/devices` (SPEC §5).

use std::time::Duration;

use futures_util::SinkExt;
use sensorgate::auth::{Authenticator, Role};
use sensorgate_test_kit::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn subscribed(ws: &mut Ws) -> Value {
    let m = recv_msg(ws).await;
    assert_eq!(m["type"], "subscribed", "{m}");
    m
}

/// Asserts nothing but pings arrives within `ms`.
async fn assert_quiet(ws: &mut Ws, ms: u64) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_filter_form_routes_as_mqtt_does() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let forms = [
        ("topic=d1/temp", vec![("d1", "temp")]),
        ("topic=%2B/temp", vec![("d1", "temp"), ("d2", "temp")]),
        ("topic=+/temp", vec![("d1", "temp"), ("d2", "temp")]),
        ("topic=d1/%2B", vec![("d1", "temp"), ("d1", "hum")]),
        ("topic=d1/%23", vec![("d1", "temp"), ("d1", "hum")]),
        (
            "topic=%23",
            vec![("d1", "temp"), ("d1", "hum"), ("d2", "temp"), ("d2", "hum")],
        ),
        (
            "topic=%2B/%2B",
            vec![("d1", "temp"), ("d1", "hum"), ("d2", "temp"), ("d2", "hum")],
        ),
        ("topic=d2/hum/%23", vec![("d2", "hum")]),
        // Two overlapping filters: each reading once.
        (
            "topic=d1/%23&topic=%2B/temp",
            vec![("d1", "temp"), ("d1", "hum"), ("d2", "temp")],
        ),
    ];
    let mut subs = Vec::new();
    for (q, want) in &forms {
        let mut ws = d.subscriber(q).await;
        subscribed(&mut ws).await;
        subs.push((ws, q, want));
    }
    let (mut d1, _) = d.device("d1").await;
    let (mut d2, _) = d.device("d2").await;
    publish_acked(&mut d1, 1, 1, "temp", 1).await;
    publish_acked(&mut d1, 2, 1, "hum", 1).await;
    publish_acked(&mut d2, 1, 1, "temp", 1).await;
    publish_acked(&mut d2, 2, 1, "hum", 1).await;
    for (ws, q, want) in &mut subs {
        let got = recv_items(ws, want.len()).await;
        let topics: Vec<(String, String)> = got
            .iter()
            .map(|i| {
                (
                    i["device"].as_str().unwrap().into(),
                    i["sensor"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(topics, want, "{q}");
        let ids = ids_of(&got);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "id order for {q}: {ids:?}"
        );
        assert_quiet(ws, 200).await;
    }
}

#[tokio::test]
async fn json_is_the_default_and_items_have_every_field() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let mut ws = d.subscriber("topic=d1/temp").await;
    let s = recv_msg(&mut ws).await;
    assert_eq!(
        s,
        json!({"type": "subscribed", "topics": ["d1/temp"], "last_id": 0})
    );
    let (mut dev, _) = d.device("d1").await;
    publish_acked(&mut dev, 1, 1, "temp", 2).await;
    use futures_util::StreamExt;
    let msg = ws.next().await.unwrap().unwrap();
    let Message::Text(t) = msg else {
        panic!("JSON subscribers get text frames: {msg:?}")
    };
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "readings");
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        2,
        "one commit, one frame"
    );
    let item = &v["items"][0];
    for k in ["id", "device", "sensor", "ts", "value", "unit", "received"] {
        assert!(!item[k].is_null(), "{k} in {item}");
    }
    assert_eq!(item["value"], 0.5);
}

#[tokio::test]
async fn msgpack_subprotocol_switches_both_directions() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let token = d.token(Role::Subscriber, "web");
    let (mut ws, resp) = connect_stream_with(
        d.addr(),
        "",
        Some(&token),
        Some("sensorgate.msgpack, sensorgate.json"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "sensorgate.msgpack"
    );
    let op = mp(&json!({"op": "subscribe", "topics": ["d1/#"]}));
    ws.send(Message::Binary(op.into())).await.unwrap();
    use futures_util::StreamExt;
    let Message::Binary(b) = ws.next().await.unwrap().unwrap() else {
        panic!("binary expected")
    };
    let s: Value = rmp_serde::from_slice(&b).unwrap();
    assert_eq!(
        s,
        json!({"type": "subscribed", "topics": ["d1/#"], "last_id": 0})
    );
    let (mut dev, _) = d.device("d1").await;
    publish_acked(&mut dev, 1, 1, "temp", 3).await;
    let Message::Binary(b) = ws.next().await.unwrap().unwrap() else {
        panic!("binary expected")
    };
    let v: Value = rmp_serde::from_slice(&b).unwrap();
    assert_eq!(v["type"], "readings");
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    assert_eq!(v["items"][0]["sensor"], "temp");
    assert_eq!(v["items"][0]["unit"], "C");
    // A bad op in MessagePack gets a MessagePack error.
    ws.send(Message::Binary(mp(&json!({"op": "dance"})).into()))
        .await
        .unwrap();
    let e = recv_msg(&mut ws).await;
    assert_eq!(e["code"], "invalid");
}

#[tokio::test]
async fn json_subprotocol_is_echoed() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let token = d.token(Role::Subscriber, "web");
    let (mut ws, resp) = connect_stream_with(
        d.addr(),
        "topic=%23",
        Some(&token),
        Some("sensorgate.json"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "sensorgate.json");
    use futures_util::StreamExt;
    let msg = ws.next().await.unwrap().unwrap();
    assert!(matches!(msg, Message::Text(_)), "{msg:?}");
}

#[tokio::test]
async fn subscribe_and_unsubscribe_messages() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let mut ws = d.subscriber("").await;
    let (mut dev, _) = d.device("d1").await;
    publish_acked(&mut dev, 1, 1, "temp", 1).await;
    send_op(
        &mut ws,
        &json!({"op": "subscribe", "topics": ["d1/temp", "+/hum"]}),
    )
    .await;
    let s = subscribed(&mut ws).await;
    assert_eq!(s["topics"], json!(["d1/temp", "+/hum"]));
    assert_eq!(s["last_id"], 1, "newest stored id overall");
    publish_acked(&mut dev, 2, 1, "temp", 1).await;
    publish_acked(&mut dev, 3, 1, "hum", 1).await;
    assert_eq!(ids_of(&recv_items(&mut ws, 2).await), vec![2, 3]);

    send_op(
        &mut ws,
        &json!({"op": "unsubscribe", "topics": ["d1/temp"]}),
    )
    .await;
    assert_eq!(
        recv_msg(&mut ws).await,
        json!({"type": "unsubscribed", "topics": ["d1/temp"]})
    );
    publish_acked(&mut dev, 4, 1, "temp", 1).await;
    publish_acked(&mut dev, 5, 1, "hum", 1).await;
    let items = recv_items(&mut ws, 1).await;
    assert_eq!(items[0]["sensor"], "hum");
    assert_eq!(items[0]["id"], 5);
    assert_quiet(&mut ws, 200).await;
}

#[tokio::test]
async fn topics_claim_limits_what_a_token_may_subscribe() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let token = Authenticator::new(SECRET).mint(
        Role::Subscriber,
        "web",
        None,
        Some(vec!["d1/#".into(), "+/hum".into()]),
    );
    let (mut ws, _) = connect_stream_with(d.addr(), "topic=%23", Some(&token), None, None)
        .await
        .unwrap();
    let e = recv_msg(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "forbidden", "{e}");
    for topics in [
        json!(["d2/temp"]),
        json!(["d1/temp", "+/+"]),
        json!(["+/temp"]),
    ] {
        send_op(&mut ws, &json!({"op": "subscribe", "topics": topics})).await;
        let e = recv_msg(&mut ws).await;
        assert_eq!(e["code"], "forbidden", "{topics}: {e}");
    }
    // Still open, and what the claim covers works.
    send_op(
        &mut ws,
        &json!({"op": "subscribe", "topics": ["d1/temp", "d2/hum"]}),
    )
    .await;
    subscribed(&mut ws).await;
    let (mut dev, _) = d.device("d1").await;
    publish_acked(&mut dev, 1, 1, "temp", 1).await;
    publish_acked(&mut dev, 2, 1, "x", 1).await;
    let items = recv_items(&mut ws, 1).await;
    assert_eq!(items[0]["sensor"], "temp");
}

#[tokio::test]
async fn origin_outside_allowed_origins_is_403() {
    let _shared = FLOOD_LOCK.read().await;
    let d =
        TestDaemon::start_with(|c| c.server.allowed_origins = vec!["https://dash.example".into()])
            .await;
    let token = d.token(Role::Subscriber, "web");
    let err = connect_stream_with(
        d.addr(),
        "",
        Some(&token),
        None,
        Some("https://evil.example"),
    )
    .await
    .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("{err:?}")
    };
    assert_eq!(resp.status(), 403);
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"], "forbidden");
    connect_stream_with(
        d.addr(),
        "",
        Some(&token),
        None,
        Some("https://dash.example"),
    )
    .await
    .expect("allowed origin");
    connect_stream_with(d.addr(), "", Some(&token), None, None)
        .await
        .expect("no Origin: not a browser, allowed");
}

#[tokio::test]
async fn subscriber_auth_401_403_and_public() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        e => panic!("{e:?}"),
    };
    let e = connect_stream_with(d.addr(), "", None, None, None)
        .await
        .unwrap_err();
    assert_eq!(status(e), 401);
    let dev = d.token(Role::Device, "d1");
    let e = connect_stream_with(d.addr(), "", Some(&dev), None, None)
        .await
        .unwrap_err();
    assert_eq!(status(e), 403);
    let sub = d.token(Role::Subscriber, "web");
    connect_stream_with(
        d.addr(),
        &format!("access_token={sub}&topic=%23"),
        None,
        None,
        None,
    )
    .await
    .expect("query token");

    let p = TestDaemon::start_with(|c| c.auth.public_subscribers = true).await;
    let (mut ws, _) = connect_stream_with(p.addr(), "topic=%23", None, None, None)
        .await
        .expect("public subscribers need no token");
    subscribed(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_has_no_gap_and_no_duplicate_while_devices_publish() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let (mut dev, _) = d.device("d1").await;
    let (mut other, _) = d.device("d2").await;
    publish_acked(&mut dev, 1, 10, "temp", 5).await;
    publish_acked(&mut other, 1, 2, "temp", 5).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Two devices keep publishing while subscribers resume.
    let publisher = tokio::spawn(async move {
        let (mut seq, mut oseq) = (11, 3);
        loop {
            seq = publish_acked(&mut dev, seq, 1, "temp", 3).await;
            oseq = publish_acked(&mut other, oseq, 1, "temp", 2).await;
            if stop_rx.try_recv().is_ok() {
                return;
            }
        }
    });
    let mut resumed = Vec::new();
    for since in [0u64, 7, 23, 40, 55] {
        let mut ws = d.subscriber(&format!("topic=d1/%23&since={since}")).await;
        let s = subscribed(&mut ws).await;
        assert!(s["last_id"].as_u64().unwrap() >= 60);
        resumed.push((since, ws));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    publisher.await.unwrap();
    let stored: Vec<u64> = ids_of(&d.stored("d1/#").await);
    for (since, mut ws) in resumed {
        let want: Vec<u64> = stored.iter().copied().filter(|&id| id > since).collect();
        let got = ids_of(&recv_items(&mut ws, want.len()).await);
        assert_eq!(got, want, "resume since={since}");
        assert_quiet(&mut ws, 200).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn since_older_than_retained_sends_truncated() {
    let _shared = FLOOD_LOCK.read().await;
    let mut d = TestDaemon::start().await;
    let (mut dev, _) = d.device("d1").await;
    publish_acked(&mut dev, 1, 5, "temp", 4).await;
    drop(dev);
    d.stop().await;
    let store = sensorgate::store::Store::open(&d.config.storage.path).unwrap();
    store
        .prune(sensorgate::time::unix_ms(), Duration::from_secs(3600), 1)
        .unwrap();
    let oldest = store.oldest_id().unwrap().unwrap();
    assert_eq!(oldest, 17, "only the newest commit is kept");
    drop(store);
    let config = (*d.config).clone();
    let d = TestDaemon::start_in(d.into_dir(), config).await;
    let mut ws = d.subscriber("topic=%23&since=3").await;
    assert_eq!(subscribed(&mut ws).await["last_id"], 20);
    assert_eq!(
        recv_msg(&mut ws).await,
        json!({"type": "truncated", "oldest_id": 17})
    );
    assert_eq!(ids_of(&recv_items(&mut ws, 4).await), vec![17, 18, 19, 20]);
    // Within what is retained: no notice.
    let mut ws = d.subscriber("topic=%23&since=16").await;
    subscribed(&mut ws).await;
    assert_eq!(ids_of(&recv_items(&mut ws, 4).await), vec![17, 18, 19, 20]);
}

/// Readings with ~200-byte string values, so an unbounded queue would show.
fn fat_batch(seq: u64, n: usize) -> Value {
    let value = "x".repeat(200);
    let readings: Vec<Value> = (0..n)
        .map(|i| json!({"sensor": "s", "ts": i as i64, "value": value}))
        .collect();
    json!({"seq": seq, "readings": readings})
}

/// Sends `batches` fat batches of `n` with a pipeline window of 4 (fewer
/// readings in flight than a subscriber queue holds, so a reader that keeps
/// up is never skipped).
async fn flood(dev: &mut Ws, batches: u64, n: usize) {
    let mut seq = 1;
    while seq <= batches {
        let window = (batches - seq + 1).min(4);
        for s in seq..seq + window {
            send(dev, &fat_batch(s, n)).await;
        }
        for _ in 0..window {
            assert_eq!(recv_frame(dev).await["type"], "ack");
        }
        seq += window;
    }
}

const FLOOD_BATCHES: u64 = 400;
/// RSS growth allowed while flooding. Measured: ~22 MiB with no stuck
/// subscriber (sled's cache), 25-27 MiB with one (queue of 4000; 36-42 MiB
/// without glibc's fixed mmap threshold, `sensorgate::allocator`, which the
/// test daemon sets as the binary does); an unbounded queue would add ~50
/// MiB for these 80,000 readings.
const RSS_BUDGET_MIB: u64 = 40;
/// The flood tests measure the whole process's RSS, which every test in this
/// binary shares: a flood test runs alone (the write side), every other
/// test takes the read side, so no other daemon's memory blurs the figure.
static FLOOD_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Reads `n` items without keeping them (the test's own memory must not
/// blur the daemon's); asserts consecutive ids from 1.
async fn read_all_in_order(ws: &mut Ws, n: usize) {
    let mut next = 1u64;
    while next <= n as u64 {
        let m = recv_msg(ws).await;
        assert_eq!(m["type"], "readings", "healthy subscriber: {m}");
        for item in m["items"].as_array().unwrap() {
            assert_eq!(
                item["id"].as_u64().unwrap(),
                next,
                "every reading, in order"
            );
            next += 1;
        }
    }
}
const FLOOD_N: usize = 200;
const FLOOD_TOTAL: usize = FLOOD_BATCHES as usize * FLOOD_N;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_skipped_forward_with_lagged_and_memory_stays_bounded() {
    let _alone = FLOOD_LOCK.write().await;
    let d = TestDaemon::start_with(|c| c.fanout.subscriber_queue = 4000).await;
    let mut slow = d.subscriber("topic=%23").await;
    subscribed(&mut slow).await;
    let mut healthy = d.subscriber("topic=%23").await;
    subscribed(&mut healthy).await;
    let reader = tokio::spawn(async move { read_all_in_order(&mut healthy, FLOOD_TOTAL).await });
    let (mut dev, _) = d.device("d1").await;
    let before = rss_kib();
    flood(&mut dev, FLOOD_BATCHES, FLOOD_N).await;
    reader.await.unwrap();
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!("RSS growth with a stuck subscriber: {grown_mib} MiB");
    assert!(grown_mib < RSS_BUDGET_MIB, "RSS grew {grown_mib} MiB");

    // The slow one now reads: every reading is either delivered or counted.
    let (mut delivered, mut dropped, mut lagged) = (0usize, 0u64, 0);
    let mut last = 0u64;
    while delivered + (dropped as usize) < FLOOD_TOTAL {
        let m = recv_msg(&mut slow).await;
        match m["type"].as_str().unwrap() {
            "readings" => {
                for id in ids_of(m["items"].as_array().unwrap()) {
                    assert!(id > last, "id order");
                    last = id;
                    delivered += 1;
                }
            }
            "lagged" => {
                lagged += 1;
                dropped += m["dropped"].as_u64().unwrap();
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert!(
        lagged >= 1 && dropped > 0,
        "the stuck subscriber was skipped forward"
    );
    assert_eq!(delivered + dropped as usize, FLOOD_TOTAL);
    assert_eq!(
        last, FLOOD_TOTAL as u64,
        "skipping forward ends at the newest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_with_disconnect_policy_is_closed_4008() {
    let _alone = FLOOD_LOCK.write().await;
    let d = TestDaemon::start_with(|c| {
        c.fanout.subscriber_queue = 4000;
        c.fanout.slow_policy = sensorgate::config::SlowPolicy::Disconnect;
    })
    .await;
    let mut slow = d.subscriber("topic=%23").await;
    subscribed(&mut slow).await;
    let mut healthy = d.subscriber("topic=%23").await;
    subscribed(&mut healthy).await;
    let reader = tokio::spawn(async move { read_all_in_order(&mut healthy, FLOOD_TOTAL).await });
    let (mut dev, _) = d.device("d1").await;
    let before = rss_kib();
    flood(&mut dev, FLOOD_BATCHES, FLOOD_N).await;
    reader.await.unwrap();
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < RSS_BUDGET_MIB, "RSS grew {grown_mib} MiB");
    assert_eq!(recv_close(&mut slow).await, Some(CloseCode::Library(4008)));
}

#[tokio::test]
async fn bad_ops_get_an_error_and_the_connection_stays_open() {
    let _shared = FLOOD_LOCK.read().await;
    let d = TestDaemon::start().await;
    let mut ws = d.subscriber("since=abc").await;
    let e = recv_msg(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid")),
        "{e}"
    );
    let bad: Vec<(&str, &str)> = vec![
        ("{not json", "invalid"),
        (r#"{"op":"dance"}"#, "invalid"),
        (r##"{"topics":["#"]}"##, "invalid"),
        (r#"{"op":"subscribe"}"#, "invalid"),
        (r#"{"op":"subscribe","topics":[]}"#, "invalid"),
        (r#"{"op":"subscribe","topics":["d1/#/x"]}"#, "invalid"),
        (r#"{"op":"subscribe","topics":["d+/x"]}"#, "invalid"),
        (
            r##"{"op":"subscribe","topics":["#"],"since":-1}"##,
            "invalid",
        ),
        (r#"{"op":"unsubscribe","topics":["a//b"]}"#, "invalid"),
        ("[1,2]", "invalid"),
    ];
    for (text, code) in bad {
        ws.send(Message::Text(text.into())).await.unwrap();
        let e = recv_msg(&mut ws).await;
        assert_eq!(e["type"], "error", "{text}: {e}");
        assert_eq!(e["code"], code, "{text}: {e}");
        assert!(e["detail"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    }
    send_op(&mut ws, &json!({"op": "subscribe", "topics": ["#"]})).await;
    subscribed(&mut ws).await;
    let (mut dev, _) = d.device("d1").await;
    publish_acked(&mut dev, 1, 1, "temp", 1).await;
    assert_eq!(recv_items(&mut ws, 1).await.len(), 1);
}

#[tokio::test]
async fn shutdown_closes_subscribers_with_1001() {
    let _shared = FLOOD_LOCK.read().await;
    let mut d = TestDaemon::start().await;
    let mut ws = d.subscriber("topic=%23").await;
    subscribed(&mut ws).await;
    d.stop().await;
    assert_eq!(recv_close(&mut ws).await, Some(CloseCode::Away));
}

#[tokio::test]
async fn devices_lists_connection_state_last_seen_and_sensors() {
    let _shared = FLOOD_LOCK.read().await;
    let mut d = TestDaemon::start().await;
    let (mut d1, _) = d.device("d1").await;
    publish_acked(&mut d1, 1, 1, "temp", 1).await;
    publish_acked(&mut d1, 2, 1, "hum", 1).await;
    let (mut d2, _) = d.device("d2").await;
    publish_acked(&mut d2, 1, 1, "temp", 1).await;
    drop(d2);
    let (_d3, _) = d.device("d3").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = d.token(Role::Subscriber, "web");
    // The same address after a restart.
    let devices = d.http("/v1/devices");
    let get = |token: String| {
        let url = devices.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let list: Value = get(token).await.json().await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["device"], "d1");
    assert_eq!(list[0]["connected"], true);
    assert_eq!(list[0]["sensors"], json!(["hum", "temp"]));
    assert!(list[0]["last_seen"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(list[1]["device"], "d2");
    assert_eq!(list[1]["connected"], false);
    assert_eq!(
        list[2],
        json!({"device": "d3", "connected": true, "last_seen": null, "sensors": []})
    );

    let limited = Authenticator::new(SECRET).mint(
        Role::Subscriber,
        "web",
        None,
        Some(vec!["d1/temp".into()]),
    );
    let list: Value = get(limited).await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["sensors"], json!(["temp"]));
    assert_eq!(get(d.token(Role::Device, "d1")).await.status(), 403);

    // A restarted daemon learns its devices from the stored readings (the
    // ones its start verified): the same devices, sensors and last_seen,
    // none connected; d3 never stored a reading.
    let before = get(d.token(Role::Subscriber, "web"))
        .await
        .json::<Value>()
        .await
        .unwrap();
    drop((d1, _d3));
    d.restart().await;
    let list: Value = get(d.token(Role::Subscriber, "web"))
        .await
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for (after, before) in list.iter().zip(before.as_array().unwrap()) {
        assert_eq!(after["device"], before["device"]);
        assert_eq!(after["sensors"], before["sensors"]);
        assert_eq!(after["last_seen"], before["last_seen"]);
        assert_eq!(after["connected"], false);
    }
}
