//! The group-commit writer: the one place where readings become durable.
//!
//! Connections hand validated batches to a bounded queue ([`WriterHandle`]).
//! A dedicated thread takes everything waiting (up to [`MAX_BATCHES_PER_COMMIT`]),
//! checks each seq against the authoritative per-device `last_seq`, assigns
//! ids, and writes the whole group as one atomic sled batch followed by one
//! flush. Only then are the acks released and the readings handed to the
//! [`CommitListener`]s (fan-out, bridge): nobody ever sees an id that a crash
//! could take back. While one group is being flushed, the next one gathers in
//! the queue, which is what makes the commits grow under load.
//!
//! Why a thread and not a task: sled calls block (the flush is an fsync);
//! a dedicated thread keeps them off the async workers without paying a
//! `spawn_blocking` hand-off per commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{codec, index_key, segment_key, seq_key, SegmentMeta, Store, StoreError, NEXT_ID_KEY};
use crate::config::SyncMode;
use crate::protocol::{Reading, ReadingIn};

/// Upper bound on queued batches taken into one commit, so one commit's
/// memory and latency stay bounded however deep the queue is.
pub const MAX_BATCHES_PER_COMMIT: usize = 2048;
/// Readings per stored segment; larger commits are split.
const MAX_READINGS_PER_SEGMENT: usize = 8192;
/// Devices whose `last_seq` the writer keeps in memory. Past this the cache
/// is simply cleared: every seq it held is already applied to sled and is
/// read back on the next miss, so memory stays bounded for any fleet size.
const SEQ_CACHE_MAX: usize = 200_000;

