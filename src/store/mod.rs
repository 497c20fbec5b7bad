//! Durable storage in sled (SPEC §7).
//!
//! Owns: the on-disk layout, id assignment state, per-device `last_seq`, the
//! group-commit writer ([`writer`]), background retention ([`retention`]),
//! and the CPU class of the writer's applier thread ([`priority`]).
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
//! - `s/<first_id>` → segment: consecutive readings of one group commit
//!   (contiguous ids) in the compact form `codec::segment` describes
//!   (stores written before it hold MessagePack rows, still read), at most
//!   6 KiB (a commit is cut into as many as it needs: `SEGMENT_MAX_BYTES`
//!   says why). One sled entry per segment instead of one per reading keeps
//!   the write path cheap.
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
pub mod commit;
pub mod durability;
mod fault;
mod holes;
pub mod hwm;
mod priority;
mod recovery;
pub mod retention;
mod tail;
#[cfg(test)]
mod tests;
pub mod wal;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::protocol::Reading;

pub use codec::SegmentMeta;
pub use commit::Commit;
pub(crate) use recovery::panic_message;
pub use recovery::{SeenAtStart, VERIFIED_AT_START};
pub use writer::{CommitListener, CommitOutcome, IngestBatch, WriteRequest, WriterHandle};

use durability::FileSync;
use hwm::HighWaterMark;

const NEXT_ID_KEY: &[u8] = b"m/next_id";
const BRIDGE_CURSOR_KEY: &[u8] = b"m/bridge_cursor";
/// Present once the store has a high-water-mark file ([`hwm`]).
const HWM_KEPT_KEY: &[u8] = b"m/hwm_kept";
/// Present once the store has a write-ahead log file ([`wal`]).
const WAL_KEPT_KEY: &[u8] = b"m/wal_kept";
/// The store's format ([`FORMAT`]), written at the first start of a build
/// that knows it.
const FORMAT_KEY: &[u8] = b"m/format";
/// The store format this build writes and the newest it reads: the compact
/// segments of 2026-12-06, the write-ahead log and the high-water mark. A
/// build that changes what it writes so that this one could not read it
/// raises this, and this build then refuses such a store by its format
/// ([`StoreError::NewerFormat`]) instead of calling it damaged. Stores
/// written before the marker existed have no key, and are of this format.
/// The check runs when sled opens, after the start has read the
/// write-ahead log's and the high-water mark's files: a build that changes
/// those files' headers is refused by them first (as damage), so it
/// should keep them readable here.
pub const FORMAT: u64 = 1;
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
    /// The store was written by a newer sensorgate, in a format this build
    /// cannot read. Nothing is changed; `--accept-data-loss` does not
    /// apply (the data is not damaged).
    #[error("storage.path {path}: the store is in format {format}, written by a newer sensorgate; this build reads formats up to {FORMAT}. Run the newer build, or restore a backup taken before the upgrade; nothing was changed")]
    NewerFormat { path: PathBuf, format: u64 },
    /// The store was closed after a failure and is not reopened yet.
    #[error("the store is closed after a failure and not reopened yet")]
    Closed,
}

impl StoreError {
    /// True for a store refused at start-up as damaged, rolled back or
    /// written by a newer build: an operator has to look before it is
    /// served again.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            StoreError::Unreadable { .. }
                | StoreError::BehindHighWaterMark { .. }
                | StoreError::MarkMissing { .. }
                | StoreError::LogMissing { .. }
                | StoreError::NewerFormat { .. }
                | StoreError::Log(wal::WalError::Damaged { .. })
                | StoreError::HighWaterMark(hwm::HwmError::Damaged { .. })
        )
    }

    /// True when a read found the store's files damaged: a page sled cannot
    /// read (bad checksum) or a stored entry that does not decode.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Sled(sled::Error::Corruption { .. }) | StoreError::Corrupt { .. }
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
    /// it as the seam between replay and live delivery. Moves only with
    /// `tail` locked, so a reader's [`tail::View`] is consistent.
    last_durable_id: AtomicU64,
    /// Durable readings not yet applied to sled.
    tail: Mutex<tail::Tail>,
    /// Bytes of segment payloads currently retained; retention compares this
    /// with `storage.max_bytes`.
    retained_bytes: AtomicU64,
    /// Why the store refuses writes right now (`None`: it accepts them).
    refusal: Mutex<Option<String>>,
    /// Set when a sled closed after a failure could not be dropped.
    wedged: Arc<std::sync::atomic::AtomicBool>,
    /// The thread closing a failed sled ([`Store::close`]). Its flushes
    /// hold sled 0.34's process-wide lock (every sled in the process shares
    /// it) while they wait, so a sled opened meanwhile could hang on its
    /// first write: no reopen until that thread has ended.
    closing: Mutex<Option<std::thread::JoinHandle<()>>>,
    restart_in_place: bool,
    /// When the flush in progress started (ms since `epoch`, 0 = none): see
    /// [`fault::poke_stuck_flushes`].
    flush_started_ms: AtomicU64,
    epoch: Instant,
    /// The writer's applier thread runs idle while nobody waits for it;
    /// every handle on sled from [`Store::db`] counts as waiting.
    applier_priority: Arc<priority::Priority>,
}

