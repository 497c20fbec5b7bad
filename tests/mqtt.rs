//! The MQTT bridge against a real Mosquitto (SPEC §6): store-and-forward
//! publishing, outages, restarts, the backlog bound.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sensorgate::config::{Config, Payload};
use sensorgate_test_kit::mosquitto::{id_of, Mosquitto, Msg, Subscriber};
use sensorgate_test_kit::*;
use serde_json::Value;

const PREFIX: &str = "sg";

/// A client id unique within this test process.
fn client_id(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn bridged(c: &mut Config, broker: &Mosquitto) {
    c.mqtt.url = Some(broker.url());
    c.mqtt.client_id = client_id("sensorgate");
    c.mqtt.topic_prefix = PREFIX.to_string();
    c.mqtt.max_backoff = Duration::from_millis(500);
}

async fn readyz(d: &TestDaemon) -> (u16, Value) {
    let resp = reqwest::get(d.http("/readyz")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Polls `/readyz` (at most 15 s) until `ok` holds for its `mqtt` object.
async fn wait_mqtt(d: &TestDaemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readyz(d).await;
        assert_eq!(status, 200, "{body}");
        if ok(&body["mqtt"]) {
            return body["mqtt"].clone();
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Restarts a stopped broker so that the test subscriber is subscribed again
/// before the bridge can reconnect. The bridge's backoff (capped at
/// `OUTAGE_BACKOFF` in these tests) has grown past a second after this long
/// down, while the subscriber retries every 50 ms; the test then does not
/// depend on the broker restoring the subscriber's session from disk.
async fn restart_broker_for(broker: &mut Mosquitto, sub: &mut Subscriber, subacks: u32) {
    tokio::time::sleep(Duration::from_millis(3500)).await;
    broker.run().await;
    sub.wait_subscribed(subacks).await;
}

/// Cap of the bridge's reconnect backoff in the outage tests.
const OUTAGE_BACKOFF: Duration = Duration::from_secs(4);

/// Sends `batches` acked batches of `per_batch` readings from `device`.
async fn send_acked(d: &TestDaemon, device: &str, batches: u64, per_batch: usize) {
    let (mut ws, welcome) = d.device(device).await;
    let first = welcome["last_seq"].as_u64().unwrap() + 1;
    for seq in first..first + batches {
        send(&mut ws, &batch(Some(seq), "temp", per_batch)).await;
    }
    for seq in first..first + batches {
        let ack = recv_frame(&mut ws).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["seq"], seq);
    }
}

/// The ids of new readings in arrival order, skipping redeliveries of ids
/// already seen (QoS 1 is at least once across an outage).
fn first_arrivals(msgs: &[Msg]) -> Vec<u64> {
    let mut seen = HashSet::new();
    msgs.iter()
        .map(id_of)
        .filter(|id| seen.insert(*id))
        .collect()
}

fn ids(stored: &[Value]) -> Vec<u64> {
    stored.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn every_stored_reading_is_published_once_on_its_topic() {
    let broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port, &client_id("sub"), "sg/#").await;
    let d = TestDaemon::start_with(|c| bridged(c, &broker)).await;
    wait_mqtt(&d, "connected", |m| m["connected"] == true).await;

    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "temp", 3)).await;
    send(&mut ws, &batch(Some(2), "hum", 2)).await;
    recv_frame(&mut ws).await;
    recv_frame(&mut ws).await;
    let stored = d.stored("#").await;
    assert_eq!(stored.len(), 5);

    let msgs = sub
        .collect(5, Duration::from_secs(10), Duration::from_millis(500))
        .await;
    assert_eq!(msgs.len(), 5, "each reading exactly once: {msgs:?}");
    for (m, r) in msgs.iter().zip(&stored) {
        assert_eq!(
            m.topic,
            format!("sg/d1/{}", r["sensor"].as_str().unwrap()),
            "topic"
        );
        assert_eq!(&m.json(), r, "payload is the stored item");
    }
    let m = wait_mqtt(&d, "empty backlog", |m| m["backlog"] == 0).await;
    assert_eq!(m["dropped"], 0);
}

#[tokio::test]
async fn msgpack_payload_when_configured() {
    let broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port, &client_id("sub"), "sg/#").await;
    let d = TestDaemon::start_with(|c| {
        bridged(c, &broker);
        c.mqtt.payload = Payload::Msgpack;
        c.mqtt.qos = 0;
    })
    .await;
    wait_mqtt(&d, "connected", |m| m["connected"] == true).await;
    send_acked(&d, "d1", 1, 2).await;
    let stored = d.stored("#").await;
    let msgs = sub
        .collect(2, Duration::from_secs(10), Duration::from_millis(200))
        .await;
    assert_eq!(msgs.len(), 2);
    for (m, r) in msgs.iter().zip(&stored) {
        let v: Value = rmp_serde::from_slice(&m.payload).expect("MessagePack payload");
        assert_eq!(&v, r);
    }
}

#[tokio::test]
async fn broker_outage_backlog_arrives_in_id_order_after_restart() {
    let mut broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port, &client_id("sub"), "sg/#").await;
    let d = TestDaemon::start_with(|c| {
        bridged(c, &broker);
        c.mqtt.max_backoff = OUTAGE_BACKOFF;
    })
    .await;
    wait_mqtt(&d, "connected", |m| m["connected"] == true).await;

    broker.stop().await;
    wait_mqtt(&d, "disconnected", |m| m["connected"] == false).await;
    // Ingest goes on at full speed: every batch is acked while the broker is down.
    send_acked(&d, "d1", 6, 50).await;
    let m = wait_mqtt(&d, "backlog of 300", |m| m["backlog"] == 300).await;
    assert!(m["last_error"].is_string(), "{m}");

    restart_broker_for(&mut broker, &mut sub, 2).await;
    wait_mqtt(&d, "drained", |m| {
        m["backlog"] == 0 && m["connected"] == true
    })
    .await;
    let msgs = sub
        .collect(300, Duration::from_secs(20), Duration::from_millis(300))
        .await;
    assert_eq!(first_arrivals(&msgs), ids(&d.stored("#").await));
    wait_mqtt(&d, "drained", |m| {
        m["backlog"] == 0 && m["connected"] == true
    })
    .await;
}

