//! The group-commit writer: the one place where readings become durable.
//!
//! Connections hand validated batches to a bounded queue ([`WriterHandle`]).
//! A dedicated thread takes everything waiting (up to [`MAX_BATCHES_PER_COMMIT`]),
//! checks each seq against the authoritative per-device `last_seq`, assigns
//! ids, and writes the whole group as one atomic sled batch followed by one
//! flush. Only then are the readings handed to the [`CommitListener`]s
//! (fan-out, bridge, device book) and the acks released: nobody ever sees an
//! id that a crash could take back. While one group is being flushed, the
//! next one gathers in the queue, which is what makes the commits grow
//! under load.
//!
//! Durable means power-loss safe. A group's sled entries are written to the
//! write-ahead log ([`super::wal`]), and its durable point is that log's
//! `fdatasync`: one write and one sync per commit. The same entries reach
//! sled later, many commits in one `apply_batch` (each apply costs sled the
//! same writes however small it is): once enough readings are staged
//! ([`APPLY_AT_READINGS`]), and at every checkpoint, on a thread of their own
//! ([`apply`]) so commits do not wait for them. Until then readers find
//! durable readings in the store's tail ([`super::tail`]). Checkpoints make
//! sled itself durable (sled's flush, `fdatasync`/`fsync` of its files and
//! directories, the high-water mark: [`Store::checkpoint`]) every
//! [`CHECKPOINT_EVERY`] while commits arrive, when the log is half full, and
//! for a group too large for what is left of the log. A group whose batches
//! were all duplicates or probes writes nothing and costs no sync.
//!
//! Faults: before writing, the writer checks the free space of the store's
//! filesystem against `storage.min_free` and refuses the group's batches
//! (`Failed`, which devices see as `overloaded` with `retry_after_ms`) rather
//! than let sled run into a full disk. If sled or a sync fails anyway, sled is
//! closed, nothing of the group is acknowledged, and the writer reopens the
//! store once space is back. Either way `/readyz` reports the refusal
//! ([`Store::refusal`]) and the writer retries on its own every
//! [`RECOVERY_EVERY`].
//!
//! Why a thread and not a task: sled calls block (the flush is an fsync);
//! a dedicated thread keeps them off the async workers without paying a
//! `spawn_blocking` hand-off per commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

mod apply;
mod durable;
mod fault;

use super::commit::{Commit, Pool};
use super::{codec, index_key, segment_key, seq_key, SegmentMeta, Store, StoreError, NEXT_ID_KEY};
use crate::config::{StorageConfig, SyncMode};
use crate::protocol::{Reading, ReadingIn};
use fault::{fail_stored, Fault};

