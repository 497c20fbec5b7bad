//! Opening a store: sled's own recovery, the write-ahead log's replay, and
//! the checks against the high-water marks that refuse a store holding less
//! than it acknowledged (`--accept-data-loss` continues above the mark).
//! Used at start-up, by `check-store` (without applying the log) and when
//! the writer reopens sled after a failure ([`super::fault`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::protocol::Reading;

use super::durability::{self, FileSync};
use super::hwm::{self, HighWaterMark};
use super::{
    codec, fault::poke_stuck_flushes, wal, OpenOptions, SegmentMeta, Store, StoreError,
    BRIDGE_CURSOR_KEY, FORMAT, FORMAT_KEY, HWM_KEPT_KEY, INDEX_PREFIX, NEXT_ID_KEY, SEGMENT_PREFIX,
    SEQ_PREFIX, WAL_KEPT_KEY,
};

/// How long `open` waits for sled's file lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What sled may keep of the store in memory. sled's default is 1 GiB, and
/// it keeps every page it writes until that is reached, so the daemon's
/// memory grew with the data stored: 124 MiB after 20 s at 100,000
/// readings/s, 330 MiB after 10 s flooding (issue 14's benchmarks). Reads
/// that miss it (replays from far back, queries) go to the files, which the
/// kernel's page cache holds anyway. The patched sled counts a node by its
/// size in memory (third_party/sled/PATCHED.md), so this is about what the
/// cache holds; sled's bookkeeping for every page comes on top of it.
const SLED_CACHE: u64 = 16 * 1024 * 1024;

/// Opens sled at `path`, waiting (bounded) for its file lock: dropping a
/// `sled::Db` releases the lock only once sled's I/O threads have let go of
/// the file, a moment later, so a store closed and reopened in one process
/// (a daemon restarted in place, the tests) can briefly find it held. A lock
/// still held after [`LOCK_WAIT`] is another live process: that error is
/// returned as is.
pub(super) fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(path)
            // sled's own background flusher is off: durability points are
            // chosen by the writer (`storage.sync`), never by a timer we
            // don't control.
            .flush_every_ms(None)
            .cache_capacity(SLED_CACHE)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Runs `f`, turning a panic inside sled (its deserializer panics on some
/// damaged files) into an error message instead of a crash, without the
/// default hook's multi-line report on stderr.
pub(super) fn without_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|p| {
        format!(
            "sled failed reading it: {}",
            panic_message(&*p).lines().next().unwrap_or("")
        )
    })
}

