//! The seam between sled and the tail: commits durable through the log but
//! not yet applied to sled are read like any other, and a restart finds
//! them in sled.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::writer::{self, CommitOutcome, IngestBatch, WriteRequest, APPLY_AT_READINGS};
use super::Store;
use crate::config::StorageConfig;
use crate::protocol::{ReadingIn, Value};

async fn store_batch(tx: &tokio::sync::mpsc::Sender<WriteRequest>, seq: u64, n: usize) {
    let (reply, outcome) = oneshot::channel();
    let readings = (0..n)
        .map(|i| ReadingIn {
            sensor: "temp".into(),
            ts: i as i64,
            value: Value::Int(i as i64),
            unit: None,
        })
        .collect();
    let batch = IngestBatch {
        device: Arc::from("d1"),
        seq: Some(seq),
        readings,
        received: 1,
        reply: Some(reply),
    };
    tx.send(WriteRequest::Batch(batch)).await.unwrap();
    assert!(matches!(
        outcome.await.unwrap(),
        CommitOutcome::Stored { .. }
    ));
}

fn ids(store: &Store, since: u64) -> Vec<u64> {
    let readings = store.read_since(since, usize::MAX, |_| true).unwrap();
    readings.iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_readings_not_yet_in_sled_are_read_from_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path).unwrap();
    let storage = StorageConfig {
        path: path.clone(),
        ..StorageConfig::default()
    };
    // No checkpoint unless asked: what sled holds is what the applies put there.
    let hour = std::time::Duration::from_secs(3600);
    let (handle, join) =
        writer::spawn_checkpointing_every(store.clone(), &storage, 64, Vec::new(), hour);
    let tx = handle.sender().clone();

    // Fewer readings than one apply: durable, and only in the tail.
    store_batch(&tx, 1, 10).await;
    store_batch(&tx, 2, 10).await;
    let view = store.view();
    assert_eq!((view.applied, view.upper), (0, 20), "nothing in sled yet");
    assert_eq!(
        store.oldest_id().unwrap(),
        Some(1),
        "sled is empty, the tail is not"
    );
    assert_eq!(ids(&store, 0), (1..=20).collect::<Vec<_>>());

    // Cross an apply: sled holds a prefix, the tail the rest.
    let per_batch = 100;
    let batches = (APPLY_AT_READINGS / per_batch + 2) as u64;
    for seq in 3..3 + batches {
        store_batch(&tx, seq, per_batch).await;
    }
    let view = store.view();
    let total = 20 + batches * per_batch as u64;
    assert!(
        view.applied > 20 && view.applied < total,
        "{}..{}",
        view.applied,
        total
    );
    assert_eq!(ids(&store, 0), (1..=total).collect::<Vec<_>>());
    // A read that starts inside the tail, and one at its edge.
    assert_eq!(
        ids(&store, view.applied + 5),
        (view.applied + 6..=total).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&store, view.applied),
        (view.applied + 1..=total).collect::<Vec<_>>()
    );

    // A clean stop applies the tail; a restart finds everything in sled.
    drop((handle, tx));
    tokio::task::spawn_blocking(move || join.join().unwrap())
        .await
        .unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    let view = store.view();
    assert_eq!((view.applied, view.upper), (total, total));
    assert!(view.commits.is_empty());
    assert_eq!(ids(&store, 0), (1..=total).collect::<Vec<_>>());
    assert_eq!(store.last_seq("d1").unwrap(), Some(2 + batches));
}

fn count_prefix(path: &std::path::Path, prefix: &[u8]) -> usize {
    let db = sled::open(path).unwrap();
    db.scan_prefix(prefix).count()
}

/// A group bigger than one segment is one index entry over consecutive
/// segments: read back whole, healthy by `check-store`, and retention
/// deletes all of its segments with it, and none of the next group's.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_of_many_segments_has_one_index_entry_and_is_pruned_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let storage = StorageConfig {
        path: path.clone(),
        ..StorageConfig::default()
    };
    let run = |store: Arc<Store>| {
        writer::spawn_checkpointing_every(
            store,
            &storage,
            64,
            Vec::new(),
            std::time::Duration::from_secs(3600),
        )
    };
    let stop = |handle: writer::WriterHandle, join: std::thread::JoinHandle<()>| async move {
        drop(handle);
        tokio::task::spawn_blocking(move || join.join().unwrap())
            .await
            .unwrap();
    };
    // Three groups of 1,000 readings (~30 KB each: several segments).
    let store = Store::open(&path).unwrap();
    let (handle, join) = run(store.clone());
    for seq in 1..=3 {
        store_batch(handle.sender(), seq, 1000).await;
    }
    stop(handle, join).await;
    drop(store);
    let segments = count_prefix(&path, super::SEGMENT_PREFIX);
    assert!(segments >= 9, "{segments} segments for 90 KB");
    assert_eq!(count_prefix(&path, super::INDEX_PREFIX), 3, "one per group");
    let report = super::check::check(&path).unwrap();
    assert!(report.healthy(), "{report}");
    assert_eq!((report.readings, report.segments), (3000, segments as u64));

    // The first entry damaged to claim ids of the next two groups: pruning
    // it still deletes only its own segments (it stops at the next entry).
    let total: u64 = {
        let db = sled::open(&path).unwrap();
        let first = db.scan_prefix(super::INDEX_PREFIX).next().unwrap().unwrap();
        let mut meta = super::SegmentMeta::decode(&first.0, &first.1).unwrap();
        meta.last_id = 2500;
        db.insert(&first.0, &meta.encode()[..]).unwrap();
        db.flush().unwrap();
        db.scan_prefix(super::INDEX_PREFIX)
            .map(|e| {
                let (k, v) = e.unwrap();
                super::SegmentMeta::decode(&k, &v).unwrap().bytes
            })
            .sum()
    };
    let store = Store::open(&path).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(store.prune(2, hour, total - 1).unwrap().groups, 1);
    assert_eq!(ids(&store, 0), (1001..=3000).collect::<Vec<_>>());

    // Over a one-byte size cap: the older of the two left goes too, whole.
    let pruned = store.prune(2, hour, 1).unwrap();
    assert_eq!(pruned.groups, 1);
    assert_eq!(ids(&store, 0), (2001..=3000).collect::<Vec<_>>());
    drop(store);
    let left = count_prefix(&path, super::SEGMENT_PREFIX);
    assert!(
        left > 0 && left <= segments / 3 + 1,
        "{left} of {segments} left"
    );
    let report = super::check::check(&path).unwrap();
    assert!(report.healthy(), "{report}");
    assert_eq!(report.readings, 1000);
}