/// Upper bound on queued batches taken into one commit, so one commit's
/// memory and latency stay bounded however deep the queue is.
pub const MAX_BATCHES_PER_COMMIT: usize = 2048;
/// How long a writer that found the queue empty lets a small group gather
/// after its first batch was queued ([`GATHER_BELOW`] says which; counted
/// from the queueing, not from the writer's wake: [`gather_rest`]). Batches
/// come in bursts (many connections' frames read and decoded one after
/// another by the runtime's workers): without the pause the first batch of
/// a burst is committed alone and the rest wait a whole sync behind it. At
/// 1,000 devices × 1 batch of 10/s and 100 × 100 single readings/s it took
/// commits from ~1.3 and ~6.8 batches to ~1.7 and ~9.4 for 6–9 % less CPU,
/// the median latency +0.15 ms at most and the p99 within the runs' noise
/// (BENCHMARKS.md, "Goal 2's tail, stage by stage"). A writer that finds
/// batches queued (it is behind) never pauses. `std::thread::sleep`
/// overshoots by the timer slack (~50 µs).
const GATHER_PAUSE: Duration = Duration::from_micros(100);
/// The pause is taken only while the group holds fewer readings than this
/// (and some: probes and welcomes alone cost no sync). A group of bigger
/// batches already spreads its sync over many readings: at 50 × 2,000
/// readings/s in batches of 50 the pause saved 2–8 % CPU but cost 0.1–0.2
/// ms of median latency.
const GATHER_BELOW: usize = 32;
/// Devices whose `last_seq` the writer keeps in memory. Past this the cache
/// is simply cleared: every seq it held is already applied to sled and is
/// read back on the next miss, so memory stays bounded for any fleet size.
const SEQ_CACHE_MAX: usize = 200_000;
/// Readings staged for sled before they are applied in one `apply_batch`,
/// at low rates. Every apply costs sled a fixed amount besides its
/// readings (it seals and writes an I/O buffer, which the patched sled
/// syncs), so at high rates applies are spaced instead: once this many are
/// staged, an apply waits until [`APPLY_SPACING`] has passed since the
/// previous one, or until [`APPLY_MAX_READINGS`] are staged. At the fleet
/// shape (10,000 readings/s) that is an apply of 1,024 every ~100 ms, as
/// before; at goal 3's 100,000 readings/s one of ~4,000 every 40 ms, which
/// saved 8 % of the daemon's CPU (BENCHMARKS.md, "Fewer wake-ups and
/// bigger applies").
/// Why not always bigger: each apply is a burst of sled I/O that the log's
/// next sync may wait behind, and at low rates there is no CPU to save.
pub const APPLY_AT_READINGS: usize = 1024;
/// Least time between two applies of fewer than [`APPLY_MAX_READINGS`].
pub const APPLY_SPACING: Duration = Duration::from_millis(40);
/// Readings staged that force an apply whatever the spacing: bounds the
/// staged entries (this, plus the one group that crossed it) and the
/// store's tail (three times that: staged, queued for the applier, being
/// applied) to a few MiB.
pub const APPLY_MAX_READINGS: usize = 4096;
/// How often a refusing writer checks whether it can write again.
pub const RECOVERY_EVERY: Duration = Duration::from_secs(1);
/// Longest time commits stay durable in the write-ahead log alone before a
/// checkpoint puts them in sled's durable files: bounds what a restart
/// replays and how long the bridge cursor (flushed with sled) lags.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A checkpoint is also started once this much of the log's current half is
/// in use, so a commit rarely finds the half full.
const CHECKPOINT_AT_LOG_BYTES: u64 = super::wal::HALF_SIZE / 2;
/// How long a writer with nothing due waits for a request before it counts
/// as idle and lets its pool of commit buffers go ([`Pool::clear`]). Not at
/// once: nothing is due right after every checkpoint starts too, which at
/// the flood is about ten times a second, and clearing there threw away a
/// busy writer's pool (116 times in a 12 s flood).
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How often a writer with nothing else to do looks whether a running
/// checkpoint has returned, when the next one is due already.
const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

/// A validated batch on its way to storage.
pub struct IngestBatch {
    pub device: Arc<str>,
    pub seq: Option<u64>,
    /// Empty for a duplicate probe: a resent seq whose readings are known to
    /// be stored or in flight; the writer answers it in order with the rest.
    pub readings: Vec<ReadingIn>,
    /// Server clock (Unix ms) when the batch was accepted.
    pub received: i64,
    /// When the batch was handed to the writer's queue: the writer's
    /// gathering pause ([`GATHER_PAUSE`]) counts from here.
    pub queued: Instant,
    /// Where the outcome goes; `None` for fire-and-forget batches.
    pub reply: Option<oneshot::Sender<CommitOutcome>>,
}

/// What the writer is asked to do. Everything goes through the one queue, so
/// answers come back in the order requests were made.
pub enum WriteRequest {
    Batch(IngestBatch),
    /// A device's `last_seq` for its welcome, answered only once everything
    /// queued before it is durable: the welcome is a promise too.
    LastSeq {
        device: Arc<str>,
        reply: oneshot::Sender<CommitOutcome>,
    },
    /// The systemd watchdog's liveness probe: answered as soon as the
    /// writer thread takes it from the queue.
    Ping {
        reply: oneshot::Sender<()>,
    },
}

impl WriteRequest {
    /// Readings this request would store.
    fn readings(&self) -> usize {
        match self {
            WriteRequest::Batch(b) => b.readings.len(),
            _ => 0,
        }
    }
}

/// What happened to a batch, sent once it is decided (for stored batches:
/// once durable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored and durable; the ids assigned.
    Stored { first_id: u64, last_id: u64 },
    /// `seq <= last_seq`: nothing stored again.
    Duplicate,
    /// `seq > last_seq + 1`.
    OutOfOrder { expected: u64 },
    /// The store failed; nothing of the batch is acknowledged.
    Failed,
    /// Answer to [`WriteRequest::LastSeq`].
    LastSeq(Option<u64>),
}

/// Receives every durable commit. Called on the writer thread, outside any
/// runtime context, before the commit's acks go out: return quickly (set a
/// flag, take a short lock, or hand the readings to a bounded queue, waiting
/// for room only when its consumer has fallen behind, as the fan-out's
/// router does).
pub trait CommitListener: Send + Sync {
    fn on_commit(&self, readings: &Arc<Commit>);
}