/// A handle on sled from [`Store::db`], counted as waiting for the applier
/// while it lives.
struct SledRef {
    db: sled::Db,
    _waiting: priority::Waiting,
}

impl std::ops::Deref for SledRef {
    type Target = sled::Db;

    fn deref(&self) -> &sled::Db {
        &self.db
    }
}

impl Store {
    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on sled for the caller's own reads and writes, or
    /// [`StoreError::Closed`] while it is being reopened. While it is held
    /// the applier runs at normal priority: an apply holds sled's global
    /// lock, which every sled call may wait for ([`priority`]).
    fn db(&self) -> Result<SledRef, StoreError> {
        let waiting = self.applier_priority.waiting();
        Ok(SledRef {
            db: self.sled()?,
            _waiting: waiting,
        })
    }

    /// A bare handle on sled, to hand to the applier or to a thread that
    /// keeps it: not counted as waiting for the applier.
    fn sled(&self) -> Result<sled::Db, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Shared with the writer's applier, which adopts it for its thread.
    fn applier_priority(&self) -> Arc<priority::Priority> {
        self.applier_priority.clone()
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
        // The tail first: read the other way round, an apply in between
        // could move its readings into sled after sled was found empty.
        let tail_first = self.lock_tail().first_id();
        match self.db()?.scan_prefix(INDEX_PREFIX).next() {
            Some(entry) => {
                let (k, _) = entry?;
                Ok(Some(codec::id_from_key(&k)?))
            }
            None => Ok(tail_first),
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
        let view = self.view();
        let mut page = Page {
            items: Vec::new(),
            scanned_to: since,
            reached_end: false,
        };
        if limit == 0 {
            return Ok(page);
        }
        // sled up to what it holds, then the tail: readings applied but not
        // yet durable (interval mode) are not handed out, since every id a
        // client sees must survive a crash.
        let in_sled = view.upper.min(view.applied);
        let (mut segments, mut decoded) = (0usize, 0usize);
        let db = self.db()?;
        // The id the scan should meet next: a segment starting above it
        // asks the index whether anything should have been in between. It
        // starts at the segment the index says holds `since + 1`, since
        // the scan starts at the last segment sled holds at or below it.
        let mut next_id = indexed_holding(&db, since.saturating_add(1))?;
        'sled: for entry in db.range(first_segment_from(&db, since)?..segment_end()) {
            if segments >= bound.segments || decoded >= bound.readings || cancelled() {
                return Ok(page);
            }
            let (k, v) = entry?;
            segments += 1;
            let first = codec::id_from_key(&k)?;
            if first > next_id {
                none_indexed(&db, next_id..first)?;
            }
            let readings = codec::decode_segment(&k, &v)?;
            decoded += readings.len();
            if let Some(last) = readings.last() {
                next_id = next_id.max(last.id.saturating_add(1));
            }
            for r in readings {
                if r.id > in_sled {
                    break 'sled;
                }
                if page.offer(r, since, limit, &mut keep) {
                    return Ok(page);
                }
            }
        }
        if next_id <= in_sled {
            none_indexed(&db, next_id..in_sled + 1)?;
        }
        let tail = view.commits.iter().flat_map(|c| c.iter());
        for r in tail.filter(|r| r.id > in_sled && r.id <= view.upper) {
            if page.offer(r.clone(), since, limit, &mut keep) {
                return Ok(page);
            }
        }
        page.reached_end = true;
        page.scanned_to = page.scanned_to.max(view.upper);
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
        self.sync_files(&*self.db()?)
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
    /// the write-ahead log start again (both halves). Only the writer calls
    /// this, with nothing being applied or checkpointed meanwhile.
    fn checkpoint(&self, db: &sled::Db, last_id: u64) -> Result<(), StoreError> {
        self.sled_checkpoint(db, last_id)?;
        self.lock_wal().reset()?;
        Ok(())
    }

    /// A checkpoint's work on sled: every commit applied to `db` so far,
    /// `last_id` among them, becomes durable in sled's files, and the
    /// high-water mark records at least `last_id`. The log is left alone:
    /// the applier runs this while the writer logs to the other half.
    fn sled_checkpoint(&self, db: &sled::Db, last_id: u64) -> Result<(), StoreError> {
        self.sync_files(db)?;
        let raised = self
            .hwm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .raise(last_id)?;
        // Synced outside the lock: the writer notes every commit there.
        raised.sync()?;
        Ok(())
    }

    /// A checkpoint of everything logged so far has started: commits go to
    /// the log's other half, which must be free ([`wal::Wal::switch`]).
    fn switch_log(&self) -> Result<(), StoreError> {
        Ok(self.lock_wal().switch()?)
    }

    /// Writes one applied commit to the write-ahead log (not yet synced).
    /// False when it does not fit: then only a checkpoint makes it durable.
    fn log_commit(
        &self,
        first_id: u64,
        next_id: u64,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<bool, StoreError> {
        let mut wal = self.lock_wal();
        Ok(wal.append(first_id, next_id, entries)?)
    }

    /// Makes every commit logged so far durable: the log's `fdatasync`.
    /// Returns the bytes of the log's current half in use, for the writer
    /// to decide when a checkpoint is due.
    fn sync_log(&self) -> Result<u64, StoreError> {
        let mut wal = self.lock_wal();
        wal.sync()?;
        Ok(wal.used())
    }

    /// Bytes of the log's current half in use.
    fn log_used(&self) -> u64 {
        self.lock_wal().used()
    }

    /// After [`Store::sync_log`] made commits up to `last_id` durable: the
    /// mark file notes it (written, not synced; see [`HighWaterMark::note`]).
    fn note_durable(&self, last_id: u64) -> Result<(), StoreError> {
        let mut hwm = self.hwm.lock().unwrap_or_else(|e| e.into_inner());
        Ok(hwm.note(last_id)?)
    }

    fn mark_durable(&self, last_id: u64) {
        let _tail = self.lock_tail();
        self.last_durable_id.fetch_max(last_id, Ordering::AcqRel);
    }

    /// A commit became durable: visible to readers (through the tail until
    /// sled holds it) from now on.
    fn publish(&self, readings: &Arc<Commit>) {
        let Some(last) = readings.last() else { return };
        let mut tail = self.lock_tail();
        tail.publish(readings);
        self.last_durable_id.fetch_max(last.id, Ordering::AcqRel);
    }

    /// The writer applied every commit up to `id` to sled.
    fn applied_through(&self, id: u64) {
        self.lock_tail().applied_through(id);
    }

    fn view(&self) -> tail::View {
        let tail = self.lock_tail();
        tail.view(self.last_id())
    }

    fn lock_wal(&self) -> std::sync::MutexGuard<'_, wal::Wal> {
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, tail::Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
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

impl Page {
    /// Takes `r` if it is past `since` and `keep`s it; true once `limit`
    /// items are in.
    fn offer(
        &mut self,
        r: Reading,
        since: u64,
        limit: usize,
        keep: &mut impl FnMut(&Reading) -> bool,
    ) -> bool {
        if r.id <= since {
            return false;
        }
        self.scanned_to = r.id;
        if keep(&r) {
            self.items.push(r);
        }
        self.items.len() >= limit
    }
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

/// Fails when the index lists a segment starting in `ids` that a scan did
/// not meet. Retention removes a segment and its index entry together, and
/// ids skipped by `--accept-data-loss` were never indexed, so such an entry
/// means damage: sled has been seen to lose a damaged page's keys silently
/// (they read as absent), and this turns that into an error.
fn none_indexed(db: &sled::Db, ids: std::ops::Range<u64>) -> Result<(), StoreError> {
    match db.range(index_key(ids.start)..index_key(ids.end)).next() {
        None => Ok(()),
        Some(entry) => Err(missing_segment(codec::id_from_key(&entry?.0)?)),
    }
}

/// The first id of the segment the index says holds `id`, or `id` itself
/// when none does (pruned, not yet written, or skipped over the mark).
fn indexed_holding(db: &sled::Db, id: u64) -> Result<u64, StoreError> {
    match db.range(index_key(0)..=index_key(id)).next_back() {
        Some(entry) => {
            let (k, v) = entry?;
            let meta = SegmentMeta::decode(&k, &v)?;
            Ok(if meta.last_id >= id {
                meta.first_id
            } else {
                id
            })
        }
        None => Ok(id),
    }
}

/// A segment the index lists and sled does not hold.
fn missing_segment(first_id: u64) -> StoreError {
    StoreError::Corrupt {
        key: format!("segment {first_id}"),
        detail: "indexed but missing from the store".into(),
    }
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