/// A validated batch on its way to storage.
pub struct IngestBatch {
    pub device: Arc<str>,
    pub seq: Option<u64>,
    /// Empty for a duplicate probe: a resent seq whose readings are known to
    /// be stored or in flight; the writer answers it in order with the rest.
    pub readings: Vec<ReadingIn>,
    /// Server clock (Unix ms) when the batch was accepted.
    pub received: i64,
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

/// Receives every durable commit. Called on the writer thread: must not
/// block (hand the readings to a bounded queue or set a flag and return).
pub trait CommitListener: Send + Sync {
    fn on_commit(&self, readings: &Arc<[Reading]>);
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
    sync: SyncMode,
    flush_interval: Duration,
    queue_capacity: usize,
    listeners: Vec<Arc<dyn CommitListener>>,
) -> (WriterHandle, std::thread::JoinHandle<()>) {
    // The ingest queue: bounded by `ingest.queue_capacity` batches so a burst
    // beyond what the disk absorbs pushes back on the connections instead of
    // growing memory.
    let (tx, rx) = mpsc::channel(queue_capacity);
    let rt = tokio::runtime::Handle::current();
    let writer = Writer {
        store: store.clone(),
        sync,
        flush_interval,
        listeners,
        next_id: store.last_id() + 1,
        seqs: HashMap::new(),
        pending: Vec::new(),
        poisoned: false,
        last_flush: Instant::now(),
    };
    let join = std::thread::Builder::new()
        .name("sensorgate-writer".into())
        .spawn(move || writer.run(rx, rt))
        .expect("spawning the writer thread");
    (WriterHandle { tx }, join)
}

struct Writer {
    store: Arc<Store>,
    sync: SyncMode,
    flush_interval: Duration,
    listeners: Vec<Arc<dyn CommitListener>>,
    /// Authoritative `last_seq` per device, loaded lazily from the store. The
    /// writer is the only one that changes seqs, so the cache cannot go stale.
    seqs: HashMap<Arc<str>, Option<u64>>,
    /// The next id to hand out. Advanced only when a commit is applied, so a
    /// failed write never burns ids and an applied one never reuses them.
    next_id: u64,
    /// Interval mode: commits applied but not yet flushed.
    pending: Vec<Applied>,
    last_flush: Instant,
    /// Set after a failed flush. What sled holds is then unknown (the fsync
    /// lesson: a failed flush cannot be retried into success), so the writer
    /// refuses every later batch rather than acknowledge on a broken disk.
    poisoned: bool,
}

/// A commit applied to sled, waiting for its flush before being announced.
struct Applied {
    replies: Vec<(oneshot::Sender<CommitOutcome>, CommitOutcome)>,
    readings: Vec<Reading>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>, rt: tokio::runtime::Handle) {
        let mut buf = Vec::with_capacity(MAX_BATCHES_PER_COMMIT);
        loop {
            let wait = self.time_until_flush();
            let received = rt.block_on(async {
                match wait {
                    None => Some(rx.recv_many(&mut buf, MAX_BATCHES_PER_COMMIT).await),
                    Some(d) => {
                        tokio::time::timeout(d, rx.recv_many(&mut buf, MAX_BATCHES_PER_COMMIT))
                            .await
                            .ok()
                    }
                }
            });
            match received {
                Some(0) => break, // every sender gone and queue drained
                Some(batches) => {
                    let started = Instant::now();
                    let applied = self.apply(buf.drain(..));
                    let took = started.elapsed();
                    crate::events::GroupCommitted { batches, took }.emit();
                    match self.sync {
                        SyncMode::Batch => self.flush_and_release(vec![applied]),
                        SyncMode::Interval => self.pending.push(applied),
                    }
                }
                None => {} // flush deadline reached
            }
            if self.sync == SyncMode::Interval && self.time_until_flush() == Some(Duration::ZERO) {
                let pending = std::mem::take(&mut self.pending);
                self.flush_and_release(pending);
            }
        }
        let pending = std::mem::take(&mut self.pending);
        self.flush_and_release(pending);
        tracing::debug!("writer drained and flushed");
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
    fn apply(&mut self, requests: impl Iterator<Item = WriteRequest>) -> Applied {
        let mut replies = Vec::new();
        let mut readings: Vec<Reading> = Vec::new();
        let mut seq_updates: HashMap<Arc<str>, u64> = HashMap::new();
        if self.seqs.len() > SEQ_CACHE_MAX {
            self.seqs.clear();
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
                _ if self.poisoned => Some(CommitOutcome::Failed),
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
                    self.seqs.insert(batch.device.clone(), Some(seq));
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

        if let Err(e) = self.write(first_id, &readings, &seq_updates) {
            self.poisoned = true;
            tracing::error!(error = %e, "group commit failed; batches are not acknowledged");
            // Nothing of this group is durable: forget the seqs we assumed and
            // fail every batch that would have been stored.
            for device in seq_updates.keys() {
                self.seqs.remove(device);
            }
            for (_, outcome) in &mut replies {
                if matches!(outcome, CommitOutcome::Stored { .. }) {
                    *outcome = CommitOutcome::Failed;
                }
            }
            readings.clear();
        } else {
            self.next_id = next_id;
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

    fn write(
        &self,
        first_id: u64,
        readings: &[Reading],
        seq_updates: &HashMap<Arc<str>, u64>,
    ) -> Result<(), StoreError> {
        if readings.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut added_bytes = 0;
        for chunk in readings.chunks(MAX_READINGS_PER_SEGMENT) {
            let bytes = codec::encode_segment(chunk);
            let meta = SegmentMeta {
                first_id: chunk[0].id,
                last_id: chunk[chunk.len() - 1].id,
                newest_received: chunk.iter().map(|r| r.received).max().unwrap_or(0),
                bytes: bytes.len() as u64,
            };
            added_bytes += meta.bytes;
            batch.insert(&segment_key(meta.first_id)[..], bytes);
            batch.insert(&index_key(meta.first_id)[..], &meta.encode()[..]);
        }
        for (device, seq) in seq_updates {
            batch.insert(seq_key(device), &seq.to_be_bytes()[..]);
        }
        let next_id = first_id + readings.len() as u64;
        batch.insert(NEXT_ID_KEY, &next_id.to_be_bytes()[..]);
        self.store.db.apply_batch(batch)?;
        self.store
            .retained_bytes
            .fetch_add(added_bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Flushes, then releases the outcomes and announces the readings of the
    /// given commits, in commit order.
    fn flush_and_release(&mut self, commits: Vec<Applied>) {
        if commits.is_empty() {
            return;
        }
        let started = Instant::now();
        let flushed = self.store.flush();
        self.last_flush = Instant::now();
        crate::events::StoreFlushed {
            took: started.elapsed(),
        }
        .emit();
        if let Err(e) = &flushed {
            self.poisoned = true;
            tracing::error!(error = %e, "flush failed; refusing all further batches");
        }
        for commit in commits {
            let mut readings = commit.readings;
            if flushed.is_err() {
                readings.clear();
            }
            if let Some(last) = readings.last() {
                self.store.mark_durable(last.id);
                crate::events::ReadingsStored(readings.len()).emit();
                let readings: Arc<[Reading]> = readings.into();
                for l in &self.listeners {
                    l.on_commit(&readings);
                }
            }
            for (reply, outcome) in commit.replies {
                let outcome = match outcome {
                    CommitOutcome::Stored { .. } if flushed.is_err() => CommitOutcome::Failed,
                    o => o,
                };
                // The connection may be gone; its device will resend.
                let _ = reply.send(outcome);
            }
        }
    }
}