/// The sending side of the ingest queue.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteRequest>,
}

impl WriterHandle {
    pub fn sender(&self) -> &mpsc::Sender<WriteRequest> {
        &self.tx
    }
}

/// Starts the writer thread. It ends when every [`WriterHandle`] is dropped
/// and the queue is drained, after a final flush; join the returned handle
/// to know everything accepted is durable.
pub fn spawn(
    store: Arc<Store>,
    storage: &StorageConfig,
    queue_capacity: usize,
    listeners: Vec<Arc<dyn CommitListener>>,
) -> (WriterHandle, std::thread::JoinHandle<()>) {
    spawn_checkpointing_every(store, storage, queue_capacity, listeners, CHECKPOINT_EVERY)
}

/// [`spawn`] with another period for checkpoints, so a test can tell what
/// an apply did from what a checkpoint did.
pub(super) fn spawn_checkpointing_every(
    store: Arc<Store>,
    storage: &StorageConfig,
    queue_capacity: usize,
    listeners: Vec<Arc<dyn CommitListener>>,
    checkpoint_every: Duration,
) -> (WriterHandle, std::thread::JoinHandle<()>) {
    // The ingest queue: bounded by `ingest.queue_capacity` batches so a burst
    // beyond what the disk absorbs pushes back on the connections instead of
    // growing memory.
    let (tx, rx) = mpsc::channel(queue_capacity);
    let next_id = store.last_id() + 1;
    let space = super::durability::SpaceProbe::open(store.path());
    let writer = Writer {
        applier: apply::Applier::spawn(store.clone(), store.applier_priority()),
        space,
        store,
        sync: storage.sync,
        flush_interval: storage.flush_interval,
        min_free: storage.min_free,
        listeners,
        pool: Arc::default(),
        next_id,
        durable_next_id: next_id,
        seqs: HashMap::new(),
        pending: Vec::new(),
        staged: sled::Batch::default(),
        staged_readings: 0,
        staged_bytes: 0,
        staged_through: 0,
        dirty: false,
        fault: None,
        last_flush: Instant::now(),
        last_recovery: Instant::now(),
        last_checkpoint: Instant::now(),
        last_submit: None,
        checkpoint_started: None,
        checkpoint_every,
        since_checkpoint: false,
        unlogged: false,
    };
    let join = std::thread::Builder::new()
        .name("sensorgate-writer".into())
        .spawn(move || writer.run(rx))
        .expect("spawning the writer thread");
    (WriterHandle { tx }, join)
}

struct Writer {
    store: Arc<Store>,
    /// Applies staged commits to sled on its own thread.
    applier: apply::Applier,
    sync: SyncMode,
    flush_interval: Duration,
    min_free: u64,
    /// The store's directory, open to ask for its free space every commit.
    space: super::durability::SpaceProbe,
    listeners: Vec<Arc<dyn CommitListener>>,
    /// Buffers of commits all their holders have dropped, for the next ones.
    pool: Arc<Pool>,
    /// Authoritative `last_seq` per device, loaded lazily from the store. The
    /// writer is the only one that changes seqs, so the cache cannot go stale;
    /// it is cleared whenever a write fails, so it never holds a seq that is
    /// not in the store.
    seqs: HashMap<Arc<str>, Option<u64>>,
    /// The next id to hand out. Advanced when a commit is applied.
    next_id: u64,
    /// `next_id` as of the last durable point: where ids restart when
    /// commits applied since then are failed.
    durable_next_id: u64,
    /// Interval mode: commits written but not yet flushed.
    pending: Vec<Applied>,
    /// Entries of logged commits not yet applied to sled.
    staged: sled::Batch,
    /// Readings in `staged`.
    staged_readings: usize,
    /// Bytes of keys and values in `staged`.
    staged_bytes: u64,
    /// The newest id in `staged`.
    staged_through: u64,
    /// Something was written since the last durable point.
    dirty: bool,
    fault: Option<Fault>,
    last_flush: Instant,
    last_recovery: Instant,
    last_checkpoint: Instant,
    /// When staged entries last went to the applier (`None`: not yet).
    last_submit: Option<Instant>,
    /// The last id of the checkpoint started at the last switch of the
    /// log's halves (it covers the other half): running until the applier
    /// reports it ([`Writer::checkpoint_running`]).
    checkpoint_started: Option<u64>,
    /// [`CHECKPOINT_EVERY`], but for tests.
    checkpoint_every: Duration,
    /// Something was made durable through the log since the last checkpoint.
    since_checkpoint: bool,
    /// A group did not fit in the log: only a checkpoint makes it durable,
    /// and nothing more is logged until then (the log's chain must not skip it).
    unlogged: bool,
}