#[tokio::test]
async fn outbox_survives_a_daemon_restart() {
    let mut broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port, &client_id("sub"), "sg/#").await;
    broker.stop().await;

    let mut a = TestDaemon::start_with(|c| {
        bridged(c, &broker);
        c.mqtt.max_backoff = OUTAGE_BACKOFF;
    })
    .await;
    send_acked(&a, "d1", 4, 50).await;
    wait_mqtt(&a, "backlog of 200", |m| m["backlog"] == 200).await;
    let stored = ids(&a.stored("#").await);
    a.stop().await;

    let config = (*a.config).clone();
    let b = TestDaemon::start_in(a.into_dir(), config).await;
    wait_mqtt(&b, "backlog kept", |m| m["backlog"] == 200).await;
    restart_broker_for(&mut broker, &mut sub, 2).await;
    let msgs = sub
        .collect(200, Duration::from_secs(20), Duration::from_millis(300))
        .await;
    assert_eq!(first_arrivals(&msgs), stored);
    wait_mqtt(&b, "drained", |m| m["backlog"] == 0).await;
}

#[tokio::test]
async fn backlog_over_max_drops_the_oldest_and_counts_them() {
    let mut broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port, &client_id("sub"), "sg/#").await;
    broker.stop().await;

    let d = TestDaemon::start_with(|c| {
        bridged(c, &broker);
        c.mqtt.max_backlog = 50;
        c.mqtt.max_backoff = OUTAGE_BACKOFF;
    })
    .await;
    send_acked(&d, "d1", 4, 50).await;
    let m = wait_mqtt(&d, "150 dropped", |m| m["dropped"] == 150).await;
    assert_eq!(m["backlog"], 50, "{m}");
    let metrics = reqwest::get(d.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sensorgate_mqtt_dropped_total"),
        "{metrics}"
    );

    restart_broker_for(&mut broker, &mut sub, 2).await;
    let msgs = sub
        .collect(50, Duration::from_secs(20), Duration::from_millis(500))
        .await;
    let stored = ids(&d.stored("#").await);
    assert_eq!(
        first_arrivals(&msgs),
        stored[150..].to_vec(),
        "the newest 50"
    );
    let m = wait_mqtt(&d, "drained", |m| m["backlog"] == 0).await;
    assert_eq!(m["dropped"], 150);
}

