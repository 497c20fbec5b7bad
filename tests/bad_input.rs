//! Rejections over a real socket (SPEC §3 error table, §10 limits): every
//! rejected batch gets the table's `code`, stores nothing, and leaves the
//! connection usable; the connection-ending limits (1008, 1009, idle) close it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sensorgate_test_kit::*;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A connected device that checks, after each rejection, that nothing was
/// stored and that a good batch on the same connection is still acked.
struct Probe<'a> {
    d: &'a TestDaemon,
    ws: Ws,
    /// The seq the server expects next: rejected batches must not move it.
    next_seq: u64,
    stored: usize,
}

impl<'a> Probe<'a> {
    async fn new(d: &'a TestDaemon) -> Probe<'a> {
        let (ws, _) = d.device("d1").await;
        let mut p = Probe {
            d,
            ws,
            next_seq: 1,
            stored: 0,
        };
        // Give the device a seq record, so `next_seq` is what the server expects.
        p.good().await;
        p
    }

    async fn good(&mut self) {
        send(&mut self.ws, &batch(Some(self.next_seq), "good", 2)).await;
        assert_eq!(
            recv_frame(&mut self.ws).await,
            json!({"type": "ack", "seq": self.next_seq})
        );
        self.next_seq += 1;
        self.stored += 2;
    }

    /// Sends `frame`, expects `code` echoing `seq` (absent when `None`) and
    /// no `retry_after_ms`; then nothing new is stored and the connection
    /// still acks a good batch with the seq the rejected one carried.
    async fn rejects(&mut self, frame: Vec<u8>, code: &str, seq: Option<u64>) -> Value {
        send_bytes(&mut self.ws, frame).await;
        self.after_rejection(code, seq).await
    }

    async fn after_rejection(&mut self, code: &str, seq: Option<u64>) -> Value {
        let e = recv_error(&mut self.ws, code).await;
        match seq {
            Some(s) => assert_eq!(e["seq"], s, "{e}"),
            None => assert!(e.get("seq").is_none(), "{e}"),
        }
        assert!(e.get("retry_after_ms").is_none(), "{e}");
        assert_eq!(self.d.stored("#").await.len(), self.stored, "after {e}");
        self.good().await;
        e
    }

    /// A batch with this probe's next seq: one good reading, then `bad`.
    fn with_bad_reading(&self, bad: Value) -> Vec<u8> {
        mp(&json!({"seq": self.next_seq, "readings": [
            {"sensor": "bad", "ts": 1, "value": 1.0},
            bad,
        ]}))
    }

    /// A batch with this probe's next seq whose one reading's `value` is
    /// written by `write_value` (for what JSON cannot hold).
    fn with_value(&self, write_value: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 2).unwrap();
        rmp::encode::write_str(&mut buf, "seq").unwrap();
        rmp::encode::write_uint(&mut buf, self.next_seq).unwrap();
        rmp::encode::write_str(&mut buf, "readings").unwrap();
        rmp::encode::write_array_len(&mut buf, 1).unwrap();
        rmp::encode::write_map_len(&mut buf, 3).unwrap();
        rmp::encode::write_str(&mut buf, "sensor").unwrap();
        rmp::encode::write_str(&mut buf, "bad").unwrap();
        rmp::encode::write_str(&mut buf, "ts").unwrap();
        rmp::encode::write_sint(&mut buf, 1).unwrap();
        rmp::encode::write_str(&mut buf, "value").unwrap();
        write_value(&mut buf);
        buf
    }
}

fn nested_arrays(buf: &mut Vec<u8>, depth: usize) {
    for _ in 0..depth {
        rmp::encode::write_array_len(buf, 1).unwrap();
    }
    rmp::encode::write_nil(buf).unwrap();
}