/// The next group's requests, into `buf`: what is queued already, or else
/// what arrives within `wait` (`None`: however long it takes), then what
/// else comes during [`GATHER_PAUSE`] if that is a small group. `None` when
/// `wait` ran out first; `Some(0)` once every sender is gone and the queue
/// is empty.
fn receive(
    rx: &mut mpsc::Receiver<WriteRequest>,
    buf: &mut Vec<WriteRequest>,
    waker: &Waker,
    wait: Option<Duration>,
) -> Option<usize> {
    let queued = take_queued(rx, buf);
    if queued > 0 {
        return Some(queued); // behind: commit at once
    }
    let arrived = wait_for_requests(rx, buf, waker, wait)?;
    let readings: usize = buf.iter().map(WriteRequest::readings).sum();
    if !(1..GATHER_BELOW).contains(&readings) {
        return Some(arrived);
    }
    let Some(rest) = gather_rest(buf) else {
        return Some(arrived);
    };
    std::thread::sleep(rest);
    Some(arrived + take_queued(rx, buf))
}

/// Waits on the writer's own thread for the queue's next requests, for at
/// most `wait`: `None` when it ran out, `Some(0)` once every sender is gone.
///
/// Why not `block_on(timeout(..))` on the runtime: its timer is the
/// runtime's, and registering one earlier than every other timer wakes the
/// runtime's I/O driver to re-arm its sleep. At the fleet shape that was
/// one worker woken for nothing on about half of the commits (a `perf
/// record` of the writer's `write`s: 856 of its 1,244 eventfd writes in
/// 3 s). Parking this thread with a timeout involves nobody else; `waker`
/// unparks it ([`ThreadWaker`]).
fn wait_for_requests(
    rx: &mut mpsc::Receiver<WriteRequest>,
    buf: &mut Vec<WriteRequest>,
    waker: &Waker,
    wait: Option<Duration>,
) -> Option<usize> {
    // A wait too long to add to the clock is no deadline at all.
    let deadline = wait.and_then(|d| Instant::now().checked_add(d));
    let mut cx = Context::from_waker(waker);
    loop {
        if let Poll::Ready(n) = rx.poll_recv_many(&mut cx, buf, MAX_BATCHES_PER_COMMIT) {
            return Some(n);
        }
        // A park may end early (an unpark meant for an earlier poll, or
        // none at all): polling again is always right.
        match deadline {
            None => std::thread::park(),
            Some(deadline) => {
                let left = deadline.checked_duration_since(Instant::now())?;
                std::thread::park_timeout(left);
            }
        }
    }
}

/// Wakes the writer thread parked in [`wait_for_requests`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl ThreadWaker {
    /// A waker for the calling thread, which must be the one that waits
    /// with it: the waker unparks the thread that made it.
    fn current() -> Waker {
        Waker::from(Arc::new(ThreadWaker(std::thread::current())))
    }
}

/// What is left of the gathering pause for the group in `buf`: the pause
/// counts from when its first batch was queued, not from when the writer
/// woke up to it. A writer that was slow to wake (the two cores busy) has
/// let the burst gather already, and pausing again would only add to the
/// latency of batches that have waited longest. `None`: no pause.
fn gather_rest(buf: &[WriteRequest]) -> Option<Duration> {
    let first = buf.iter().find_map(|r| match r {
        WriteRequest::Batch(b) => Some(b.queued),
        _ => None,
    })?;
    GATHER_PAUSE
        .checked_sub(first.elapsed())
        .filter(|rest| *rest >= GATHER_PAUSE / 4)
}

/// [`receive`] for a writer whose next wake is `wait`. With nothing due,
/// a writer that then gets nothing for `idle_after` is idle: `on_idle` runs
/// once, and the writer waits as long as it takes.
fn receive_or_idle(
    rx: &mut mpsc::Receiver<WriteRequest>,
    buf: &mut Vec<WriteRequest>,
    waker: &Waker,
    wait: Option<Duration>,
    idle_after: Duration,
    on_idle: impl FnOnce(),
) -> Option<usize> {
    let received = receive(rx, buf, waker, wait.or(Some(idle_after)));
    if wait.is_some() || received.is_some() {
        return received;
    }
    on_idle();
    receive(rx, buf, waker, None)
}