/// [`without_panics`] for a store operation: its error or sled's panic,
/// as one message.
pub(super) fn read_guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, String> {
    without_panics(f).and_then(|r| r.map_err(|e| e.to_string()))
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// What a freshly opened sled holds, as far as ids go.
pub(super) struct Recovered {
    pub(super) db: sled::Db,
    /// Newest id the content accounts for (0 when empty).
    pub(super) last_id: u64,
    pub(super) retained_bytes: u64,
    /// Ids between the oldest indexed segment and `last_id` in no segment
    /// (after the log is applied; empty when it is not).
    pub(super) holes: Vec<super::holes::Ids>,
    /// The write-ahead log, its records already applied to `db`.
    pub(super) wal: wal::Wal,
    /// Newest id the log held (it was acknowledged if the log's sync
    /// returned), for the check against what the store now holds.
    pub(super) log_mark: Option<u64>,
    /// Commits the log added to sled (or, not applying it, would add).
    pub(super) log_commits: usize,
}

/// Applies the log's commits that sled does not hold (sled recovers a
/// prefix of its own commits, so those are the log's last ones) . A log that
/// resumes above sled's content leaves a gap: nothing after it is applied,
/// and the log's newest id makes the check against the high-water mark
/// report the loss.
///
/// With `apply` false nothing is written (`check-store`): it only counts.
/// Returns the next id after the replay and how many commits were (or
/// would be) applied.
fn replay(db: &sled::Db, records: &[wal::Record], apply: bool) -> Result<(u64, usize), StoreError> {
    let stored_next = stored_next_id(db)?;
    let pending = pending(stored_next, records);
    if apply {
        for r in &pending {
            let mut batch = sled::Batch::default();
            for (k, v) in &r.entries {
                batch.insert(k.as_slice(), v.as_slice());
            }
            db.apply_batch(batch)?;
        }
    }
    let next = pending.last().map_or(stored_next, |r| r.next_id);
    Ok((next, pending.len()))
}

/// The log's commits that continue a store whose next id is `next`.
pub(super) fn pending(mut next: u64, records: &[wal::Record]) -> Vec<&wal::Record> {
    let mut out = Vec::new();
    for r in records {
        if r.next_id <= next || r.first_id != next {
            continue; // held already, or past a gap
        }
        next = r.next_id;
        out.push(r);
    }
    out
}

/// Refuses a store whose format ([`FORMAT_KEY`]) is newer than this
/// build's [`FORMAT`]. No key: a store from before the marker, whose
/// format this build reads.
fn check_format(path: &Path, db: &sled::Db) -> Result<(), StoreError> {
    let Some(v) = db.get(FORMAT_KEY)? else {
        return Ok(());
    };
    match codec::decode_u64(FORMAT_KEY, &v)? {
        format if format > FORMAT => Err(StoreError::NewerFormat {
            path: path.to_path_buf(),
            format,
        }),
        _ => Ok(()),
    }
}

pub(super) fn stored_next_id(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(match db.get(NEXT_ID_KEY)? {
        Some(v) => codec::decode_u64(NEXT_ID_KEY, &v)?,
        None => 1,
    })
}

/// Opens sled, applies the write-ahead log and reads what the id
/// bookkeeping needs, every sled failure or panic becoming
/// [`StoreError::Unreadable`].
pub(super) fn recover(path: &Path) -> Result<Recovered, StoreError> {
    recover_with(path, true)
}

/// [`recover`], applying the log only when `apply_log` is set; otherwise
/// `last_id` still counts what a replay would add.
pub(super) fn recover_with(path: &Path, apply_log: bool) -> Result<Recovered, StoreError> {
    let unreadable = |detail: String| StoreError::Unreadable {
        path: path.to_path_buf(),
        detail,
    };
    let scanned = without_panics(|| -> Result<Recovered, StoreError> {
        let db = open_sled(path)?;
        // Before anything is replayed into a store this build may not know.
        check_format(path, &db)?;
        let (wal, contents) = wal::Wal::open(path)?;
        let (next_id, log_commits) = replay(&db, &contents.records, apply_log)?;
        let log_mark = contents.newest_id;
        let mut last_id = next_id - 1;
        let mut bytes = 0u64;
        let mut holes = super::holes::Holes::default();
        for entry in db.scan_prefix(INDEX_PREFIX) {
            let (k, v) = entry?;
            let meta = SegmentMeta::decode(&k, &v)?;
            bytes += meta.bytes;
            last_id = last_id.max(meta.last_id);
            holes.segment(meta.first_id, meta.last_id);
        }
        // Without the log applied, its commits are not in the index yet.
        let holes = if apply_log {
            holes.end(last_id + 1)
        } else {
            Vec::new()
        };
        // The newest segment is what a restarted device and subscriber read
        // first; damage there (or a lost blob, in a store written before
        // segments were bounded) is found now rather than on first use.
        if let Some(entry) = db.scan_prefix(SEGMENT_PREFIX).next_back() {
            let (k, v) = entry?;
            codec::decode_segment(&k, &v)?;
        }
        Ok(Recovered {
            db,
            last_id,
            retained_bytes: bytes,
            holes,
            wal,
            log_mark,
            log_commits,
        })
    })
    .map_err(unreadable)?;
    scanned.map_err(|e| match e {
        // Another live process holding the lock is not damage.
        StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("lock") => {
            StoreError::Locked {
                path: path.to_path_buf(),
                detail: io.to_string(),
            }
        }
        // The log's own I/O error (a full disk creating it, say) names it.
        StoreError::Log(e) => StoreError::Log(e),
        // Not damage either: a newer build's store, left as it is.
        e @ StoreError::NewerFormat { .. } => e,
        other => unreadable(other.to_string()),
    })
}

/// How many of the newest readings the daemon's start reads back: what the
/// device book is then seeded from, and what
/// restarted devices and subscribers read first. The rest is left to
/// `check-store` and to the read that reaches it, so that start-up time
/// does not grow with the store.
pub const VERIFIED_AT_START: u64 = 100_000;

/// Reads back the newest [`VERIFIED_AT_START`] readings' segments against
/// the index (each indexed segment there and decoding, each segment
/// indexed), every device's `last_seq` and the bridge cursor: what
/// `check-store` would find wrong there, the start finds too. sled has been
/// seen to recover a store with a damaged page by losing that page's keys
/// silently (they read as absent); this refuses such a store rather than
/// serving it short. `seen` gets each segment read back, newest first.
fn verify_newest(db: &sled::Db, seen: &dyn SeenAtStart) -> Result<(), StoreError> {
    let mut index = db.scan_prefix(INDEX_PREFIX).rev();
    let mut segments = db.scan_prefix(SEGMENT_PREFIX).rev();
    let mut readings = 0u64;
    let mut showing = true;
    while readings < VERIFIED_AT_START {
        let indexed = match index.next().transpose()? {
            Some((k, v)) => Some(SegmentMeta::decode(&k, &v)?.first_id),
            None => None,
        };
        let stored = segments.next().transpose()?;
        let first = match &stored {
            Some((k, _)) => Some(codec::id_from_key(k)?),
            None => None,
        };
        // Both run newest first: the greater of two different ids is the
        // one the other side lacks.
        match (indexed, first) {
            (None, None) => break,
            (Some(i), f) if f.is_none_or(|f| i > f) => return Err(super::missing_segment(i)),
            (i, Some(f)) if i != Some(f) => {
                return Err(StoreError::Corrupt {
                    key: format!("segment {f}"),
                    detail: "stored but missing from the index".into(),
                })
            }
            _ => {}
        }
        if let Some((k, v)) = stored {
            let segment = codec::decode_segment(&k, &v)?;
            readings += segment.len() as u64;
            if showing {
                showing = show(seen, &segment);
            }
        }
    }
    for entry in db.scan_prefix(SEQ_PREFIX) {
        let (k, v) = entry?;
        codec::decode_u64(&k, &v)?;
    }
    if let Some(v) = db.get(BRIDGE_CURSOR_KEY)? {
        codec::decode_u64(BRIDGE_CURSOR_KEY, &v)?;
    }
    Ok(())
}

/// Shows `seen` one segment. Its panic is its own (`verify_newest` runs
/// under [`without_panics`], which would take it for sled's and refuse the
/// store): logged, and nothing more is shown to it.
fn show(seen: &dyn SeenAtStart, segment: &[Reading]) -> bool {
    let shown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| seen.segment(segment)));
    if let Err(panic) = &shown {
        tracing::warn!(
            panic = %panic_message(&**panic),
            "learning from the store's newest readings failed; /v1/devices fills as devices report"
        );
    }
    shown.is_ok()
}

