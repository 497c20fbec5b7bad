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
        queued: std::time::Instant::now(),
        reply: Some(reply),
    };
    tx.send(WriteRequest::Batch(batch)).await.unwrap();
    assert!(matches!(
        outcome.await.unwrap(),
        CommitOutcome::Stored { .. }
    ));
}

/// A new store in a temp dir (kept while the `TempDir` lives), and the
/// storage config naming it.
fn new_store() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Arc<Store>,
    StorageConfig,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path).unwrap();
    let storage = StorageConfig {
        path: path.clone(),
        ..StorageConfig::default()
    };
    (dir, path, store, storage)
}

/// A new store holding three batches of an apply's worth of readings,
/// all in sled (the writer stopped cleanly), and its newest id.
async fn three_applies() -> (tempfile::TempDir, std::path::PathBuf, Arc<Store>, u64) {
    let (dir, path, store, storage) = new_store();
    let (handle, join) = writer::spawn(store.clone(), &storage, 64, Vec::new());
    let tx = handle.sender().clone();
    for seq in 1..=3 {
        store_batch(&tx, seq, APPLY_AT_READINGS).await;
    }
    drop((handle, tx));
    tokio::task::spawn_blocking(move || join.join().unwrap())
        .await
        .unwrap();
    (dir, path, store, 3 * APPLY_AT_READINGS as u64)
}

