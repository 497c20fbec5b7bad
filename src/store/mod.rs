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

mod codec;
pub mod retention;
pub mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::Reading;

pub use codec::SegmentMeta;
pub use writer::{CommitListener, CommitOutcome, IngestBatch, WriteRequest, WriterHandle};

const NEXT_ID_KEY: &[u8] = b"m/next_id";
const BRIDGE_CURSOR_KEY: &[u8] = b"m/bridge_cursor";
const SEQ_PREFIX: &[u8] = b"q/";
const SEGMENT_PREFIX: &[u8] = b"s/";
const INDEX_PREFIX: &[u8] = b"i/";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt store entry {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// The opened store. Cheap to share (`Arc<Store>`); sled is internally
/// synchronised, and only the writer thread mutates readings and seqs.
pub struct Store {
    db: sled::Db,
    /// Newest id that is durable and visible (0 when none yet). Fan-out uses
    /// it as the seam between replay and live delivery.
    last_durable_id: AtomicU64,
    /// Bytes of segment payloads currently retained; retention compares this
    /// with `storage.max_bytes`.
    retained_bytes: AtomicU64,
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

impl Store {
    /// Opens (or creates) the store at `path` and recovers its counters.
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        let db = open_sled(path)?;
        let next_id = match db.get(NEXT_ID_KEY)? {
            Some(v) => codec::decode_u64(NEXT_ID_KEY, &v)?,
            None => 1,
        };
        let mut bytes = 0u64;
        for entry in db.scan_prefix(INDEX_PREFIX) {
            let (k, v) = entry?;
            bytes += SegmentMeta::decode(&k, &v)?.bytes;
        }
        Ok(Arc::new(Store {
            db,
            last_durable_id: AtomicU64::new(next_id - 1),
            retained_bytes: AtomicU64::new(bytes),
        }))
    }

    /// Highest stored batch seq of `device`, `None` when the device never sent
    /// a batch with `seq`.
    pub fn last_seq(&self, device: &str) -> Result<Option<u64>, StoreError> {
        let key = seq_key(device);
        self.db
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
        match self.db.scan_prefix(INDEX_PREFIX).next() {
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
        for entry in self
            .db
            .range(self.first_segment_from(since)?..segment_end())
        {
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

    /// The key of the segment holding `since + 1`: the last one whose first
    /// id is not greater than it.
    fn first_segment_from(&self, since: u64) -> Result<sled::IVec, StoreError> {
        let first_wanted = since.saturating_add(1);
        Ok(
            match self
                .db
                .range(segment_key(0)..=segment_key(first_wanted))
                .next_back()
            {
                Some(entry) => entry?.0,
                None => sled::IVec::from(&segment_key(0)[..]),
            },
        )
    }

    /// The MQTT bridge's outbox cursor: every reading with a greater id is
    /// still to be published. `None` before the bridge first ran.
    pub fn bridge_cursor(&self) -> Result<Option<u64>, StoreError> {
        self.db
            .get(BRIDGE_CURSOR_KEY)?
            .map(|v| codec::decode_u64(BRIDGE_CURSOR_KEY, &v))
            .transpose()
    }

    /// Records the bridge's cursor. Not flushed here: durability comes with
    /// the next group commit or [`Store::flush`]. Blocking (sled).
    pub fn set_bridge_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.db
            .insert(BRIDGE_CURSOR_KEY, &cursor.to_be_bytes()[..])?;
        Ok(())
    }

    /// Forces everything applied so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn mark_durable(&self, last_id: u64) {
        self.last_durable_id.fetch_max(last_id, Ordering::AcqRel);
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