/// Shown the newest readings as the start reads them back to verify the
/// store ([`Store::open_seeing`]).
pub trait SeenAtStart: Sync {
    /// One segment's readings. Segments come newest first, and a store
    /// repaired with `--accept-data-loss` may show some twice.
    fn segment(&self, readings: &[Reading]);
    /// What was shown belongs to a store that was then set aside
    /// (`--accept-data-loss` on a store sled cannot read): forget it.
    fn set_aside(&self);
}

/// Shows nothing ([`Store::open_with`]).
impl SeenAtStart for () {
    fn segment(&self, _: &[Reading]) {}
    fn set_aside(&self) {}
}

/// [`verify_newest`] at the daemon's start (not at a reopen after a write
/// failure: the store was verified when opened). Its failure refuses the
/// start as unreadable. With `--accept-data-loss` the index entries of
/// segments sled lost are dropped instead, so that their ids read as a gap
/// (as ids skipped over the mark do), and the start goes on if the newest
/// readings then read back whole. Returns the bytes no longer indexed.
fn verify_or_repair(
    path: &Path,
    db: &sled::Db,
    accept_data_loss: bool,
    seen: &dyn SeenAtStart,
) -> Result<u64, StoreError> {
    let unreadable = |detail: String| StoreError::Unreadable {
        path: path.to_path_buf(),
        detail: format!("reading back its newest readings: {detail}"),
    };
    let verify = || read_guarded(|| verify_newest(db, seen)).map_err(unreadable);
    let Err(damage) = verify() else {
        return Ok(0);
    };
    if !accept_data_loss {
        return Err(damage);
    }
    tracing::warn!(error = %damage, "dropping the index entries of lost segments (--accept-data-loss)");
    let dropped = read_guarded(|| drop_lost_segments(db)).map_err(unreadable)?;
    tracing::warn!(
        segments = dropped.segments,
        bytes = dropped.bytes,
        "index entries of lost segments dropped"
    );
    verify()?;
    Ok(dropped.bytes)
}