#[tokio::test]
async fn invalid_when_frame_is_not_a_map() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    for v in [
        json!([1, 2]),
        json!(5),
        json!("readings"),
        json!(null),
        json!(true),
    ] {
        let e = p.rejects(mp(&v), "invalid", None).await;
        assert!(e["detail"].as_str().unwrap().contains("map"), "{e}");
    }
}

#[tokio::test]
async fn invalid_when_a_field_is_missing_or_ill_typed() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    let s = p.next_seq;
    p.rejects(mp(&json!({"seq": s})), "invalid", Some(s)).await;
    for readings in [json!({"sensor": "a"}), json!("x"), json!(3)] {
        let s = p.next_seq;
        let frame = mp(&json!({"seq": s, "readings": readings}));
        p.rejects(frame, "invalid", Some(s)).await;
    }
    let bad_readings = [
        json!([1, 2]),
        json!("temp"),
        json!({"ts": 1, "value": 1}),
        json!({"sensor": 5, "ts": 1, "value": 1}),
        json!({"sensor": "a", "value": 1}),
        json!({"sensor": "a", "ts": "1", "value": 1}),
        json!({"sensor": "a", "ts": 1.5, "value": 1}),
        json!({"sensor": "a", "ts": 1}),
        json!({"sensor": "a", "ts": 1, "value": null}),
        json!({"sensor": "a", "ts": 1, "value": [1]}),
        json!({"sensor": "a", "ts": 1, "value": {"x": 1}}),
        json!({"sensor": "a", "ts": 1, "value": 1, "unit": 7}),
    ];
    for bad in bad_readings {
        let s = p.next_seq;
        let e = p
            .rejects(p.with_bad_reading(bad.clone()), "invalid", Some(s))
            .await;
        assert!(
            e["detail"].as_str().unwrap().starts_with("readings[1]"),
            "{bad} -> {e}"
        );
    }
    let frame = p.with_value(|b| rmp::encode::write_bin(b, &[1, 2, 3]).unwrap());
    let s = p.next_seq;
    p.rejects(frame, "invalid", Some(s)).await;
    // A seq that cannot be read is not echoed.
    for seq in [json!("7"), json!(-1), json!(1.5)] {
        let frame = mp(&json!({"seq": seq, "readings": [{"sensor": "a", "ts": 1, "value": 1}]}));
        p.rejects(frame, "invalid", None).await;
    }
}

#[tokio::test]
async fn invalid_bad_sensor_names() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    let too_long = "x".repeat(65);
    for name in ["a/b", "a+b", "a#", "#", "+", "", "a b", too_long.as_str()] {
        let s = p.next_seq;
        let frame = p.with_bad_reading(json!({"sensor": name, "ts": 1, "value": 1}));
        let e = p.rejects(frame, "invalid", Some(s)).await;
        assert!(
            e["detail"].as_str().unwrap().contains("sensor"),
            "{name} -> {e}"
        );
    }
    // The boundary: 64 characters of the allowed set is fine.
    let longest = format!("{}.:-_9", "x".repeat(59));
    let s = p.next_seq;
    send(
        &mut p.ws,
        &json!({"seq": s, "readings": [{"sensor": longest, "ts": 1, "value": 1}]}),
    )
    .await;
    assert_eq!(
        recv_frame(&mut p.ws).await,
        json!({"type": "ack", "seq": s})
    );
    assert_eq!(d.stored(&format!("d1/{longest}")).await.len(), 1);
}

#[tokio::test]
async fn invalid_non_finite_floats() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let s = p.next_seq;
        let frame = p.with_value(|b| rmp::encode::write_f64(b, f).unwrap());
        let e = p.rejects(frame, "invalid", Some(s)).await;
        assert!(e["detail"].as_str().unwrap().contains("finite"), "{e}");
        let s = p.next_seq;
        let frame = p.with_value(|b| rmp::encode::write_f32(b, f as f32).unwrap());
        p.rejects(frame, "invalid", Some(s)).await;
    }
}

