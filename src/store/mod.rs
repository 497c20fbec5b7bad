//! Durable storage in sled (SPEC §7).
//!
//! Owns: the on-disk layout, id assignment state, per-device `last_seq`, the
//! group-commit writer ([`writer`]) and background retention ([`retention`]).
//! Everything is in one sled tree so that a group commit (its readings, the
//! `last_seq` of every device in it, and the id high-water mark) is a single
//! atomic `apply_batch`: after `kill -9` a batch is either wholly there with
//! its seq, or not at all.
//!
//! Layout (keys are byte strings, integers big-endian so they sort):
//! - `m/next_id` → u64: the next id to hand out. Kept explicitly rather than
//!   derived from the newest reading, because retention may delete every
//!   reading and ids must never be reused.
//! - `q/<device>` → u64: the highest stored batch seq of a device.
//! - `s/<first_id>` → segment: the readings of one group commit (contiguous
//!   ids), MessagePack-encoded. One sled entry per commit instead of one per
//!   reading keeps the write path cheap.
//! - `i/<first_id>` → segment index entry (last id, newest `received`, bytes),
//!   small enough to scan at start-up and during retention.
//! - `m/bridge_cursor` → u64: the MQTT bridge's outbox cursor. The outbox is
//!   the readings log itself: every reading with `id > cursor` is still to be
//!   published ([`crate::bridge`]). Written by the bridge without a flush of
//!   its own (the next group commit's flush carries it); after a crash it may
//!   be a little behind, and those readings are published again (QoS 1 is
//!   at least once).
//!
//! Never: called from async code for long (sled calls block; the writer has
//! its own thread and HTTP reads go through `spawn_blocking`).

pub mod check;
mod codec;
pub mod durability;
pub mod hwm;
pub mod retention;
pub mod wal;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::protocol::Reading;

pub use codec::SegmentMeta;
pub use writer::{CommitListener, CommitOutcome, IngestBatch, WriteRequest, WriterHandle};

use durability::FileSync;
use hwm::HighWaterMark;

const NEXT_ID_KEY: &[u8] = b"m/next_id";
const BRIDGE_CURSOR_KEY: &[u8] = b"m/bridge_cursor";
/// Present once the store has a high-water-mark file ([`hwm`]).
const HWM_KEPT_KEY: &[u8] = b"m/hwm_kept";
/// Present once the store has a write-ahead log file ([`wal`]).
const WAL_KEPT_KEY: &[u8] = b"m/wal_kept";
const SEQ_PREFIX: &[u8] = b"q/";
const SEGMENT_PREFIX: &[u8] = b"s/";
const INDEX_PREFIX: &[u8] = b"i/";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt store entry {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// sled failed or panicked while opening or recovering the store.
    #[error("storage.path {path}: the store cannot be read ({detail}); inspect it with `sensorgate check-store`, restore it from a backup, or move it aside to start empty")]
    Unreadable { path: PathBuf, detail: String },
    /// The store holds less than it once acknowledged.
    #[error("storage.path {path}: the store ends at id {content} but id {mark} was acknowledged ({missing} readings missing: damaged or rolled-back store); inspect with `sensorgate check-store`, restore a backup, or start with --accept-data-loss to continue above id {mark}")]
    BehindHighWaterMark {
        path: PathBuf,
        content: u64,
        mark: u64,
        missing: u64,
    },
    #[error("storage.path: {0}; inspect with `sensorgate check-store`; deleting the file and starting with --accept-data-loss continues above the store's own content, which may reuse ids of lost readings")]
    HighWaterMark(#[from] hwm::HwmError),
    /// The store once had a high-water mark and its file is gone.
    #[error("storage.path {path}: the high-water mark file {} is missing although this store had one; inspect with `sensorgate check-store`, restore it, or start with --accept-data-loss to continue above the store's own content", hwm::FILE_NAME)]
    MarkMissing { path: PathBuf },
    /// `fsync`/`fdatasync` of the store's files failed: what is on disk is
    /// unknown, so nothing may be acknowledged.
    #[error("syncing the store's files: {0}")]
    Sync(std::io::Error),
    /// Reading, writing or syncing the write-ahead log failed, or it is
    /// damaged.
    #[error("storage.path: {0}")]
    Log(#[from] wal::WalError),
    /// The store once had a write-ahead log and its file is gone.
    #[error("storage.path {path}: the write-ahead log file {} is missing although this store had one; inspect with `sensorgate check-store`, restore it, or start with --accept-data-loss to continue above the store's own content", wal::FILE_NAME)]
    LogMissing { path: PathBuf },
    /// Another process (a running daemon) holds the store's lock.
    #[error(
        "storage.path {path}: the store is in use by another process ({detail}); stop it first"
    )]
    Locked { path: PathBuf, detail: String },
    /// The store was closed after a failure and is not reopened yet.
    #[error("the store is closed after a failure and not reopened yet")]
    Closed,
}