/// Moves what is in the queue now into `buf`, up to
/// [`MAX_BATCHES_PER_COMMIT`] in all, without waiting; returns how many.
fn take_queued(rx: &mut mpsc::Receiver<WriteRequest>, buf: &mut Vec<WriteRequest>) -> usize {
    let before = buf.len();
    while buf.len() < MAX_BATCHES_PER_COMMIT {
        match rx.try_recv() {
            Ok(request) => buf.push(request),
            Err(_) => break, // empty, or every sender gone (the wait says 0)
        }
    }
    buf.len() - before
}

/// A commit written (logged and staged), waiting for its flush before being
/// announced.
struct Applied {
    replies: Vec<(oneshot::Sender<CommitOutcome>, CommitOutcome)>,
    readings: Vec<Reading>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>) {
        let mut buf = Vec::with_capacity(MAX_BATCHES_PER_COMMIT);
        let waker = ThreadWaker::current();
        loop {
            let wait = self.next_wake();
            // An idle writer keeps no buffers of a busy one.
            let received = receive_or_idle(&mut rx, &mut buf, &waker, wait, IDLE_AFTER, || {
                self.pool.clear()
            });
            if received == Some(0) {
                break; // every sender gone and queue drained
            }
            if self.fault.is_none() {
                if let Some(e) = self.applier.take_error() {
                    self.fail(format!("writing to the store failed: {e}"));
                }
            }
            if self.fault.is_some() && self.last_recovery.elapsed() >= RECOVERY_EVERY {
                self.try_recover();
            }
            match received {
                Some(0) => unreachable!("handled above"),
                Some(batches) => {
                    let started = Instant::now();
                    // At most this many readings are stored: sized once,
                    // the group's readings are never moved while it grows.
                    let most: usize = buf.iter().map(WriteRequest::readings).sum();
                    let applied = self.apply(buf.drain(..), most);
                    let took = started.elapsed();
                    crate::events::GroupCommitted { batches, took }.emit();
                    match self.sync {
                        SyncMode::Batch => self.flush_and_release(vec![applied]),
                        SyncMode::Interval => self.pending.push(applied),
                    }
                }
                None => {} // a flush, checkpoint or recovery attempt is due
            }
            if self.sync == SyncMode::Interval && self.time_until_flush() == Some(Duration::ZERO) {
                let pending = std::mem::take(&mut self.pending);
                self.flush_and_release(pending);
            }
            if self.pending.is_empty() && self.time_until_checkpoint() == Some(Duration::ZERO) {
                // Quiet for a while: sled's files catch up with the log.
                let _ = self.make_durable(true);
            }
        }
        let pending = std::mem::take(&mut self.pending);
        self.flush_and_release(pending);
        if self.fault.is_none() && (self.since_checkpoint || self.checkpoint_running()) {
            // A clean stop leaves sled's files and the mark complete: the
            // next start replays nothing.
            let _ = self.make_durable_in_sled();
        }
        tracing::debug!("writer drained and flushed");
    }

    /// How long the writer may wait for requests before it has work of its
    /// own: a due flush (interval mode), checkpoint or recovery attempt.
    fn next_wake(&self) -> Option<Duration> {
        let recovery = self
            .fault
            .map(|_| RECOVERY_EVERY.saturating_sub(self.last_recovery.elapsed()));
        // With commits waiting for their flush, the flush starts a due
        // checkpoint: waking for the checkpoint alone would find nothing to
        // do and spin until then.
        let checkpoint = match self.pending.is_empty() {
            true => self.time_until_checkpoint(),
            false => None,
        };
        [self.time_until_flush(), recovery, checkpoint]
            .into_iter()
            .flatten()
            .min()
    }

    /// Commits durable through the log alone (and sled healthy): how long
    /// until the checkpoint that puts them in sled's files is due. While the
    /// previous checkpoint runs, a due one waits for it, looked at every
    /// [`CHECKPOINT_POLL`].
    fn time_until_checkpoint(&self) -> Option<Duration> {
        (self.since_checkpoint && self.fault.is_none()).then(|| {
            let due = self
                .checkpoint_every
                .saturating_sub(self.last_checkpoint.elapsed());
            if self.checkpoint_running() {
                due.max(CHECKPOINT_POLL)
            } else {
                due
            }
        })
    }

    /// Interval mode with unflushed commits: how long until the next flush is due.
    fn time_until_flush(&self) -> Option<Duration> {
        if self.pending.is_empty() {
            return None;
        }
        Some(
            self.flush_interval
                .saturating_sub(self.last_flush.elapsed()),
        )
    }

    /// Decides every batch of a group and applies the stored ones as one
    /// atomic sled batch. Outcomes are held back until the flush.
    fn apply(&mut self, requests: impl Iterator<Item = WriteRequest>, most: usize) -> Applied {
        let mut replies = Vec::new();
        let mut readings = self.pool.take(most);
        let mut seq_updates: HashMap<Arc<str>, u64> = HashMap::new();
        // Each updated device's seq before this group, to restore if the
        // group is refused (not to forget: sled may not hold it yet).
        let mut prior_seqs: HashMap<Arc<str>, Option<u64>> = HashMap::new();
        if self.seqs.len() > SEQ_CACHE_MAX {
            // A cache miss reads sled: it must hold every seq staged so far.
            // (With the disk too full to apply, the cache is kept: only
            // lookups are answered until space is back.)
            match self.apply_staged() {
                Ok(true) => self.seqs.clear(),
                Ok(false) => {}
                Err(e) => self.fail(format!("writing to the store failed: {e}")),
            }
        }
        let mut next_id = self.next_id;
        let first_id = next_id;

        for request in requests {
            let batch = match request {
                WriteRequest::Batch(batch) => batch,
                WriteRequest::LastSeq { device, reply } => {
                    let outcome = match self.cached_last_seq(&device) {
                        Ok(last) => CommitOutcome::LastSeq(last),
                        Err(e) => {
                            tracing::error!(error = %e, device = %device, "reading last_seq failed");
                            CommitOutcome::Failed
                        }
                    };
                    replies.push((reply, outcome));
                    continue;
                }
                WriteRequest::Ping { reply } => {
                    let _ = reply.send(());
                    continue;
                }
            };
            let outcome = match self.check_seq(&batch) {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(error = %e, device = %batch.device, "reading last_seq failed");
                    Some(CommitOutcome::Failed)
                }
            };
            let outcome = outcome.unwrap_or_else(|| {
                let start = next_id;
                for r in batch.readings {
                    readings.push(Reading {
                        id: next_id,
                        device: batch.device.clone(),
                        sensor: r.sensor,
                        ts: r.ts,
                        value: r.value,
                        unit: r.unit,
                        received: batch.received,
                    });
                    next_id += 1;
                }
                if let Some(seq) = batch.seq {
                    let prior = self.seqs.insert(batch.device.clone(), Some(seq));
                    if let Some(prior) = prior {
                        prior_seqs.entry(batch.device.clone()).or_insert(prior);
                    }
                    seq_updates.insert(batch.device.clone(), seq);
                }
                CommitOutcome::Stored {
                    first_id: start,
                    last_id: next_id - 1,
                }
            });
            if let Some(reply) = batch.reply {
                replies.push((reply, outcome));
            }
        }

        // A group that stores nothing (duplicates, probes, welcomes) needs
        // no space and no sled write: it is answered even while refusing.
        let written = match self.fault {
            Some(fault) if !readings.is_empty() => Err(fault),
            _ => self.write(first_id, &readings, &seq_updates),
        };
        match written {
            Ok(()) => {
                self.next_id = next_id;
                self.dirty |= !readings.is_empty();
            }
            Err(fault) => {
                // Nothing of this group is stored: put back the seqs it
                // assumed (after a sled failure `fail` has cleared them all)
                // and fail every batch that would have been stored.
                if fault == Fault::DiskFull {
                    for (device, prior) in prior_seqs {
                        self.seqs.insert(device, prior);
                    }
                } else {
                    self.seqs.clear();
                }
                // A duplicate or welcome answered from a seq this group
                // assumed is as unfounded as its stores.
                let refused = fail_stored(&mut replies, true);
                if refused > 0 {
                    crate::events::StoreRefused {
                        reason: fault.label(),
                        batches: refused,
                    }
                    .emit();
                }
                readings.clear();
            }
        }
        Applied { replies, readings }
    }

    /// `Some(outcome)` when the batch must not be stored, `None` to store it.
    fn check_seq(&mut self, batch: &IngestBatch) -> Result<Option<CommitOutcome>, StoreError> {
        let Some(seq) = batch.seq else {
            return Ok(None);
        };
        let last = self.cached_last_seq(&batch.device)?;
        Ok(match last {
            Some(last) if seq <= last => Some(CommitOutcome::Duplicate),
            Some(last) if seq > last + 1 => Some(CommitOutcome::OutOfOrder { expected: last + 1 }),
            // A probe for a seq that is not stored: the device skipped ahead.
            _ if batch.readings.is_empty() => Some(CommitOutcome::OutOfOrder {
                expected: last.map_or(seq, |l| l + 1),
            }),
            _ => None,
        })
    }

    fn cached_last_seq(&mut self, device: &Arc<str>) -> Result<Option<u64>, StoreError> {
        if let Some(last) = self.seqs.get(device) {
            return Ok(*last);
        }
        let last = self.store.last_seq(device)?;
        self.seqs.insert(device.clone(), last);
        Ok(last)
    }

    /// Applies one group to sled, unless the disk is too full for it. On
    /// failure the writer is in the returned fault.
    fn write(
        &mut self,
        first_id: u64,
        readings: &[Reading],
        seq_updates: &HashMap<Arc<str>, u64>,
    ) -> Result<(), Fault> {
        if readings.is_empty() {
            return Ok(());
        }
        let segments = codec::encode_segments(readings);
        // Two entries per segment, one per device's seq, the next id.
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> =
            Vec::with_capacity(2 * segments.len() + seq_updates.len() + 1);
        let mut added_bytes = 0;
        for codec::EncodedSegment { range, bytes } in segments {
            let chunk = &readings[range];
            let meta = SegmentMeta {
                first_id: chunk[0].id,
                last_id: chunk[chunk.len() - 1].id,
                newest_received: chunk.iter().map(|r| r.received).max().unwrap_or(0),
                bytes: bytes.len() as u64,
            };
            added_bytes += meta.bytes;
            entries.push((segment_key(meta.first_id).to_vec(), bytes));
            entries.push((index_key(meta.first_id).to_vec(), meta.encode().to_vec()));
        }
        for (device, seq) in seq_updates {
            entries.push((seq_key(device), seq.to_be_bytes().to_vec()));
        }
        let next_id = first_id + readings.len() as u64;
        entries.push((NEXT_ID_KEY.to_vec(), next_id.to_be_bytes().to_vec()));
        // sled's log holds the group (and may need a new segment file
        // region) before old space is reclaimed: ask for twice its size.
        self.check_space(2 * (added_bytes + self.staged_bytes))?;
        match self.log_and_stage(first_id, next_id, readings.len(), entries) {
            Ok(true) => {}
            // `check_space` has put the writer in the fault.
            Ok(false) => return Err(Fault::DiskFull),
            Err(e) => {
                self.fail(format!("writing to the store failed: {e}"));
                return Err(Fault::StoreFailed);
            }
        }
        self.store
            .retained_bytes
            .fetch_add(added_bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes the given commits durable, then releases their outcomes and
    /// announces their readings, in commit order.
    fn flush_and_release(&mut self, commits: Vec<Applied>) {
        if commits.is_empty() {
            return;
        }
        let flushed = if self.dirty {
            self.make_durable(false)
        } else {
            Ok(())
        };
        for commit in commits {
            let mut replies = commit.replies;
            let mut readings = commit.readings;
            if flushed.is_err() {
                readings.clear();
                fail_stored(&mut replies, true);
            }
            if !readings.is_empty() {
                crate::events::ReadingsStored(readings.len()).emit();
                let readings = Arc::new(Commit::pooled(readings, &self.pool));
                self.store.publish(&readings);
                for l in &self.listeners {
                    l.on_commit(&readings);
                }
            }
            for (reply, outcome) in replies {
                // The connection may be gone; its device will resend.
                let _ = reply.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping() -> WriteRequest {
        WriteRequest::Ping {
            reply: oneshot::channel().0,
        }
    }

    /// What is queued is taken without waiting, never more than one
    /// commit's worth, and an empty queue gives nothing.
    #[test]
    fn take_queued_takes_what_is_waiting_up_to_one_commit() {
        let (tx, mut rx) = mpsc::channel(MAX_BATCHES_PER_COMMIT + 10);
        for _ in 0..MAX_BATCHES_PER_COMMIT + 5 {
            tx.try_send(ping()).unwrap();
        }
        let mut buf = Vec::new();
        assert_eq!(take_queued(&mut rx, &mut buf), MAX_BATCHES_PER_COMMIT);
        assert_eq!(buf.len(), MAX_BATCHES_PER_COMMIT);
        buf.clear();
        // A group already holding some takes only what tops it up.
        buf.push(ping());
        assert_eq!(take_queued(&mut rx, &mut buf), 5);
        assert_eq!(take_queued(&mut rx, &mut buf), 0);
        drop(tx);
        assert_eq!(take_queued(&mut rx, &mut buf), 0, "closed and empty");
        assert_eq!(buf.len(), 6);
    }

    fn batch_queued(queued: Instant) -> WriteRequest {
        WriteRequest::Batch(IngestBatch {
            device: Arc::from("d1"),
            seq: Some(1),
            readings: Vec::new(),
            received: 1,
            queued,
            reply: None,
        })
    }

    /// The pause counts from the group's first batch: whole for a batch
    /// just queued, none for one that waited through most of it already
    /// (the writer was slow to wake), and none for a group of no batches.
    #[test]
    fn the_gathering_pause_counts_from_the_first_batch_queued() {
        let now = Instant::now();
        // Queued "later" than now: nothing of the pause has passed.
        let fresh = batch_queued(now + Duration::from_secs(1));
        assert_eq!(gather_rest(&[ping(), fresh]), Some(GATHER_PAUSE));
        // Queued 80 µs before now: under the quarter (25 µs) is left.
        let waited = batch_queued(now - GATHER_PAUSE * 4 / 5);
        assert_eq!(gather_rest(&[waited]), None, "under a quarter left");
        let waited_long = batch_queued(now - Duration::from_secs(1));
        let fresh = batch_queued(now + Duration::from_secs(1));
        assert_eq!(gather_rest(&[waited_long, fresh]), None, "the first counts");
        assert_eq!(gather_rest(&[ping(), ping()]), None);
    }

    /// A wait too long for the clock (an absurd `storage.flush_interval`)
    /// waits for the next request rather than panicking.
    #[test]
    fn a_wait_past_the_clocks_end_waits_for_the_next_request() {
        let waker = ThreadWaker::current();
        let (tx, mut rx) = mpsc::channel(8);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.blocking_send(ping()).unwrap();
        });
        let mut buf = Vec::new();
        let got = wait_for_requests(&mut rx, &mut buf, &waker, Some(Duration::MAX));
        sender.join().unwrap();
        assert_eq!(got, Some(1));
    }

    /// Only a writer that has nothing due and then gets nothing for the
    /// idle time counts as idle: having nothing due alone (as right after
    /// every checkpoint starts) does not, nor does a deadline running out.
    #[test]
    fn a_writer_is_idle_only_after_waiting_with_nothing_due() {
        // No runtime: the writer waits on its own thread.
        let waker = ThreadWaker::current();
        let (tx, mut rx) = mpsc::channel(8);
        let mut buf = Vec::new();
        let idle_after = Duration::from_millis(300);
        let send_after = |delay: Duration| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                tx.blocking_send(ping()).unwrap();
            })
        };

        // Nothing due, a request well within the idle time: not idle.
        let sender = send_after(Duration::from_millis(20));
        let mut idle = 0;
        let got = receive_or_idle(&mut rx, &mut buf, &waker, None, idle_after, || idle += 1);
        sender.join().unwrap();
        assert_eq!((got, idle), (Some(1), 0));

        // Nothing due and nothing for longer: idle once, before the wait
        // that gets the request which comes at last.
        buf.clear();
        let idle_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let (tx, flag) = (tx.clone(), idle_flag.clone());
            std::thread::spawn(move || {
                std::thread::sleep(idle_after * 2);
                let idle_before = flag.load(std::sync::atomic::Ordering::SeqCst);
                tx.blocking_send(ping()).unwrap();
                idle_before
            })
        };
        let got = receive_or_idle(&mut rx, &mut buf, &waker, None, idle_after, || {
            idle += 1;
            idle_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(sender.join().unwrap(), "idle before the request came");
        assert_eq!((got, idle), (Some(1), 1));

        // A deadline that runs out is not idleness: the writer has work due.
        buf.clear();
        let due = Some(Duration::from_millis(10));
        let got = receive_or_idle(&mut rx, &mut buf, &waker, due, idle_after, || idle += 1);
        assert_eq!((got, idle), (None, 1));

        // Every sender gone, with nothing due: the end, not idleness.
        drop(tx);
        let got = receive_or_idle(&mut rx, &mut buf, &waker, None, idle_after, || idle += 1);
        assert_eq!((got, idle), (Some(0), 1));
    }
}