/// Refuses a store with ids missing between its segments or below its next
/// id that nothing skipped on purpose ([`super::holes`]). With
/// `--accept-data-loss` they are recorded as skipped and the start goes on;
/// so are an older store's at its first start (it was served that way).
fn check_holes(path: &Path, rec: &Recovered, accept_data_loss: bool) -> Result<(), StoreError> {
    use super::holes;
    let unexplained = holes::unexplained(&rec.holes, &holes::skipped(&rec.db)?);
    let first_check = rec.db.get(holes::HOLES_KEPT_KEY)?.is_none();
    if !unexplained.is_empty() && !accept_data_loss && !first_check {
        return Err(StoreError::Unreadable {
            path: path.to_path_buf(),
            detail: format!(
                "{} are in no segment although ids above them were handed out",
                holes::describe(&unexplained)
            ),
        });
    }
    if !unexplained.is_empty() {
        tracing::warn!(
            missing = %holes::describe(&unexplained),
            "ids in no segment recorded as skipped ({})",
            if accept_data_loss { "--accept-data-loss" } else { "first start of this version" }
        );
        holes::record_skipped(&rec.db, &unexplained)?;
    }
    if first_check || !unexplained.is_empty() {
        rec.db.insert(holes::HOLES_KEPT_KEY, &[1u8][..])?;
        rec.db.flush()?;
    }
    Ok(())
}

/// Removes every index entry whose segment sled does not hold.
fn drop_lost_segments(db: &sled::Db) -> Result<super::retention::Pruned, StoreError> {
    let mut dropped = super::retention::Pruned::default();
    let mut ranges = Vec::new();
    for entry in db.scan_prefix(INDEX_PREFIX) {
        let (k, v) = entry?;
        let meta = SegmentMeta::decode(&k, &v)?;
        if !db.contains_key(super::segment_key(meta.first_id))? {
            db.remove(&k)?;
            dropped.segments += 1;
            dropped.bytes += meta.bytes;
            ranges.push(meta.first_id..=meta.last_id);
        }
    }
    // Their ids are now a hole on purpose.
    super::holes::record_skipped(db, &ranges)?;
    db.flush()?;
    Ok(dropped)
}

/// The store's content (its newest id) against the durable high-water mark:
/// less than the mark is a store that lost acknowledged readings.
pub(super) fn check_mark(path: &Path, content: u64, mark: Option<u64>) -> Result<(), StoreError> {
    match mark {
        Some(mark) if mark > content => Err(StoreError::BehindHighWaterMark {
            path: path.to_path_buf(),
            content,
            mark,
            missing: mark - content,
        }),
        _ => Ok(()),
    }
}

/// `--accept-data-loss` on a store sled cannot open at all: it is renamed to
/// `<path>.damaged-<unix seconds>` (kept for forensics or a manual rescue)
/// and an empty store starts in its place, above the old high-water mark.
fn set_aside(path: &Path, why: &str) -> Result<(), StoreError> {
    let aside = PathBuf::from(format!(
        "{}.damaged-{}",
        path.display(),
        crate::time::unix_ms() / 1000
    ));
    tracing::warn!(store = %path.display(), moved_to = %aside.display(), reason = why,
        "the store cannot be read; setting it aside and starting empty (--accept-data-loss)");
    let io = |e: std::io::Error| StoreError::Unreadable {
        path: path.to_path_buf(),
        detail: format!("setting the damaged store aside: {e}"),
    };
    std::fs::rename(path, &aside).map_err(io)?;
    std::fs::create_dir_all(path).map_err(io)?;
    durability::fsync_dir(path.parent().unwrap_or(Path::new("/"))).map_err(io)
}

impl Store {
    /// Opens (or creates) the store at `path` and recovers its counters.
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens (or creates) the store at `path`, checks it against its durable
    /// high-water mark, and makes what sled recovered power-loss safe.
    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Arc<Store>, StoreError> {
        Self::open_seeing(path, opts, &())
    }