impl StoreError {
    /// True for a store refused at start-up as damaged or rolled back: an
    /// operator has to look before it is served again.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            StoreError::Unreadable { .. }
                | StoreError::BehindHighWaterMark { .. }
                | StoreError::MarkMissing { .. }
                | StoreError::LogMissing { .. }
                | StoreError::Log(wal::WalError::Damaged { .. })
                | StoreError::HighWaterMark(hwm::HwmError::Damaged { .. })
        )
    }
}

/// How to open a store.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Continue when the store holds less than its high-water mark; ids then
    /// continue above the mark so none is ever handed out twice.
    pub accept_data_loss: bool,
    /// When sled is wedged after a failed write (it can neither finish nor
    /// drop, so its file lock is never released), re-execute the process in
    /// place once space is back: the one way to reopen the store without a
    /// supervisor. Only the daemon's `main` sets this; a library user (the
    /// tests' in-process daemon) keeps refusing instead.
    pub restart_in_place: bool,
}

/// The opened store. Cheap to share (`Arc<Store>`); sled is internally
/// synchronised, and only the writer thread mutates readings and seqs.
pub struct Store {
    path: PathBuf,
    /// `None` only while the writer reopens sled after an I/O failure (a
    /// failed sled refuses every operation until reopened).
    db: RwLock<Option<sled::Db>>,
    /// What makes sled's writes power-loss safe; `None` while closed.
    files: Mutex<Option<FileSync>>,
    hwm: Mutex<HighWaterMark>,
    /// Where commits become durable between checkpoints; only the writer
    /// appends.
    wal: Mutex<wal::Wal>,
    /// Newest id that is durable and visible (0 when none yet). Fan-out uses
    /// it as the seam between replay and live delivery.
    last_durable_id: AtomicU64,
    /// Bytes of segment payloads currently retained; retention compares this
    /// with `storage.max_bytes`.
    retained_bytes: AtomicU64,
    /// Why the store refuses writes right now (`None`: it accepts them).
    refusal: Mutex<Option<String>>,
    /// Set when a sled closed after a failure could not be dropped.
    wedged: Arc<std::sync::atomic::AtomicBool>,
    restart_in_place: bool,
    /// When the flush in progress started (ms since `epoch`, 0 = none): see
    /// [`poke_stuck_flushes`].
    flush_started_ms: AtomicU64,
    epoch: Instant,
}

/// How long `open` waits for sled's file lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled at `path`, waiting (bounded) for its file lock: dropping a
/// `sled::Db` releases the lock only once sled's I/O threads have let go of
/// the file, a moment later, so a store closed and reopened in one process
/// (a daemon restarted in place, the tests) can briefly find it held. A lock
/// still held after [`LOCK_WAIT`] is another live process: that error is
/// returned as is.
fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(path)
            // sled's own background flusher is off: durability points are
            // chosen by the writer (`storage.sync`), never by a timer we
            // don't control.
            .flush_every_ms(None)
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
fn without_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!(
            "sled failed reading it: {}",
            msg.lines().next().unwrap_or("")
        )
    })
}