#[tokio::test]
async fn invalid_string_value_over_256_bytes() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    // Bytes, not characters: 129 two-byte characters are 258 bytes.
    for long in ["x".repeat(257), "é".repeat(129)] {
        let s = p.next_seq;
        let frame = p.with_bad_reading(json!({"sensor": "a", "ts": 1, "value": long}));
        p.rejects(frame, "invalid", Some(s)).await;
    }
    let s = p.next_seq;
    let ok = "y".repeat(256);
    send(
        &mut p.ws,
        &json!({"seq": s, "readings": [{"sensor": "s", "ts": 1, "value": ok}]}),
    )
    .await;
    assert_eq!(
        recv_frame(&mut p.ws).await,
        json!({"type": "ack", "seq": s})
    );
    assert_eq!(d.stored("d1/s").await[0]["value"], json!(ok));
}

#[tokio::test]
async fn invalid_unit_over_16_bytes() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    for unit in ["u".repeat(17), "°".repeat(9)] {
        let s = p.next_seq;
        let frame = p.with_bad_reading(json!({"sensor": "a", "ts": 1, "value": 1, "unit": unit}));
        let e = p.rejects(frame, "invalid", Some(s)).await;
        assert!(e["detail"].as_str().unwrap().contains("unit"), "{e}");
    }
    let s = p.next_seq;
    let ok = "u".repeat(16);
    send(
        &mut p.ws,
        &json!({"seq": s, "readings": [{"sensor": "s", "ts": 1, "value": 1, "unit": ok}]}),
    )
    .await;
    assert_eq!(
        recv_frame(&mut p.ws).await,
        json!({"type": "ack", "seq": s})
    );
}

#[tokio::test]
async fn invalid_more_than_max_readings_per_frame() {
    let d = TestDaemon::start_with(|c| c.limits.max_readings_per_frame = 20).await;
    let mut p = Probe::new(&d).await;
    let s = p.next_seq;
    let e = p
        .rejects(mp(&batch(Some(s), "many", 21)), "invalid", Some(s))
        .await;
    assert!(e["detail"].as_str().unwrap().contains("20"), "{e}");
    let s = p.next_seq;
    send(&mut p.ws, &batch(Some(s), "many", 20)).await;
    assert_eq!(
        recv_frame(&mut p.ws).await,
        json!({"type": "ack", "seq": s})
    );
    assert_eq!(d.stored("d1/many").await.len(), 20);
}

#[tokio::test]
async fn invalid_empty_readings_array() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    let s = p.next_seq;
    let e = p
        .rejects(mp(&json!({"seq": s, "readings": []})), "invalid", Some(s))
        .await;
    assert!(e["detail"].as_str().unwrap().contains("empty"), "{e}");
    p.rejects(mp(&json!({"readings": []})), "invalid", None)
        .await;
}

#[tokio::test]
async fn invalid_garbage_bytes() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    let mut two_maps = mp(&batch(None, "twice", 1));
    two_maps.extend(mp(&batch(None, "twice", 1)));
    let frames: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xc1],
        vec![0x81],
        vec![0xde, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0x7f, 0xff, 0xff, 0xff],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (0..=255u8).rev().collect(),
        two_maps,
    ];
    for f in frames {
        p.rejects(f, "invalid", None).await;
    }
    assert!(d.stored("d1/twice").await.is_empty());
}

#[tokio::test]
async fn invalid_deeply_nested_values() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    let s = p.next_seq;
    let frame = p.with_value(|b| nested_arrays(b, 2));
    p.rejects(frame, "invalid", Some(s)).await;
    // Past the decoder's depth limit the frame is refused as a whole; the
    // seq before the bad value is still read and named (SPEC §3).
    for depth in [100, 50_000] {
        let s = p.next_seq;
        let frame = p.with_value(|b| nested_arrays(b, depth));
        let e = p.rejects(frame, "invalid", Some(s)).await;
        assert!(e["detail"].as_str().unwrap().contains("depth"), "{e}");
    }
    // Deep junk under an unknown key cannot be ignored into a deep recursion.
    let mut frame = Vec::new();
    rmp::encode::write_map_len(&mut frame, 2).unwrap();
    rmp::encode::write_str(&mut frame, "junk").unwrap();
    nested_arrays(&mut frame, 50_000);
    rmp::encode::write_str(&mut frame, "readings").unwrap();
    frame.extend(mp(&json!([{"sensor": "a", "ts": 1, "value": 1}])));
    p.rejects(frame, "invalid", None).await;
}