fn ids(store: &Store, since: u64) -> Vec<u64> {
    let readings = store.read_since(since, usize::MAX, |_| true).unwrap();
    readings.iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_readings_not_yet_in_sled_are_read_from_the_tail() {
    let (_dir, path, store, storage) = new_store();
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

    // Cross an apply: sled holds a prefix, the tail the rest. (This is the
    // writer's first apply, so the spacing between applies does not hold
    // it back: `APPLY_SPACING`.)
    let per_batch = 100;
    let batches = (APPLY_AT_READINGS / per_batch + 2) as u64;
    for seq in 3..3 + batches {
        store_batch(&tx, seq, per_batch).await;
    }
    let total = 20 + batches * per_batch as u64;
    // The apply runs on the applier's thread: wait (bounded) until it is in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.view().applied <= 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let view = store.view();
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

/// What sled has been seen to do to a damaged store: lose a page's keys
/// silently while the index still lists them. The read that reaches such a
/// segment fails as damage rather than answering short, and a start with it
/// among the newest readings refuses the store. Ids nothing indexes (those
/// `--accept-data-loss` skips over) are an ordinary gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_segment_lost_from_under_the_index_fails_the_read_and_the_start() {
    let (_dir, path, store, total) = three_applies().await;
    assert_eq!(ids(&store, 0), (1..=total).collect::<Vec<_>>());

    let db = store.db().unwrap();
    let keys: Vec<sled::IVec> = db
        .scan_prefix(super::SEGMENT_PREFIX)
        .keys()
        .map(Result::unwrap)
        .collect();
    assert!(keys.len() >= 3, "{} segments", keys.len());
    let lost = super::codec::id_from_key(&keys[1]).unwrap();
    let after = super::codec::id_from_key(&keys[2]).unwrap();
    db.remove(&keys[1]).unwrap();
    let Err(short) = store.read_since(0, usize::MAX, |_| true) else {
        panic!("a read across a lost segment answered short");
    };
    assert!(short.is_damage(), "{short}");
    assert!(
        short.to_string().contains(&format!("segment {lost}")),
        "{short}"
    );
    // A read that starts inside it fails too (the scan starts at the
    // segment below, which sled still holds); one that starts past it is
    // whole.
    assert!(store.read_since(lost, usize::MAX, |_| true).is_err());
    assert!(store.read_since(after - 2, usize::MAX, |_| true).is_err());
    assert_eq!(ids(&store, after - 1), (after..=total).collect::<Vec<_>>());
    // The last segment lost: the scan ends early, and says so.
    let last = keys.last().unwrap();
    let value = db.get(last).unwrap().unwrap();
    db.remove(last).unwrap();
    let Err(tail) = store.read_since(after - 1, usize::MAX, |_| true) else {
        panic!("a read ending in a lost segment answered short");
    };
    assert!(tail.is_damage(), "{tail}");
    db.insert(last, value).unwrap();

    // A restart refuses the store, naming the segment.
    db.flush().unwrap();
    drop((db, store));
    let refused = Store::open(&path)
        .err()
        .expect("a start with a segment lost");
    assert!(refused.needs_operator(), "{refused}");
    assert!(
        refused.to_string().contains(&format!("segment {lost}")),
        "{refused}"
    );

    // With --accept-data-loss the lost segment's index entry is dropped:
    // its ids read as a gap, like ids skipped over the mark, and the rest
    // is served; the next start finds nothing amiss.
    let accept = super::OpenOptions {
        accept_data_loss: true,
        ..Default::default()
    };
    let store = Store::open_with(&path, accept).unwrap();
    let expected: Vec<u64> = (1..lost).chain(after..=total).collect();
    assert_eq!(ids(&store, 0), expected);
    assert_eq!(ids(&store, lost), (after..=total).collect::<Vec<_>>());
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(ids(&store, 0), expected);
}

/// The first id of every indexed segment, oldest first.
fn indexed_firsts(db: &sled::Db) -> Vec<u64> {
    db.scan_prefix(super::INDEX_PREFIX)
        .keys()
        .map(|k| super::codec::id_from_key(&k.unwrap()).unwrap())
        .collect()
}

/// sled was also seen to lose a batch's segment and its index entry
/// together: those ids are then in no segment although higher ones were
/// handed out, and nothing else would notice. The start refuses that,
/// naming the ids; `--accept-data-loss` records them as skipped, later
/// starts accept them, and `check-store` lists them as skipped.
#[tokio::test(flavor = "multi_thread")]
async fn ids_lost_with_their_index_entry_refuse_the_start_until_accepted() {
    let (_dir, path, store, total) = three_applies().await;
    let db = store.db().unwrap();
    let firsts = indexed_firsts(&db);
    let (lost, after) = (firsts[1], firsts[2]);
    db.remove(super::segment_key(lost)).unwrap();
    db.remove(super::index_key(lost)).unwrap();
    db.flush().unwrap();
    drop((db, store));

    let report = super::check::check(&path).unwrap();
    assert_eq!(report.gaps, vec![(lost - 1, after)], "{report}");
    assert!(report.skipped.is_empty() && !report.healthy(), "{report}");
    let refused = Store::open(&path).err().expect("a start with ids lost");
    assert!(refused.needs_operator(), "{refused}");
    let missing = format!("ids {lost}..={}", after - 1);
    assert!(refused.to_string().contains(&missing), "{refused}");

    let accept = super::OpenOptions {
        accept_data_loss: true,
        ..Default::default()
    };
    let expected: Vec<u64> = (1..lost).chain(after..=total).collect();
    let store = Store::open_with(&path, accept).unwrap();
    assert_eq!(ids(&store, 0), expected);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(ids(&store, 0), expected);
    drop(store);
    let report = super::check::check(&path).unwrap();
    assert_eq!(report.skipped, vec![(lost - 1, after)]);
    assert!(report.gaps.is_empty() && report.healthy(), "{report}");
}

/// sled can come back from a damaged page without keys of commits the
/// write-ahead log still holds: the next start's replay writes them again.
/// `check-store` judges the store as that start will find it (it used to
/// call such a store damaged, while the daemon served every reading).
#[tokio::test(flavor = "multi_thread")]
async fn check_store_counts_what_the_log_will_write_back() {
    let (_dir, path, store, total) = three_applies().await;
    let db = store.db().unwrap();
    // The last commit, as its log record held it: its segments, their
    // index entries and the next id.
    let from = 2 * APPLY_AT_READINGS as u64 + 1;
    let firsts: Vec<u64> = indexed_firsts(&db)
        .into_iter()
        .filter(|&f| f >= from)
        .collect();
    assert!(firsts.len() >= 2 && firsts[0] == from, "{firsts:?}");
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for &first in &firsts {
        for key in [super::segment_key(first), super::index_key(first)] {
            entries.push((key.to_vec(), db.get(key).unwrap().unwrap().to_vec()));
        }
    }
    entries.push((
        super::NEXT_ID_KEY.to_vec(),
        (total + 1).to_be_bytes().to_vec(),
    ));
    // sled lost one of its segments and the newest next id; the log has it.
    let lost = firsts[1];
    db.remove(super::segment_key(lost)).unwrap();
    db.insert(super::NEXT_ID_KEY, &from.to_be_bytes()[..])
        .unwrap();
    db.flush().unwrap();
    drop((db, store));
    let (mut log, _) = super::wal::Wal::open(&path).unwrap();
    log.reset().unwrap();
    assert!(log.append(from, total + 1, &entries).unwrap());
    log.sync().unwrap();
    drop(log);

    let report = super::check::check(&path).unwrap();
    assert!(report.healthy(), "{report}");
    assert_eq!(report.log_commits, 1, "{report}");
    assert_eq!(report.readings, total, "{report}");
    let store = Store::open(&path).unwrap();
    assert_eq!(ids(&store, 0), (1..=total).collect::<Vec<_>>());
    drop(store);

    // Without the log's record, the same sled is damaged: the lost segment
    // is reported, so the report above did look at it.
    let report = super::check::check(&path).unwrap();
    assert!(report.healthy() && report.log_commits == 0, "{report}");
    // (Waiting for the lock the check's sled lets go of a moment later.)
    let db = super::recovery::open_sled(&path).unwrap();
    db.remove(super::segment_key(lost)).unwrap();
    db.flush().unwrap();
    drop(db);
    let report = super::check::check(&path).unwrap();
    let missing = format!("segment {lost} is indexed but missing");
    assert!(
        report.damaged.iter().any(|d| d.contains(&missing)),
        "{report}"
    );
}

/// An index entry whose segment starts inside an earlier one holds ids
/// twice: `check-store` calls it damage (it used to list it as a gap whose
/// first id came after its last).
#[tokio::test(flavor = "multi_thread")]
async fn check_store_calls_overlapping_segments_damage() {
    let (_dir, path, store, _total) = three_applies().await;
    let db = store.db().unwrap();
    let (k, v) = db.scan_prefix(super::INDEX_PREFIX).nth(1).unwrap().unwrap();
    let meta = super::SegmentMeta::decode(&k, &v).unwrap();
    assert!(
        meta.last_id > meta.first_id + 2,
        "a segment of several readings"
    );
    // Two one-id segments inside it, each a well-formed segment of the
    // reading it names: the second starts after the first ends, but still
    // inside the big one.
    let seg = db.get(super::segment_key(meta.first_id)).unwrap().unwrap();
    let readings = super::codec::decode_segment(&super::segment_key(meta.first_id), &seg).unwrap();
    let twins = [meta.first_id + 1, meta.first_id + 2];
    for twin in twins {
        let inner = super::SegmentMeta {
            first_id: twin,
            last_id: twin,
            ..meta
        };
        let at = (twin - meta.first_id) as usize;
        let one = super::codec::encode_segments(&readings[at..=at]).remove(0);
        db.insert(super::segment_key(twin), one.bytes).unwrap();
        db.insert(super::index_key(twin), inner.encode().to_vec())
            .unwrap();
    }
    db.flush().unwrap();
    drop((db, store));

    let report = super::check::check(&path).unwrap();
    for twin in twins {
        let overlap = format!("segment {twin} overlaps an earlier segment");
        assert!(
            report.damaged.iter().any(|d| d.contains(&overlap)),
            "{report}"
        );
    }
    // The overlaps are all it finds: the twins themselves decode.
    assert_eq!(report.damaged.len(), twins.len(), "{report}");
    assert!(report.gaps.is_empty() && !report.healthy(), "{report}");
}

/// Records what a start shows it ([`super::SeenAtStart`]).
#[derive(Default)]
struct Shown {
    segments: std::sync::Mutex<Vec<(u64, usize)>>,
    set_aside: std::sync::atomic::AtomicBool,
    panic_on_first: bool,
}

impl super::SeenAtStart for Shown {
    fn segment(&self, readings: &[crate::protocol::Reading]) {
        let mut segments = self.segments.lock().unwrap();
        segments.push((readings[0].id, readings.len()));
        if self.panic_on_first && segments.len() == 1 {
            drop(segments);
            panic!("deliberate observer panic");
        }
    }

    fn set_aside(&self) {
        self.segments.lock().unwrap().clear();
        self.set_aside
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The start shows what it verifies, newest segment first; an observer's
/// panic is its own and does not refuse a healthy store.
#[tokio::test(flavor = "multi_thread")]
async fn the_start_shows_what_it_verifies_and_survives_its_observer() {
    let (_dir, path, store, total) = three_applies().await;
    drop(store);
    let shown = Shown::default();
    drop(Store::open_seeing(&path, super::OpenOptions::default(), &shown).unwrap());
    let segments = shown.segments.lock().unwrap().clone();
    let firsts: Vec<u64> = segments.iter().map(|s| s.0).collect();
    assert!(
        firsts.windows(2).all(|w| w[0] > w[1]),
        "newest first: {firsts:?}"
    );
    let count: usize = segments.iter().map(|s| s.1).sum();
    assert_eq!(count as u64, total, "every reading of a small store");

    let panicky = Shown {
        panic_on_first: true,
        ..Default::default()
    };
    let store = Store::open_seeing(&path, super::OpenOptions::default(), &panicky)
        .expect("a healthy store opens whatever its observer does");
    assert_eq!(
        panicky.segments.lock().unwrap().len(),
        1,
        "shown nothing more"
    );
    assert_eq!(store.last_id(), total);
}

/// A store whose newest readings cannot be read back is set aside under
/// `--accept-data-loss`: what the start showed of it is taken back.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_set_aside_takes_back_what_it_showed() {
    let (_dir, path, store, _total) = three_applies().await;
    let db = store.db().unwrap();
    let firsts = indexed_firsts(&db);
    // The second-newest segment does not decode: the newest is shown first.
    let spoilt = firsts[firsts.len() - 2];
    db.insert(super::segment_key(spoilt), &b"not a segment"[..])
        .unwrap();
    db.flush().unwrap();
    drop((db, store));

    let shown = Shown::default();
    let accept = super::OpenOptions {
        accept_data_loss: true,
        ..Default::default()
    };
    drop(Store::open_seeing(&path, accept, &shown).unwrap());
    assert!(shown.set_aside.load(std::sync::atomic::Ordering::Relaxed));
    assert!(shown.segments.lock().unwrap().is_empty());
}

#[test]
fn a_handle_on_sled_counts_as_waiting_for_the_applier() {
    // An apply holds sled's global lock; whoever holds a handle may wait
    // for it, so the applier must not sit in the idle class meanwhile.
    let (_dir, _path, store, _storage) = new_store();
    let priority = store.applier_priority();
    assert_eq!(priority.waiting_now(), 0);
    let first = store.db().unwrap();
    let second = store.db().unwrap();
    assert_eq!(priority.waiting_now(), 2);
    drop(first);
    assert_eq!(priority.waiting_now(), 1);
    drop(second);
    assert_eq!(priority.waiting_now(), 0);
    // Handles given away to be kept (the applier's jobs) do not count.
    let bare = store.sled().unwrap();
    assert_eq!(priority.waiting_now(), 0);
    drop(bare);
    // Reads through the store's own calls count only while they run.
    store.last_seq("sim-1").unwrap();
    store.read_since(0, 10, |_| true).unwrap();
    assert_eq!(priority.waiting_now(), 0);
}

/// A store says which format it is in. One from before the marker (no
/// key) is of this build's format and gets the key at its next start; one
/// of a newer format is refused by name, even with `--accept-data-loss`,
/// and left as it was: nothing set aside, nothing replayed or rewritten.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_of_a_newer_format_is_refused_and_left_as_it_was() {
    use super::{FORMAT, FORMAT_KEY};
    let (_dir, path, store, last) = three_applies().await;
    let format = |store: &Store| store.db().unwrap().get(FORMAT_KEY).unwrap();
    assert_eq!(format(&store).as_deref(), Some(&FORMAT.to_be_bytes()[..]));

    // As an older build left it: no key. The next start writes it.
    store.db().unwrap().remove(FORMAT_KEY).unwrap();
    store.db().unwrap().flush().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(format(&store).as_deref(), Some(&FORMAT.to_be_bytes()[..]));

    // As a newer build would leave it.
    let newer = FORMAT + 1;
    store
        .db()
        .unwrap()
        .insert(FORMAT_KEY, &newer.to_be_bytes()[..])
        .unwrap();
    store.db().unwrap().flush().unwrap();
    drop(store);
    let accept = super::OpenOptions {
        accept_data_loss: true,
        ..Default::default()
    };
    for opts in [super::OpenOptions::default(), accept] {
        let refused = Store::open_with(&path, opts).err().expect("a newer format");
        assert!(
            matches!(&refused, super::StoreError::NewerFormat { format, .. } if *format == newer),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("newer sensorgate"),
            "{refused}"
        );
    }
    let checked = super::check::check(&path).expect_err("check-store refuses it too");
    assert!(
        matches!(checked, super::StoreError::NewerFormat { .. }),
        "{checked}"
    );

    // Back to this build's format (what the newer build's data would not
    // allow): every reading is still there, so nothing was set aside.
    let db = super::recovery::open_sled(&path).unwrap();
    db.insert(FORMAT_KEY, &FORMAT.to_be_bytes()[..]).unwrap();
    db.flush().unwrap();
    drop(db);
    let store = Store::open(&path).unwrap();
    assert_eq!(ids(&store, 0), (1..=last).collect::<Vec<_>>());
}
