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