    /// [`Store::open_with`], showing `seen` the newest readings (about
    /// [`VERIFIED_AT_START`]) as the start reads them back to verify them:
    /// the daemon's device book learns its devices from them rather than
    /// reading them again.
    pub fn open_seeing(
        path: &Path,
        opts: OpenOptions,
        seen: &dyn SeenAtStart,
    ) -> Result<Arc<Store>, StoreError> {
        // A damaged mark is refused even with --accept-data-loss: without
        // it nothing says which ids were handed out. Deleting the file is
        // the operator's explicit way past it (see MarkMissing).
        // Commits since the last checkpoint are acknowledged from the
        // write-ahead log: the mark is the higher of the two.
        let log = wal::read(path)?;
        let mark_file = hwm::read(path)?;
        let mark = mark_file.max(log.as_ref().and_then(|c| c.newest_id));
        let mut rec = match recover(path) {
            Err(StoreError::Unreadable { detail, .. }) if opts.accept_data_loss => {
                set_aside(path, &detail)?;
                recover(path)?
            }
            other => other?,
        };
        match verify_or_repair(path, &rec.db, opts.accept_data_loss, seen) {
            Ok(unindexed) => rec.retained_bytes = rec.retained_bytes.saturating_sub(unindexed),
            // Unreadable even after dropping what sled lost: as a store sled
            // cannot open at all.
            Err(StoreError::Unreadable { detail, .. }) if opts.accept_data_loss => {
                drop(rec);
                seen.set_aside();
                set_aside(path, &detail)?;
                rec = recover(path)?;
            }
            Err(e) => return Err(e),
        }
        check_holes(path, &rec, opts.accept_data_loss)?;
        let mut last_id = rec.last_id;
        let had_mark = rec.db.get(HWM_KEPT_KEY)?.is_some();
        if log.is_none() && rec.db.get(WAL_KEPT_KEY)?.is_some() {
            if !opts.accept_data_loss {
                return Err(StoreError::LogMissing {
                    path: path.to_path_buf(),
                });
            }
            tracing::warn!("the write-ahead log file is gone; continuing above the store's own content (--accept-data-loss)");
        }
        if mark_file.is_none() && had_mark {
            if !opts.accept_data_loss {
                return Err(StoreError::MarkMissing {
                    path: path.to_path_buf(),
                });
            }
            tracing::warn!("the high-water mark file is gone; continuing above the store's own content (--accept-data-loss)");
        }
        if let Err(behind) = check_mark(path, rec.last_id, mark) {
            let Some(mark) = mark.filter(|_| opts.accept_data_loss) else {
                return Err(behind);
            };
            tracing::warn!(
                content = rec.last_id,
                mark,
                "store is behind its high-water mark; continuing above it (--accept-data-loss)"
            );
            rec.db.insert(NEXT_ID_KEY, &(mark + 1).to_be_bytes()[..])?;
            super::holes::record_skipped(&rec.db, &[rec.last_id + 1..=mark])?;
            rec.db.flush()?;
            last_id = mark;
        }
        // A store from before the format marker (or a new one) is of this
        // build's format: say so, durable with the flush below.
        if rec.db.get(FORMAT_KEY)?.is_none() {
            rec.db.insert(FORMAT_KEY, &FORMAT.to_be_bytes()[..])?;
        }
        // What sled recovered, replayed from the log or created is made
        // durable before the mark says anything about it, and before the
        // log is written over.
        rec.db.flush()?;
        let mut files = FileSync::open(path).map_err(StoreError::Sync)?;
        let hwm = HighWaterMark::create_or_open(path, last_id)?;
        // From now on the store knows it has a mark: a mark file that goes
        // missing later is a damage, not a new store.
        let mut wal = rec.wal;
        let new_log = !wal.exists();
        wal.reset()?;
        if !had_mark || new_log {
            rec.db.insert(HWM_KEPT_KEY, &[1u8][..])?;
            rec.db.insert(WAL_KEPT_KEY, &[1u8][..])?;
            rec.db.flush()?;
            files.sync().map_err(StoreError::Sync)?;
        }
        let store = Arc::new(Store {
            path: path.to_path_buf(),
            db: RwLock::new(Some(rec.db)),
            files: Mutex::new(Some(files)),
            hwm: Mutex::new(hwm),
            wal: Mutex::new(wal),
            last_durable_id: AtomicU64::new(last_id),
            tail: Mutex::new(super::tail::Tail::new(last_id)),
            retained_bytes: AtomicU64::new(rec.retained_bytes),
            refusal: Mutex::new(None),
            wedged: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            closing: Mutex::new(None),
            restart_in_place: opts.restart_in_place,
            flush_started_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            applier_priority: Arc::default(),
        });
        poke_stuck_flushes(Arc::downgrade(&store));
        crate::events::StoreWritable(true).emit();
        Ok(store)
    }
}