/// What a freshly opened sled holds, as far as ids go.
struct Recovered {
    db: sled::Db,
    /// Newest id the content accounts for (0 when empty).
    last_id: u64,
    retained_bytes: u64,
    /// The write-ahead log, its records already applied to `db`.
    wal: wal::Wal,
    /// Newest id the log held (it was acknowledged if the log's sync
    /// returned), for the check against what the store now holds.
    log_mark: Option<u64>,
    /// Commits the log added to sled (or, not applying it, would add).
    log_commits: usize,
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
fn pending(mut next: u64, records: &[wal::Record]) -> Vec<&wal::Record> {
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

fn stored_next_id(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(match db.get(NEXT_ID_KEY)? {
        Some(v) => codec::decode_u64(NEXT_ID_KEY, &v)?,
        None => 1,
    })
}

/// Opens sled, applies the write-ahead log and reads what the id
/// bookkeeping needs, every sled failure or panic becoming
/// [`StoreError::Unreadable`].
fn recover(path: &Path) -> Result<Recovered, StoreError> {
    recover_with(path, true)
}

/// [`recover`], applying the log only when `replay` is set; otherwise
/// `last_id` still counts what a replay would add.
fn recover_with(path: &Path, apply_log: bool) -> Result<Recovered, StoreError> {
    let unreadable = |detail: String| StoreError::Unreadable {
        path: path.to_path_buf(),
        detail,
    };
    let scanned = without_panics(|| -> Result<Recovered, StoreError> {
        let db = open_sled(path)?;
        let (wal, contents) = wal::Wal::open(path)?;
        let (next_id, log_commits) = replay(&db, &contents.records, apply_log)?;
        let log_mark = contents.newest_id;
        let mut last_id = next_id - 1;
        let mut bytes = 0u64;
        for entry in db.scan_prefix(INDEX_PREFIX) {
            let (k, v) = entry?;
            let meta = SegmentMeta::decode(&k, &v)?;
            bytes += meta.bytes;
            last_id = last_id.max(meta.last_id);
        }
        // The newest segment is what a restarted device and subscriber read
        // first; a lost blob there is found now rather than on first use.
        if let Some(entry) = db.scan_prefix(SEGMENT_PREFIX).next_back() {
            let (k, v) = entry?;
            codec::decode_segment(&k, &v)?;
        }
        Ok(Recovered {
            db,
            last_id,
            retained_bytes: bytes,
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
        other => unreadable(other.to_string()),
    })
}

/// The store's content (its newest id) against the durable high-water mark:
/// less than the mark is a store that lost acknowledged readings.
fn check_mark(path: &Path, content: u64, mark: Option<u64>) -> Result<(), StoreError> {
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
        // A damaged mark is refused even with --accept-data-loss: without
        // it nothing says which ids were handed out. Deleting the file is
        // the operator's explicit way past it (see MarkMissing).
        // Commits since the last checkpoint are acknowledged from the
        // write-ahead log: the mark is the higher of the two.
        let log = wal::read(path)?;
        let mark_file = hwm::read(path)?;
        let mark = mark_file.max(log.as_ref().and_then(|c| c.newest_id));
        let rec = match recover(path) {
            Err(StoreError::Unreadable { detail, .. }) if opts.accept_data_loss => {
                set_aside(path, &detail)?;
                recover(path)?
            }
            other => other?,
        };
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
            rec.db.flush()?;
            last_id = mark;
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
            retained_bytes: AtomicU64::new(rec.retained_bytes),
            refusal: Mutex::new(None),
            wedged: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            restart_in_place: opts.restart_in_place,
            flush_started_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        poke_stuck_flushes(Arc::downgrade(&store));
        crate::events::StoreWritable(true).emit();
        Ok(store)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on sled, or [`StoreError::Closed`] while it is being reopened.
    fn db(&self) -> Result<sled::Db, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Highest stored batch seq of `device`, `None` when the device never sent
    /// a batch with `seq`.
    pub fn last_seq(&self, device: &str) -> Result<Option<u64>, StoreError> {
        let key = seq_key(device);
        self.db()?
            .get(&key)?
            .map(|v| codec::decode_u64(&key, &v))
            .transpose()
    }

    /// Newest durable id (0 when the store is empty).
    pub fn last_id(&self) -> u64 {
        self.last_durable_id.load(Ordering::Acquire)
    }

    /// Oldest id still retained, `None` when no reading is stored.
    pub fn oldest_id(&self) -> Result<Option<u64>, StoreError> {
        match self.db()?.scan_prefix(INDEX_PREFIX).next() {
            Some(entry) => {
                let (k, _) = entry?;
                Ok(Some(codec::id_from_key(&k)?))
            }
            None => Ok(None),
        }
    }

    /// Bytes of readings currently retained.
    pub fn retained_bytes(&self) -> u64 {
        self.retained_bytes.load(Ordering::Relaxed)
    }

    /// Stored readings with `id > since` for which `keep` holds, in id order,
    /// at most `limit` of them, however many segments that takes (callers
    /// whose `keep` always holds are bounded by `limit`). Blocking: call
    /// from `spawn_blocking`.
    pub fn read_since(
        &self,
        since: u64,
        limit: usize,
        keep: impl FnMut(&Reading) -> bool,
    ) -> Result<Vec<Reading>, StoreError> {
        let page = self.read_page(since, limit, ScanBound::UNBOUNDED, &|| false, keep)?;
        Ok(page.items)
    }

    /// Like [`Store::read_since`], but touching at most `bound` (segments
    /// and readings decoded) and stopping as soon as `cancelled` says so:
    /// the cost of one call is bounded whatever `keep` matches. The
    /// [`Page`] says how far the scan got, to continue from there.
    /// Blocking: call from `spawn_blocking`.
    pub fn read_page(
        &self,
        since: u64,
        limit: usize,
        bound: ScanBound,
        cancelled: &dyn Fn() -> bool,
        mut keep: impl FnMut(&Reading) -> bool,
    ) -> Result<Page, StoreError> {
        let upper = self.last_id();
        let mut page = Page {
            items: Vec::new(),
            scanned_to: since,
            reached_end: false,
        };
        if limit == 0 {
            return Ok(page);
        }
        let (mut segments, mut decoded) = (0usize, 0usize);
        let db = self.db()?;
        for entry in db.range(first_segment_from(&db, since)?..segment_end()) {
            if segments >= bound.segments || decoded >= bound.readings || cancelled() {
                return Ok(page);
            }
            let (k, v) = entry?;
            segments += 1;
            let readings = codec::decode_segment(&k, &v)?;
            decoded += readings.len();
            for r in readings {
                // Readings applied but not yet flushed (interval mode) are
                // not handed out: every id a client sees must survive a crash.
                if r.id > upper {
                    page.reached_end = true;
                    page.scanned_to = page.scanned_to.max(upper);
                    return Ok(page);
                }
                if r.id <= since {
                    continue;
                }
                page.scanned_to = r.id;
                if keep(&r) {
                    page.items.push(r);
                    if page.items.len() >= limit {
                        return Ok(page);
                    }
                }
            }
        }
        page.reached_end = true;
        page.scanned_to = page.scanned_to.max(upper);
        Ok(page)
    }

    /// The MQTT bridge's outbox cursor: every reading with a greater id is
    /// still to be published. `None` before the bridge first ran.
    pub fn bridge_cursor(&self) -> Result<Option<u64>, StoreError> {
        self.db()?
            .get(BRIDGE_CURSOR_KEY)?
            .map(|v| codec::decode_u64(BRIDGE_CURSOR_KEY, &v))
            .transpose()
    }

    /// Records the bridge's cursor. Not flushed here: durability comes with
    /// the next group commit or [`Store::flush`]. Blocking (sled).
    pub fn set_bridge_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.db()?
            .insert(BRIDGE_CURSOR_KEY, &cursor.to_be_bytes()[..])?;
        Ok(())
    }

    /// Forces everything applied so far to disk, power-loss safe.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sync_files(&self.db()?)
    }

    /// sled's flush, then [`FileSync::sync`]: after this returns, everything
    /// applied to `db` survives a power cut.
    fn sync_files(&self, db: &sled::Db) -> Result<(), StoreError> {
        let started = self.epoch.elapsed().as_millis() as u64;
        self.flush_started_ms
            .store(started.max(1), Ordering::Release);
        let flushed = db.flush();
        self.flush_started_ms.store(0, Ordering::Release);
        flushed?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files
            .as_mut()
            .ok_or(StoreError::Closed)?
            .sync()
            .map_err(StoreError::Sync)
    }

    /// A checkpoint: makes every commit applied so far durable in sled
    /// itself, records `last_id` as the durable high-water mark, and lets
    /// the write-ahead log start again. Only the writer calls this.
    fn checkpoint(&self, db: &sled::Db, last_id: u64) -> Result<(), StoreError> {
        self.sync_files(db)?;
        self.hwm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(last_id)?;
        self.wal.lock().unwrap_or_else(|e| e.into_inner()).reset()?;
        Ok(())
    }

    /// Writes one applied commit to the write-ahead log (not yet synced).
    /// False when it does not fit: then only a checkpoint makes it durable.
    fn log_commit(
        &self,
        first_id: u64,
        next_id: u64,
        entries: &[(&[u8], &[u8])],
    ) -> Result<bool, StoreError> {
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        Ok(wal.append(first_id, next_id, entries)?)
    }

    /// Makes every commit logged so far durable: the log's `fdatasync`.
    /// Returns the bytes of log in use, for the writer to decide when a
    /// checkpoint is due.
    fn sync_log(&self) -> Result<u64, StoreError> {
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        wal.sync()?;
        Ok(wal.used())
    }

    /// After [`Store::sync_log`] made commits up to `last_id` durable: the
    /// mark file notes it (written, not synced; see [`HighWaterMark::note`]).
    fn note_durable(&self, last_id: u64) -> Result<(), StoreError> {
        let mut hwm = self.hwm.lock().unwrap_or_else(|e| e.into_inner());
        Ok(hwm.note(last_id)?)
    }

    fn mark_durable(&self, last_id: u64) {
        self.last_durable_id.fetch_max(last_id, Ordering::AcqRel);
    }

    /// Why writes are refused right now, `None` while they are accepted.
    /// `/readyz` reports it.
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_refusal(&self, reason: Option<String>) {
        let mut r = self.refusal.lock().unwrap_or_else(|e| e.into_inner());
        if *r != reason {
            match &reason {
                Some(why) => tracing::error!(reason = %why, "store refuses writes"),
                None => tracing::info!("store accepts writes again"),
            }
            crate::events::StoreWritable(reason.is_none()).emit();
            *r = reason;
        }
    }

    /// Drops sled after an I/O failure: a failed sled refuses every later
    /// operation, so the only way back is to open it again once every
    /// handle is gone ([`Store::reopen`]).
    fn close(&self) {
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let db = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        // Dropping the last handle flushes (and, when sled has not seen an
        // error itself, `sync_all().unwrap()`s): that may panic, or sleep on
        // sled's lost wake-up. So it happens on a throwaway thread, after
        // flushes that wake each other have all returned.
        let wedged = self.wedged.clone();
        let dropped = std::thread::Builder::new()
            .name("sensorgate-store-close".into())
            .spawn(move || {
                if let Some(db) = db {
                    if flush_until_settled(&db) {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                            move || drop(db),
                        ));
                    } else {
                        tracing::error!("sled does not finish flushing after a failure; its lock stays held until the process restarts");
                        wedged.store(true, Ordering::Release);
                        std::mem::forget(db);
                    }
                }
            });
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "could not start a thread to close the store");
        }
    }

    /// Opens sled again after [`Store::close`]. Returns the newest id the
    /// store holds, which may be above the writer's (a commit that reached
    /// the log although its flush reported failure).
    fn reopen(&self) -> Result<u64, StoreError> {
        let rec = recover(&self.path)?;
        let mark = self.hwm.lock().unwrap_or_else(|e| e.into_inner()).get();
        check_mark(&self.path, rec.last_id, Some(mark).max(rec.log_mark))?;
        // The log's commits are in sled now: durable there before the log
        // is written over (the writer's own checkpoint moves the mark).
        rec.db.flush()?;
        let files = FileSync::open(&self.path).map_err(StoreError::Sync)?;
        let mut wal = rec.wal;
        wal.reset()?;
        *self.wal.lock().unwrap_or_else(|e| e.into_inner()) = wal;
        self.retained_bytes
            .store(rec.retained_bytes, Ordering::Relaxed);
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(rec.db);
        Ok(rec.last_id)
    }
}