#[tokio::test]
async fn invalid_huge_sensor_name_inside_a_frame_under_max_frame_bytes() {
    let d = TestDaemon::start_with(|c| c.limits.max_frame_bytes = 256 * 1024).await;
    let mut p = Probe::new(&d).await;
    let s = p.next_seq;
    let name = "x".repeat(100 * 1024);
    let frame = p.with_bad_reading(json!({"sensor": name, "ts": 1, "value": 1}));
    let e = p.rejects(frame, "invalid", Some(s)).await;
    // The reply names the problem without echoing 100 KB back.
    assert!(e["detail"].as_str().unwrap().len() < 1024, "{e}");
}

#[tokio::test]
async fn unknown_keys_are_ignored() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    let frame = json!({"seq": 1, "extra": {"a": [1, 2]}, "readings": [
        {"sensor": "t", "ts": 1, "value": 2, "colour": "red"}
    ]});
    send(&mut ws, &frame).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    assert_eq!(d.stored("d1/t").await.len(), 1);
}

#[tokio::test]
async fn unsupported_frame_for_text() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    // Even a text frame holding a valid-looking batch is refused.
    let text = json!({"seq": p.next_seq, "readings": [{"sensor": "a", "ts": 1, "value": 1}]});
    p.ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
    p.after_rejection("unsupported_frame", None).await;
}

#[tokio::test]
async fn out_of_order_reports_expected_and_stores_nothing() {
    let d = TestDaemon::start().await;
    let mut p = Probe::new(&d).await;
    let s = p.next_seq;
    let e = p
        .rejects(
            mp(&batch(Some(s + 5), "ooo", 3)),
            "out_of_order",
            Some(s + 5),
        )
        .await;
    assert_eq!(e["expected"], s);
    assert!(d.stored("d1/ooo").await.is_empty());
}

fn rate_limited_config(c: &mut sensorgate::config::Config) {
    c.limits.readings_per_sec = 10;
    c.limits.burst = 20;
    c.limits.max_readings_per_frame = 20;
}

#[tokio::test]
async fn rate_limited_past_the_burst_with_retry_after() {
    let d = TestDaemon::start_with(|c| {
        rate_limited_config(c);
        c.limits.max_consecutive_errors = 2;
    })
    .await;
    let (mut ws, welcome) = d.device("d1").await;
    assert_eq!(welcome["readings_per_sec"], 10);
    send(&mut ws, &batch(Some(1), "t", 20)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    // The bucket is empty; being throttled five times in a row is not
    // misbehaviour, so the connection survives max_consecutive_errors = 2.
    for _ in 0..5 {
        send(&mut ws, &batch(Some(2), "t2", 5)).await;
        let e = recv_error(&mut ws, "rate_limited").await;
        assert_eq!(e["seq"], 2);
        let retry = e["retry_after_ms"].as_u64().expect("retry_after_ms");
        assert!(retry > 0 && retry <= 2000, "{e}");
    }
    assert!(d.stored("d1/t2").await.is_empty());
    // Waiting as told makes room for the batch.
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(&mut ws, &batch(Some(2), "t2", 5)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 2}));
    assert_eq!(d.stored("d1/t2").await.len(), 5);
}

