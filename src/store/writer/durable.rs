//! How a written group reaches sled and its durable point: its entries go
//! to the write-ahead log at once and to sled in groups of many commits (see
//! the module docs of [`super`]; between the two, readers find them in the
//! store's tail); the log's sync is the durable point, and checkpoints, run
//! by the applier while the writer logs to the log's other half, make
//! sled's own files durable so that half can be written again.

use std::time::Instant;

use super::apply::Staged;
use super::{
    Writer, APPLY_AT_READINGS, APPLY_MAX_READINGS, APPLY_SPACING, CHECKPOINT_AT_LOG_BYTES,
};
use crate::store::StoreError;

impl Writer {
    /// Appends one group's entries to the write-ahead log (unless an
    /// earlier group missed the log) and stages them for sled. Once an
    /// apply is due ([`Writer::apply_due`]) they go to the applier
    /// ([`super::apply`]), which applies them to sled while the writer goes
    /// on. A failed apply or checkpoint of earlier groups refuses this one
    /// before it reaches the log. `Ok(false)`: refused, the log's half being
    /// full and the disk too full for the checkpoint that would free the
    /// other (the writer now refuses writes; nothing of the group is logged
    /// or staged). The caller checked the space for the group itself.
    pub(super) fn log_and_stage(
        &mut self,
        first_id: u64,
        next_id: u64,
        readings: usize,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, StoreError> {
        if let Some(e) = self.applier.take_error() {
            return Err(e);
        }
        if !self.unlogged {
            let mut logged = self.store.log_commit(first_id, next_id, &entries)?;
            if !logged && self.store.log_used() > 0 {
                if !self.rotate_log(first_id - 1)? {
                    return Ok(false);
                }
                logged = self.store.log_commit(first_id, next_id, &entries)?;
            }
            // Larger than a half: only a checkpoint of its own makes it
            // durable, and nothing more is logged until then.
            self.unlogged = !logged;
        }
        for (k, v) in &entries {
            self.staged_bytes += (k.len() + v.len()) as u64;
            self.staged.insert(k.as_slice(), v.as_slice());
        }
        self.staged_readings += readings;
        self.staged_through = next_id - 1;
        if self.apply_due() {
            self.submit_staged()?;
        }
        Ok(true)
    }

    /// Enough is staged for an apply: [`APPLY_AT_READINGS`] once
    /// [`APPLY_SPACING`] has passed since the last one, or
    /// [`APPLY_MAX_READINGS`]. A due apply that waits for its spacing goes
    /// with the next commit or checkpoint; meanwhile its readings are
    /// durable in the log and readers find them in the tail.
    fn apply_due(&self) -> bool {
        let spaced = self
            .last_submit
            .is_none_or(|at| at.elapsed() >= APPLY_SPACING);
        self.staged_readings >= APPLY_MAX_READINGS
            || (self.staged_readings >= APPLY_AT_READINGS && spaced)
    }

    /// The log's current half is full: waits for the checkpoint of the
    /// other half (if one is running), then starts one of this half (every
    /// commit up to `last_id`, all staged) and switches. False when the
    /// disk is too full for it.
    fn rotate_log(&mut self, last_id: u64) -> Result<bool, StoreError> {
        if self.checkpoint_running() {
            self.applier.wait()?;
        }
        self.start_checkpoint(last_id)
    }

    /// Applies what is staged and waits until sled holds every commit
    /// staged so far, unless the disk has become too full for it since it
    /// was written (`Ok(false)`): the writer then refuses writes
    /// ([`super::fault::Fault::DiskFull`]), and the staged commits wait,
    /// durable in the log, until space is back.
    pub(super) fn apply_staged(&mut self) -> Result<bool, StoreError> {
        if !self.submit_staged_if_room()? {
            return Ok(false);
        }
        self.applier.wait()?;
        Ok(true)
    }

    /// [`Self::submit_staged`], unless the disk has become too full to
    /// apply what is staged (`Ok(false)`, the writer now in
    /// [`super::fault::Fault::DiskFull`]).
    fn submit_staged_if_room(&mut self) -> Result<bool, StoreError> {
        if !self.room_to_apply() {
            return Ok(false);
        }
        self.submit_staged()?;
        Ok(true)
    }

    /// Nothing is staged, or the disk has room to apply it; otherwise the
    /// writer is now in [`super::fault::Fault::DiskFull`].
    fn room_to_apply(&mut self) -> bool {
        self.staged_readings == 0 || self.check_space(2 * self.staged_bytes).is_ok()
    }

    /// Hands every staged entry (if any) to the applier, to be applied to
    /// sled as one atomic batch.
    fn submit_staged(&mut self) -> Result<(), StoreError> {
        match self.take_staged() {
            Some(staged) => self.applier.submit(self.store.sled()?, staged),
            None => Ok(()),
        }
    }

    /// Every staged entry, as one batch for sled. Commits are staged in
    /// order and the batch carries `m/next_id`, so sled always holds a
    /// prefix of the log.
    fn take_staged(&mut self) -> Option<Staged> {
        if self.staged_readings == 0 {
            return None;
        }
        self.last_submit = Some(Instant::now());
        self.staged_readings = 0;
        self.staged_bytes = 0;
        Some(Staged {
            batch: std::mem::take(&mut self.staged),
            through: self.staged_through,
        })
    }

    /// The durable point: the log's sync, after which a checkpoint is
    /// started when one is due (asked for, the log's half is half full, or
    /// [`super::CHECKPOINT_EVERY`] has passed). A group that missed the log
    /// is made durable by a checkpoint the writer waits for. On failure the
    /// writer enters [`super::fault::Fault::StoreFailed`].
    pub(super) fn make_durable(&mut self, checkpoint: bool) -> Result<(), ()> {
        let last_id = self.next_id - 1;
        let due = checkpoint || self.last_checkpoint.elapsed() >= self.checkpoint_every;
        self.durable_by(|w| w.reach_durable_point(last_id, due))
    }

    /// The writer is stopping: everything is made durable in sled itself,
    /// after any checkpoint still running, so the next start replays nothing.
    pub(super) fn make_durable_in_sled(&mut self) -> Result<(), ()> {
        let last_id = self.next_id - 1;
        self.durable_by(|w| w.checkpoint_now(last_id))
    }

    fn durable_by(
        &mut self,
        how: impl FnOnce(&mut Self) -> Result<(), StoreError>,
    ) -> Result<(), ()> {
        let started = Instant::now();
        let synced = how(self);
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

    fn reach_durable_point(&mut self, last_id: u64, due: bool) -> Result<(), StoreError> {
        if self.unlogged {
            return self.checkpoint_now(last_id);
        }
        let used = self.sync_log_and_note(last_id)?;
        if due || used >= CHECKPOINT_AT_LOG_BYTES {
            // Not started while the previous one runs: the next commit or
            // wake-up tries again.
            if !self.checkpoint_running() {
                self.start_checkpoint(last_id)?;
            }
        }
        Ok(())
    }

    /// The log's sync made every commit up to `last_id` durable (through
    /// the log alone, until a checkpoint), and the mark file notes it.
    /// Returns the bytes of the log's current half in use.
    fn sync_log_and_note(&mut self, last_id: u64) -> Result<u64, StoreError> {
        let used = self.store.sync_log()?;
        self.since_checkpoint = true;
        self.store.note_durable(last_id)?;
        Ok(used)
    }

    /// True while the checkpoint started at the last switch of the log's
    /// halves has not returned: the other half is not free yet.
    pub(super) fn checkpoint_running(&self) -> bool {
        self.checkpoint_started
            .is_some_and(|id| self.applier.checkpointed() < id)
    }

    /// Hands what is staged and a checkpoint up to `last_id` (everything
    /// in the log's current half) to the applier, and switches the log to
    /// its other half, which must be free. `Ok(false)`: postponed, the disk
    /// being too full to apply (the writer now refuses writes).
    fn start_checkpoint(&mut self, last_id: u64) -> Result<bool, StoreError> {
        if !self.room_to_apply() {
            return Ok(false);
        }
        let staged = self.take_staged();
        self.applier
            .checkpoint(self.store.sled()?, staged, last_id)?;
        self.store.switch_log()?;
        self.checkpoint_started = Some(last_id);
        self.last_checkpoint = Instant::now();
        self.since_checkpoint = false;
        Ok(true)
    }

    /// A checkpoint the writer waits for: after the applier's jobs, what is
    /// staged is applied, sled's files made durable, the mark moved, and
    /// both halves of the log freed. When the disk is too full to apply, the
    /// log's sync makes the commits durable instead (a group that missed
    /// the log cannot be, and fails).
    fn checkpoint_now(&mut self, last_id: u64) -> Result<(), StoreError> {
        if !self.apply_staged()? {
            if self.unlogged {
                return Err(StoreError::Sync(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space to apply a commit too large for the write-ahead log",
                )));
            }
            return self.sync_log_and_note(last_id).map(|_| ());
        }
        self.store
            .db()
            .and_then(|db| self.store.checkpoint(&db, last_id))?;
        self.checkpoint_started = None;
        self.last_checkpoint = Instant::now();
        self.since_checkpoint = false;
        self.unlogged = false;
        Ok(())
    }
}
