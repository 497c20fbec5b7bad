//! Storage rules (SPEC §7): retention, id high-water mark, interval sync.

use std::sync::Arc;
use std::time::Duration;

use sensorgate::config::SyncMode;
use sensorgate::store::Store;
use sensorgate_test_kit::*;

/// Streams `batches` acked batches of `n` readings as device `dev`.
async fn publish(d: &TestDaemon, dev: &str, batches: u64, n: usize) {
    let (mut ws, welcome) = d.device(dev).await;
    let first = welcome["last_seq"].as_u64().unwrap() + 1;
    for seq in first..first + batches {
        send(&mut ws, &batch(Some(seq), "temp", n)).await;
        assert_eq!(recv_frame(&mut ws).await["type"], "ack");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_size_drops_oldest_and_ids_never_reuse() {
    let mut d = TestDaemon::start().await;
    publish(&d, "d1", 20, 50).await;
    let before = d.stored("#").await;
    let max_before = before.last().unwrap()["id"].as_u64().unwrap();
    d.stop().await;

    // Prune everything but the newest segment with a tiny size budget.
    let path = d.config.storage.path.clone();
    let store = Store::open(&path).unwrap();
    let pruned = store
        .prune(sensorgate::time::unix_ms(), Duration::from_secs(3600), 1)
        .unwrap();
    assert_eq!(pruned.segments, 19, "each acked batch was its own commit");
    let oldest = store.oldest_id().unwrap().unwrap();
    assert!(oldest > before[0]["id"].as_u64().unwrap());
    drop(store);

    let config = (*d.config).clone();
    let d2 = TestDaemon::start_in(d.into_dir(), config).await;
    let left = d2.stored("#").await;
    assert_eq!(left.len(), 50, "the newest segment is kept");
    publish(&d2, "d1", 1, 5).await;
    let after = d2.stored("#").await;
    let new_ids: Vec<u64> = after[50..]
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(
        new_ids.iter().all(|&id| id > max_before),
        "ids continue past {max_before}: {new_ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_age_prunes_expired_readings() {
    let mut d = TestDaemon::start().await;
    publish(&d, "d1", 3, 10).await;
    d.stop().await;
    let store = Store::open(&d.config.storage.path).unwrap();
    // Nothing is older than an hour yet...
    let none = store
        .prune(
            sensorgate::time::unix_ms(),
            Duration::from_secs(3600),
            u64::MAX,
        )
        .unwrap();
    assert_eq!(none.segments, 0);
    // ...but an hour from now, everything except the newest durable segment is.
    let later = sensorgate::time::unix_ms() + 3_600_001;
    let p = store
        .prune(later, Duration::from_secs(3600), u64::MAX)
        .unwrap();
    assert_eq!(p.segments, 3);
    assert_eq!(store.oldest_id().unwrap(), None);
    assert_eq!(store.retained_bytes(), 0);
    let reopened_last = store.last_id();
    drop(store);
    let store = Arc::new(Store::open(&d.config.storage.path).unwrap());
    assert_eq!(
        store.last_id(),
        reopened_last,
        "the id high-water mark survives an empty store"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn interval_sync_acks_after_the_periodic_flush() {
    let d = TestDaemon::start_with(|c| {
        c.storage.sync = SyncMode::Interval;
        c.storage.flush_interval = Duration::from_millis(300);
    })
    .await;
    let (mut ws, _) = d.device("d1").await;
    for seq in 1..=3 {
        send(&mut ws, &batch(Some(seq), "temp", 5)).await;
    }
    for seq in 1..=3 {
        assert_eq!(recv_frame(&mut ws).await["seq"], seq);
    }
    // Acked means flushed, and only flushed readings are visible.
    assert_eq!(d.stored("#").await.len(), 15);
}

#[test]
fn a_store_held_open_is_refused_and_a_dropped_one_reopens_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let held = Store::open(&path).unwrap();
    // Another holder of the lock: refused (after the bounded wait), with
    // sled's lock error rather than a hang.
    let refused = Store::open(&path).err().expect("the lock is held");
    assert!(refused.to_string().contains("lock"), "{refused}");
    // Dropped and reopened in the same process, repeatedly: sled releases
    // its lock a moment after the drop, and open waits for that.
    drop(held);
    for _ in 0..20 {
        let store = Store::open(&path).unwrap();
        drop(store);
    }
}
