//! Background retention: deletes the oldest segments once they are older
//! than `storage.retention` (by `received`) or once the retained bytes exceed
//! `storage.max_bytes` (SPEC §7, §10).
//!
//! Works from the small `i/` index entries only, deleting a segment and its
//! index entry in one atomic batch, oldest first. Deleting never touches
//! `m/next_id` or the `q/` seqs, so ids and dedupe survive an empty store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{index_key, segment_key, SegmentMeta, Store, StoreError, INDEX_PREFIX};

/// How often pruning runs: SPEC §10 asks for at least once a minute.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// What one pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub segments: u64,
    pub bytes: u64,
}

impl Store {
    /// Deletes segments whose newest reading was received before
    /// `now_ms - retention`, then oldest segments while over `max_bytes`.
    /// Never deletes the segment holding the newest durable reading by size
    /// alone, so a tiny `max_bytes` still keeps the latest data readable.
    pub fn prune(
        &self,
        now_ms: i64,
        retention: Duration,
        max_bytes: u64,
    ) -> Result<Pruned, StoreError> {
        let cutoff = now_ms.saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
        let durable = self.last_id();
        let mut pruned = Pruned::default();
        let db = self.db()?;
        for entry in db.scan_prefix(INDEX_PREFIX) {
            let (k, v) = entry?;
            let meta = SegmentMeta::decode(&k, &v)?;
            if meta.last_id > durable {
                break; // not yet announced: leave it to the next pass
            }
            let expired = meta.newest_received < cutoff;
            let over_size = self.retained_bytes() > max_bytes && meta.last_id < durable;
            if !expired && !over_size {
                break;
            }
            let mut batch = sled::Batch::default();
            batch.remove(&segment_key(meta.first_id)[..]);
            batch.remove(&index_key(meta.first_id)[..]);
            db.apply_batch(batch)?;
            self.retained_bytes.fetch_sub(meta.bytes, Ordering::Relaxed);
            pruned.segments += 1;
            pruned.bytes += meta.bytes;
        }
        Ok(pruned)
    }
}

/// Runs [`Store::prune`] every [`PRUNE_EVERY`] until `shutdown`.
pub async fn run(
    store: Arc<Store>,
    retention: Duration,
    max_bytes: u64,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store = store.clone();
        let now = crate::time::unix_ms();
        let result =
            tokio::task::spawn_blocking(move || store.prune(now, retention, max_bytes)).await;
        match result {
            Ok(Ok(p)) if p.segments > 0 => {
                crate::events::RetentionPruned {
                    segments: p.segments,
                    bytes: p.bytes,
                }
                .emit();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention pass failed"),
            Err(e) => tracing::error!(error = %e, "retention task panicked"),
        }
    }
}
