//! How a written group reaches sled and its durable point: its entries go
//! to the write-ahead log at once and to sled in groups of many commits (see
//! the module docs of [`super`]; between the two, readers find them in the
//! store's tail); the log's sync is the usual durable point, and a
//! checkpoint makes sled's own files durable so the log can start again.

use std::time::Instant;

use super::{Writer, APPLY_AT_READINGS, CHECKPOINT_AT_LOG_BYTES};
use crate::store::StoreError;

impl Writer {
    /// Stages one group's entries for sled and appends them to the
    /// write-ahead log (unless an earlier group missed the log). Once
    /// [`APPLY_AT_READINGS`] readings are staged they go to the applier
    /// ([`super::apply`]), this group's included, which applies them to
    /// sled while the writer goes on. A failed apply of earlier groups
    /// refuses this one before it reaches the log. The caller checked the
    /// space for it.
    pub(super) fn log_and_stage(
        &mut self,
        first_id: u64,
        next_id: u64,
        readings: usize,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        if let Some(e) = self.applier.take_error() {
            return Err(e);
        }
        for (k, v) in &entries {
            self.staged_bytes += (k.len() + v.len()) as u64;
            self.staged.insert(k.as_slice(), v.as_slice());
        }
        self.staged_readings += readings;
        self.staged_through = next_id - 1;
        if self.staged_readings >= APPLY_AT_READINGS {
            self.submit_staged()?;
        }
        if !self.unlogged {
            self.unlogged = !self.store.log_commit(first_id, next_id, &entries)?;
        }
        Ok(())
    }

    /// Applies what is staged and waits until sled holds every commit
    /// staged so far, unless the disk has become too full for it since it
    /// was written (`Ok(false)`): the writer then refuses writes
    /// ([`super::fault::Fault::DiskFull`]), and the staged commits wait,
    /// durable in the log, until space is back.
    pub(super) fn apply_staged(&mut self) -> Result<bool, StoreError> {
        if self.staged_readings > 0 {
            if self.check_space(2 * self.staged_bytes).is_err() {
                return Ok(false);
            }
            self.submit_staged()?;
        }
        self.applier.wait()?;
        Ok(true)
    }

    /// Hands every staged entry to the applier, to be applied to sled as
    /// one atomic batch. Commits are staged in order and the batch carries
    /// `m/next_id`, so sled always holds a prefix of the log.
    fn submit_staged(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut self.staged);
        self.staged_readings = 0;
        self.staged_bytes = 0;
        self.applier
            .submit(self.store.db()?, batch, self.staged_through)
    }

    /// The durable point: the log's sync, or a checkpoint when one is due
    /// (asked for, a group missed the log, the log is half full, or
    /// [`super::CHECKPOINT_EVERY`] has passed). On failure the writer enters
    /// [`super::fault::Fault::StoreFailed`].
    pub(super) fn make_durable(&mut self, checkpoint: bool) -> Result<(), ()> {
        let started = Instant::now();
        let last_id = self.next_id - 1;
        let due =
            checkpoint || self.unlogged || self.last_checkpoint.elapsed() >= self.checkpoint_every;
        let synced = self.reach_durable_point(last_id, due);
        self.last_flush = Instant::now();
        crate::events::StoreFlushed {
            took: started.elapsed(),
        }
        .emit();
        match synced {
            Ok(()) => {
                self.dirty = false;
                self.durable_next_id = self.next_id;
                Ok(())
            }
            Err(e) => {
                self.fail(format!("flushing the store failed: {e}"));
                Err(())
            }
        }
    }

    /// A checkpoint when `due`; otherwise, or when a full disk postpones
    /// the checkpoint, the log's sync (it needs no space: the log is
    /// preallocated).
    fn reach_durable_point(&mut self, last_id: u64, due: bool) -> Result<(), StoreError> {
        if due && self.checkpoint(last_id)? {
            return Ok(());
        }
        let used = self.store.sync_log()?;
        if !due && used >= CHECKPOINT_AT_LOG_BYTES && self.checkpoint(last_id)? {
            return Ok(());
        }
        self.since_checkpoint = true;
        self.store.note_durable(last_id)
    }

    /// Applies what is staged, makes sled's files durable, moves the mark
    /// and lets the log start again. `Ok(false)`: postponed, the disk being
    /// too full to apply (everything staged is still in the log).
    fn checkpoint(&mut self, last_id: u64) -> Result<bool, StoreError> {
        if !self.apply_staged()? {
            if self.unlogged {
                // Only a checkpoint could make that group durable.
                return Err(StoreError::Sync(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space to apply a commit too large for the write-ahead log",
                )));
            }
            return Ok(false);
        }
        self.store
            .db()
            .and_then(|db| self.store.checkpoint(&db, last_id))?;
        self.last_checkpoint = Instant::now();
        self.since_checkpoint = false;
        self.unlogged = false;
        Ok(true)
    }
}
