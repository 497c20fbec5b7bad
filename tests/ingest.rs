//! Device ingest over a real WebSocket (SPEC §3): the acknowledgement rules.

use sensorgate_test_kit::*;
use serde_json::json;

#[tokio::test]
async fn welcome_then_ack_after_storage() {
    let d = TestDaemon::start().await;
    let (mut ws, welcome) = d.device("d1").await;
    assert_eq!(welcome["device"], "d1");
    assert_eq!(welcome["last_seq"], 0);
    assert_eq!(welcome["max_readings_per_frame"], 500);
    send(&mut ws, &batch(Some(1), "temp", 3)).await;
    let ack = recv_frame(&mut ws).await;
    assert_eq!(ack, json!({"type": "ack", "seq": 1}));
    let stored = d.stored("d1/#").await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0]["device"], "d1");
    assert_eq!(stored[0]["sensor"], "temp");
    assert_eq!(stored[0]["value"], 0.5);
    assert_eq!(stored[0]["unit"], "C");
    assert!(stored[0]["id"].as_u64().unwrap() < stored[2]["id"].as_u64().unwrap());
}

#[tokio::test]
async fn duplicate_seq_is_acked_without_storing() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(5), "temp", 2)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 5}));
    send(&mut ws, &batch(Some(5), "temp", 2)).await;
    assert_eq!(
        recv_frame(&mut ws).await,
        json!({"type": "ack", "seq": 5, "duplicate": true})
    );
    assert_eq!(d.stored("#").await.len(), 2);
}

#[tokio::test]
async fn gap_in_seq_is_out_of_order_with_expected() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "temp", 1)).await;
    recv_frame(&mut ws).await;
    send(&mut ws, &batch(Some(3), "temp", 1)).await;
    let e = recv_frame(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "out_of_order");
    assert_eq!(e["expected"], 2);
    assert_eq!(e["seq"], 3);
    // go-back-N: resending from 2 works on the same connection.
    send(&mut ws, &batch(Some(2), "temp", 1)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 2}));
    assert_eq!(d.stored("#").await.len(), 2);
}

#[tokio::test]
async fn welcome_reports_last_seq_after_reconnect() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    for seq in 1..=4 {
        send(&mut ws, &batch(Some(seq), "temp", 1)).await;
    }
    for seq in 1..=4 {
        assert_eq!(recv_frame(&mut ws).await["seq"], seq);
    }
    drop(ws);
    let (_ws, welcome) = d.device("d1").await;
    assert_eq!(welcome["last_seq"], 4);
}

#[tokio::test]
async fn fire_and_forget_batches_are_stored_without_ack() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(None, "temp", 2)).await;
    send(&mut ws, &batch(None, "temp", 2)).await;
    // A seq'd batch after them: its ack proves the earlier ones were queued first.
    send(&mut ws, &batch(Some(1), "hum", 1)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));
    assert_eq!(d.stored("d1/temp").await.len(), 4);
}

#[tokio::test]
async fn new_connection_replaces_the_old_one_with_4001() {
    let d = TestDaemon::start().await;
    let (mut old, _) = d.device("d1").await;
    let (mut new, _) = d.device("d1").await;
    assert_eq!(recv_close(&mut old).await, Some(4001.into()));
    send(&mut new, &batch(Some(1), "temp", 1)).await;
    assert_eq!(recv_frame(&mut new).await["type"], "ack");
}

#[tokio::test]
async fn shutdown_closes_devices_with_1001_and_keeps_acked() {
    let mut d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    send(&mut ws, &batch(Some(1), "temp", 10)).await;
    assert_eq!(recv_frame(&mut ws).await["type"], "ack");
    let stop = tokio::spawn(async move {
        d.stop().await;
        d
    });
    assert_eq!(recv_close(&mut ws).await, Some(1001.into()));
    let d = stop.await.unwrap();
    // Reopen the same store: the acked batch is there.
    let config = (*d.config).clone();
    let d2 = TestDaemon::start_in(d.into_dir(), config).await;
    assert_eq!(d2.stored("#").await.len(), 10);
    let (_ws, welcome) = d2.device("d1").await;
    assert_eq!(welcome["last_seq"], 1);
}