#[tokio::test]
async fn shutdown_hands_the_outbox_to_the_broker() {
    let broker = Mosquitto::start().await;
    let mut sub = Subscriber::connect(broker.port, &client_id("sub"), "sg/#").await;
    let mut d = TestDaemon::start_with(|c| bridged(c, &broker)).await;
    wait_mqtt(&d, "connected", |m| m["connected"] == true).await;
    send_acked(&d, "d1", 10, 100).await;
    let stored = ids(&d.stored("#").await);
    d.stop().await;
    let msgs = sub
        .collect(1000, Duration::from_secs(10), Duration::from_millis(200))
        .await;
    assert_eq!(first_arrivals(&msgs), stored);
}

#[tokio::test]
async fn readyz_mqtt_is_null_when_the_bridge_is_off() {
    let d = TestDaemon::start().await;
    let (status, body) = readyz(&d).await;
    assert_eq!(status, 200);
    assert!(body["mqtt"].is_null(), "{body}");
}

// ---- Relay (`mqtt.relay`): several instances sharing one broker ----

fn relaying(c: &mut Config, broker: &Mosquitto) {
    bridged(c, broker);
    c.mqtt.relay = true;
}

/// Next `/v1/stream` message within `within`, or `None`.
async fn recv_within(ws: &mut Ws, within: Duration) -> Option<Value> {
    tokio::time::timeout(within, recv_msg(ws)).await.ok()
}

/// Asserts that no `readings` arrive on `ws` for `ms` milliseconds.
async fn assert_no_more_items(ws: &mut Ws, ms: u64, who: &str) {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(m) = recv_within(ws, left).await {
            assert_ne!(m["type"], "readings", "{who}: unexpected extra items: {m}");
        }
    }
}

/// A subscriber on `query` that has been told it is subscribed.
async fn stream_subscriber(d: &TestDaemon, query: &str) -> Ws {
    let mut ws = d.subscriber(query).await;
    let m = recv_msg(&mut ws).await;
    assert_eq!(m["type"], "subscribed", "{m}");
    ws
}

/// Probes go every 100 ms, at most this many (15 s), until one is relayed.
const PROBES: u64 = 150;

/// Whether an item arrived on `ws` within 100 ms (after a probe): then the
/// relay subscription the probe travelled through is active at the broker.
async fn probe_relayed(ws: &mut Ws, what: &str, n: u64) -> bool {
    match recv_within(ws, Duration::from_millis(100)).await {
        Some(m) => {
            assert_eq!(m["type"], "readings", "{m}");
            true
        }
        None => {
            assert!(n < PROBES, "{what}: nothing relayed after {n} probes");
            false
        }
    }
}

/// The item as stored by its origin: the relayed item without `origin`.
fn without_origin(item: &Value) -> Value {
    let mut v = item.clone();
    v.as_object_mut().unwrap().remove("origin");
    v
}

#[tokio::test]
async fn relay_delivers_other_instances_readings_live_once_without_echo() {
    const N: usize = 120;
    let broker = Mosquitto::start().await;
    let a = TestDaemon::start_with(|c| relaying(c, &broker)).await;
    let b = TestDaemon::start_with(|c| relaying(c, &broker)).await;
    let (a_id, b_id) = (
        a.config.mqtt.client_id.clone(),
        b.config.mqtt.client_id.clone(),
    );
    assert_ne!(a_id, b_id);
    wait_mqtt(&a, "a connected", |m| m["connected"] == true).await;
    wait_mqtt(&b, "b connected", |m| m["connected"] == true).await;

    // The subscribers under test, registered before anything is published.
    let mut on_a = stream_subscriber(&a, "topic=d1/%23").await;
    let mut on_b = stream_subscriber(&b, "topic=d1/%23").await;

    // Wait until each instance's relay subscription is active at the
    // broker, with probe devices the subscribers above do not match.
    for (from, to, device) in [(&a, &b, "warm-a"), (&b, &a, "warm-b")] {
        let mut watch = stream_subscriber(to, &format!("topic={device}/%23")).await;
        let (mut dev, _) = from.device(device).await;
        for seq in 1..=PROBES {
            publish_acked(&mut dev, seq, 1, "t", 1).await;
            if probe_relayed(&mut watch, device, seq).await {
                break;
            }
        }
    }

    // A device on A publishes N readings.
    let (mut d1, _) = a.device("d1").await;
    publish_acked(&mut d1, 1, 6, "temp", N / 6).await;
    let stored = a.stored("d1/#").await;
    assert_eq!(stored.len(), N);

    // A's own subscriber: each once, without `origin` (not echoed back
    // through the broker).
    let got_a = recv_items(&mut on_a, N).await;
    assert_eq!(got_a, stored, "A's subscriber sees A's stored items");
    assert!(got_a.iter().all(|i| i.get("origin").is_none()));

    // B's subscriber: each once, in order, with the origin's fields plus
    // `origin` = A's client id.
    let got_b = recv_items(&mut on_b, N).await;
    for (item, want) in got_b.iter().zip(&stored) {
        assert_eq!(item["origin"], a_id.as_str(), "{item}");
        assert_eq!(&without_origin(item), want);
    }
    assert_eq!(ids_of(&got_b), ids(&stored));

    // Nothing more: no duplicate on B, no echo on A.
    assert_no_more_items(&mut on_a, 1000, "A").await;
    assert_no_more_items(&mut on_b, 300, "B").await;
    // Relayed readings are live only: B stored none of them.
    assert!(b.stored("d1/#").await.is_empty());
}