#[tokio::test]
async fn rate_limit_is_per_device_and_survives_reconnect() {
    let d = TestDaemon::start_with(rate_limited_config).await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "t", 20)).await;
    assert_eq!(recv_frame(&mut ws).await["type"], "ack");
    drop(ws);
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(2), "t", 10)).await;
    recv_error(&mut ws, "rate_limited").await;
    // Another device has its own bucket.
    let (mut other, _) = d.device("d2").await;
    send(&mut other, &batch(Some(1), "t", 20)).await;
    assert_eq!(recv_frame(&mut other).await["type"], "ack");
}

#[tokio::test]
async fn duplicate_and_out_of_order_use_no_rate_tokens() {
    let d = TestDaemon::start_with(rate_limited_config).await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "t", 20)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    // With the bucket empty, both are still answered for what they are.
    send(&mut ws, &batch(Some(1), "t", 20)).await;
    assert_eq!(
        recv_frame(&mut ws).await,
        json!({"type": "ack", "seq": 1, "duplicate": true})
    );
    send(&mut ws, &batch(Some(9), "t", 20)).await;
    let e = recv_error(&mut ws, "out_of_order").await;
    assert!(e.get("retry_after_ms").is_none(), "{e}");
    // About 10 tokens refill in a second. Duplicates and out_of_order
    // batches of one reading each would eat them if they cost tokens.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..8 {
        send(&mut ws, &batch(Some(1), "t", 1)).await;
        assert_eq!(recv_frame(&mut ws).await["duplicate"], true);
        send(&mut ws, &batch(Some(7), "t", 1)).await;
        recv_error(&mut ws, "out_of_order").await;
    }
    send(&mut ws, &batch(Some(2), "t2", 10)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 2}));
    assert_eq!(d.stored("d1/#").await.len(), 30);
}