impl Store {
    /// True when a sled closed after a failure can never be released in this
    /// process (see [`OpenOptions::restart_in_place`]).
    pub fn is_wedged(&self) -> bool {
        self.wedged.load(Ordering::Acquire)
    }

    fn restart_in_place(&self) -> bool {
        self.restart_in_place
    }
}

/// Re-executes this process with its own arguments: every descriptor (the
/// wedged store's lock, the listener) is closed on exec, and the new image
/// opens the store afresh. Acknowledged readings are durable, so nothing
/// promised is lost; connections drop and devices resend. Returns only if
/// the exec failed.
fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    args.next();
    std::process::Command::new(exe).args(args).exec()
}

/// Flushes a failed sled until no flush is left waiting: each flush runs on
/// a short-lived thread, and while the newest has not returned within a
/// second another one is started — a flush that finds sled's recorded
/// error wakes every waiter (see [`poke_stuck_flushes`]). False when flushes
/// still hang after 5 tries (a write sled abandoned: it will never complete
/// nor fail).
fn flush_until_settled(db: &sled::Db) -> bool {
    let mut flushes: Vec<std::thread::JoinHandle<()>> = Vec::new();
    for _ in 0..5 {
        match poke(db.clone()) {
            Some(h) => flushes.push(h),
            None => return false,
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            if flushes.iter().all(|h| h.is_finished()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    false
}

/// One `flush` on a short-lived thread of its own: if sled recorded an error
/// without waking its waiters, this call sees it and wakes them all. The
/// thread holds `db` until its flush returns. `None` if no thread started.
fn poke(db: sled::Db) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sensorgate-flush-poke".into())
        .spawn(move || {
            let _ = db.flush();
        })
        .ok()
}

/// How long a flush may take before [`poke_stuck_flushes`] steps in.
const STUCK_FLUSH: Duration = Duration::from_secs(1);

/// Watches for a flush that does not return. sled 0.34 has a path where a
/// failed background log write (ENOSPC, EIO) records the error without
/// waking the thread waiting in `flush`, which then sleeps forever (seen on a
/// full disk). Any later `flush` call notices the recorded error and wakes
/// every waiter, so while a flush is stuck this thread calls `flush` from a
/// short-lived thread of its own. Ends when the store is dropped.
fn poke_stuck_flushes(store: Weak<Store>) {
    let spawned = std::thread::Builder::new()
        .name("sensorgate-flush-watch".into())
        .spawn(move || {
            // At most one poke in flight; a poke that itself blocks is a
            // slow disk, not a lost wake-up, and is left to finish.
            let mut in_flight: Option<std::thread::JoinHandle<()>> = None;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(store) = store.upgrade() else { return };
                let started = store.flush_started_ms.load(Ordering::Acquire);
                let now = store.epoch.elapsed().as_millis() as u64;
                let stuck =
                    started != 0 && now.saturating_sub(started) > STUCK_FLUSH.as_millis() as u64;
                if in_flight.as_ref().is_some_and(|p| !p.is_finished()) || !stuck {
                    continue;
                }
                let Ok(db) = store.db() else { continue };
                drop(store);
                in_flight = poke(db);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the flush watch thread");
    }
}

/// What one bounded read ([`Store::read_page`]) may touch: it stops before
/// a segment once `segments` segments or `readings` decoded readings have
/// been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanBound {
    pub segments: usize,
    pub readings: usize,
}

impl ScanBound {
    /// One `/v1/readings` request or one stream replay step: about 0.1 s of
    /// one core at most (decoding is ~1 µs per reading).
    pub const REQUEST: ScanBound = ScanBound {
        segments: 4096,
        readings: 100_000,
    };
    const UNBOUNDED: ScanBound = ScanBound {
        segments: usize::MAX,
        readings: usize::MAX,
    };
}

/// The result of a bounded read.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Reading>,
    /// Every stored reading with `since < id <= scanned_to` was examined
    /// (and is in `items` if it matched); the next read continues after it.
    pub scanned_to: u64,
    /// The scan reached the newest durable id: there is nothing more now.
    pub reached_end: bool,
}

fn segment_end() -> sled::IVec {
    sled::IVec::from(&segment_key(u64::MAX)[..])
}

/// The key of the segment holding `since + 1`: the last one whose first id
/// is not greater than it.
fn first_segment_from(db: &sled::Db, since: u64) -> Result<sled::IVec, StoreError> {
    let first_wanted = since.saturating_add(1);
    Ok(
        match db
            .range(segment_key(0)..=segment_key(first_wanted))
            .next_back()
        {
            Some(entry) => entry?.0,
            None => sled::IVec::from(&segment_key(0)[..]),
        },
    )
}

fn seq_key(device: &str) -> Vec<u8> {
    [SEQ_PREFIX, device.as_bytes()].concat()
}

fn segment_key(first_id: u64) -> [u8; 10] {
    prefixed_id(SEGMENT_PREFIX, first_id)
}

fn index_key(first_id: u64) -> [u8; 10] {
    prefixed_id(INDEX_PREFIX, first_id)
}

fn prefixed_id(prefix: &[u8], id: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(prefix);
    k[2..].copy_from_slice(&id.to_be_bytes());
    k
}