/// A bare MQTT client publishing at QoS 1 to `broker`.
async fn mqtt_publisher(broker: &Mosquitto) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
    let o = rumqttc::MqttOptions::new(client_id("pub"), "127.0.0.1", broker.port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
    let task = tokio::spawn(async move {
        for _ in 0..10_000 {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    (client, task)
}

fn relayed_payload(device: &str, id: u64, origin: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::json!({"id": id, "device": device, "sensor": "temp",
        "ts": 1_763_800_000_000_i64, "value": 1.5, "received": 1_763_800_000_100_i64});
    if let Some(o) = origin {
        v["origin"] = o.into();
    }
    rmp_serde::to_vec_named(&v).unwrap()
}

#[tokio::test]
async fn relay_drops_malformed_messages_and_counts_them() {
    use rumqttc::QoS;
    let broker = Mosquitto::start().await;
    let b = TestDaemon::start_with(|c| {
        relaying(c, &broker);
        c.mqtt.payload = Payload::Msgpack;
    })
    .await;
    wait_mqtt(&b, "connected", |m| m["connected"] == true).await;
    let mut ws = stream_subscriber(&b, "topic=%23").await;
    let (publisher, task) = mqtt_publisher(&broker).await;
    let publish = |topic: String, payload: Vec<u8>| {
        let publisher = publisher.clone();
        async move {
            publisher
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    };

    for n in 1..=PROBES {
        let probe = relayed_payload("probe", n, Some("other"));
        publish(format!("{PREFIX}/probe/temp"), probe).await;
        if probe_relayed(&mut ws, "probe", n).await {
            break;
        }
    }
    // Drain late probes.
    while recv_within(&mut ws, Duration::from_millis(300))
        .await
        .is_some()
    {}

    let own = b.config.mqtt.client_id.clone();
    let bad: Vec<(String, Vec<u8>)> = vec![
        ("sg/d9/temp".into(), b"{\"not\":\"msgpack\"}".to_vec()),
        ("sg/d9/temp".into(), vec![0xc1, 0xff]),
        ("sg/d9/temp".into(), Vec::new()),
        ("sg/d9/temp".into(), relayed_payload("d9", 1, None)),
        ("sg/d9/hum".into(), relayed_payload("d9", 2, Some("other"))),
        ("sg/d9/temp".into(), relayed_payload("d9", 3, Some(&own))),
    ];
    for (topic, payload) in bad {
        publish(topic, payload).await;
    }
    // Then a good one, which arrives after all the above were handled.
    publish("sg/d9/temp".into(), relayed_payload("d9", 4, Some("other"))).await;
    let m = recv_within(&mut ws, Duration::from_secs(10))
        .await
        .expect("the good message is relayed");
    assert_eq!(m["type"], "readings", "{m}");
    let items = m["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{m}");
    assert_eq!(items[0]["id"], 4);
    assert_eq!(items[0]["origin"], "other");
    assert_no_more_items(&mut ws, 300, "B").await;

    let metrics = reqwest::get(b.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["malformed", "topic", "no_origin"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("sensorgate_mqtt_relay_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} series: {metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1.0, "{line}");
    }
    // The daemon is still fine.
    wait_mqtt(&b, "connected", |m| m["connected"] == true).await;
    task.abort();
}