/// What one device of the overload test saw: sensors (one per attempt)
/// that were acked and that were refused.
#[derive(Default)]
struct Outcomes {
    acked: Vec<String>,
    refused: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_when_the_queue_stays_full_and_nothing_refused_is_stored() {
    const DEVICES: usize = 8;
    const WINDOW: u64 = 4;
    const READINGS: usize = 100;
    const MAX_WINDOWS: usize = 25;
    let d = Arc::new(
        TestDaemon::start_with(|c| {
            c.ingest.queue_capacity = 1;
            c.ingest.enqueue_timeout = Duration::ZERO;
        })
        .await,
    );
    let overloads = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for n in 0..DEVICES {
        let (d, overloads) = (d.clone(), overloads.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = d.device(&format!("dev{n}")).await;
            let mut out = Outcomes::default();
            let mut attempt = 0;
            let mut next = 1u64;
            for window in 0..MAX_WINDOWS {
                // Stop once someone was overloaded and everyone moved on.
                if (overloads.load(Ordering::SeqCst) > 0 && window >= 2)
                    || Instant::now() > deadline
                {
                    break;
                }
                // The first batch goes alone: a device with no seq record
                // would accept any seq after a refused first one.
                let size = if next == 1 { 1 } else { WINDOW };
                let mut sent = HashMap::new();
                for seq in next..next + size {
                    attempt += 1;
                    let sensor = format!("a{attempt}");
                    send(&mut ws, &batch(Some(seq), &sensor, READINGS)).await;
                    sent.insert(seq, sensor);
                }
                for _ in 0..size {
                    let r = recv_frame(&mut ws).await;
                    let seq = r["seq"].as_u64().expect("replies carry seq");
                    let sensor = sent.remove(&seq).expect("one reply per batch");
                    match (r["type"].as_str(), r["code"].as_str()) {
                        (Some("ack"), _) => {
                            assert!(r.get("duplicate").is_none(), "{r}");
                            assert_eq!(seq, next, "acks in seq order, no gaps");
                            next += 1;
                            out.acked.push(sensor);
                        }
                        (Some("error"), Some("overloaded")) => {
                            let retry = r["retry_after_ms"].as_u64().expect("retry_after_ms");
                            assert!(retry > 0, "{r}");
                            overloads.fetch_add(1, Ordering::SeqCst);
                            out.refused.push(sensor);
                        }
                        (Some("error"), Some("out_of_order")) => out.refused.push(sensor),
                        _ => panic!("unexpected reply {r}"),
                    }
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    assert!(
        overloads.load(Ordering::SeqCst) > 0,
        "no batch was refused with overloaded"
    );
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in d.stored("#").await {
        let key = (
            r["device"].as_str().unwrap().to_string(),
            r["sensor"].as_str().unwrap().to_string(),
        );
        *counts.entry(key).or_default() += 1;
    }
    let mut acked_total = 0;
    for (n, out) in all.iter().enumerate() {
        let dev = format!("dev{n}");
        for s in &out.acked {
            assert_eq!(counts.get(&(dev.clone(), s.clone())), Some(&READINGS));
            acked_total += 1;
        }
        for s in &out.refused {
            assert_eq!(counts.get(&(dev.clone(), s.clone())), None, "{dev}/{s}");
        }
    }
    assert_eq!(counts.len(), acked_total, "only acked batches are stored");
}

#[tokio::test]
async fn close_1008_after_max_consecutive_errors() {
    let d = TestDaemon::start_with(|c| c.limits.max_consecutive_errors = 3).await;
    let (mut ws, _) = d.device("d1").await;
    send_bytes(&mut ws, vec![0xc1]).await;
    recv_error(&mut ws, "invalid").await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    recv_error(&mut ws, "unsupported_frame").await;
    send(&mut ws, &json!({"readings": []})).await;
    recv_error(&mut ws, "invalid").await;
    assert_eq!(recv_close(&mut ws).await, Some(1008.into()));
}

#[tokio::test]
async fn a_good_frame_resets_the_consecutive_error_count() {
    let d = TestDaemon::start_with(|c| c.limits.max_consecutive_errors = 3).await;
    let (mut ws, _) = d.device("d1").await;
    for seq in 1..=4 {
        for _ in 0..2 {
            send_bytes(&mut ws, vec![0xc1]).await;
            recv_error(&mut ws, "invalid").await;
        }
        send(&mut ws, &batch(Some(seq), "t", 1)).await;
        assert_eq!(
            recv_frame(&mut ws).await,
            json!({"type": "ack", "seq": seq})
        );
    }
    // Fire-and-forget batches are good frames too.
    for _ in 0..2 {
        send_bytes(&mut ws, vec![0xc1]).await;
        recv_error(&mut ws, "invalid").await;
        send(&mut ws, &batch(None, "f", 1)).await;
    }
    send(&mut ws, &batch(Some(5), "t", 1)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 5}));
    assert_eq!(d.stored("d1/#").await.len(), 7);
}

#[tokio::test]
async fn out_of_order_does_not_count_as_consecutive_error() {
    let d = TestDaemon::start_with(|c| c.limits.max_consecutive_errors = 2).await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "t", 1)).await;
    recv_frame(&mut ws).await;
    for _ in 0..5 {
        send(&mut ws, &batch(Some(10), "t", 1)).await;
        recv_error(&mut ws, "out_of_order").await;
    }
    send(&mut ws, &batch(Some(2), "t", 1)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 2}));
}

#[tokio::test]
async fn close_1009_for_a_frame_over_max_frame_bytes() {
    let d = TestDaemon::start_with(|c| c.limits.max_frame_bytes = 1024).await;
    let (mut ws, welcome) = d.device("d1").await;
    assert_eq!(welcome["max_frame_bytes"], 1024);
    // Just under the limit is fine.
    let mut small = batch(Some(1), "t", 1);
    let fill = 1024 - mp(&small).len() - 10;
    small["pad"] = json!("p".repeat(fill));
    assert!(mp(&small).len() <= 1024);
    send(&mut ws, &small).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    send(&mut ws, &batch(Some(2), "big", 40)).await;
    assert!(mp(&batch(Some(2), "big", 40)).len() > 1024);
    assert_eq!(recv_close(&mut ws).await, Some(1009.into()));
    assert!(d.stored("d1/big").await.is_empty());
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout() {
    let d = TestDaemon::start_with(|c| {
        c.server.idle_timeout = Duration::from_secs(1);
        c.server.ping_interval = Duration::from_millis(300);
    })
    .await;
    let (mut ws, _) = d.device("d1").await;
    // Not polling the socket means the server's pings go unanswered.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut closed = false;
    let end = Instant::now() + Duration::from_secs(5);
    while let Ok(msg) = tokio::time::timeout_at(end, ws.next()).await {
        match msg {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                closed = true;
                break;
            }
            Some(Ok(_)) => continue,
        }
    }
    assert!(closed, "a silent device is disconnected");
    // The registry forgets it: the device can come back.
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "t", 1)).await;
    assert_eq!(recv_frame(&mut ws).await["type"], "ack");
}

#[tokio::test]
async fn pongs_count_as_activity_past_idle_timeout() {
    let d = TestDaemon::start_with(|c| {
        c.server.idle_timeout = Duration::from_secs(1);
        c.server.ping_interval = Duration::from_millis(300);
    })
    .await;
    let (mut ws, _) = d.device("d1").await;
    // Polling answers the server's pings; nothing else is sent for 2.5s.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut pings = 0;
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("connection should stay open, got {other:?}"),
        }
    }
    assert!(pings >= 3, "server pings every ping_interval ({pings})");
    send(&mut ws, &batch(Some(1), "t", 1)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
}

#[tokio::test]
async fn close_1009_for_a_fragmented_message_over_max_frame_bytes() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let d = TestDaemon::start_with(|c| c.limits.max_frame_bytes = 1024).await;
    let (mut ws, _) = d.device("d1").await;
    // A fragmented good batch within the limit is reassembled and stored.
    let small = mp(&batch(Some(1), "t", 2));
    let (a, b) = small.split_at(small.len() / 2);
    let first = Frame::message(a.to_vec(), OpCode::Data(Data::Binary), false);
    let last = Frame::message(b.to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.unwrap();
    ws.send(Message::Frame(last)).await.unwrap();
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    // Fragments of 600 bytes each, 1200 in all: over the limit as a message.
    let big = mp(&batch(Some(2), "big", 40));
    let first = Frame::message(big[..600].to_vec(), OpCode::Data(Data::Binary), false);
    let last = Frame::message(big[600..1200].to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.unwrap();
    let _ = ws.send(Message::Frame(last)).await;
    assert_eq!(recv_close(&mut ws).await, Some(1009.into()));
    assert!(d.stored("d1/big").await.is_empty());
}

/// A device with no seq record whose first batch is refused must not get a
/// later pipelined seq stored first: the refused seq would then be answered
/// "duplicate" without ever having been stored.
#[tokio::test]
async fn a_refused_first_batch_pins_the_expected_seq() {
    let d = TestDaemon::start_with(|c| {
        c.limits.readings_per_sec = 1;
        c.limits.burst = 20;
        c.limits.max_readings_per_frame = 20;
    })
    .await;
    let (mut ws, welcome) = d.device("fresh").await;
    assert_eq!(welcome["last_seq"], 0);
    // Fire-and-forget readings empty the bucket but create no seq record.
    send(&mut ws, &batch(None, "temp", 20)).await;
    send(&mut ws, &batch(Some(1), "temp", 5)).await;
    let refused = recv_frame(&mut ws).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(refused["seq"], 1);
    // The pipelined seq 2 is out of order, expecting 1: it is not stored.
    send(&mut ws, &batch(Some(2), "temp", 1)).await;
    let e = recv_frame(&mut ws).await;
    assert_eq!(e["code"], "out_of_order", "{e}");
    assert_eq!(e["expected"], 1);
    assert_eq!(d.stored("fresh/#").await.len(), 20);
}
