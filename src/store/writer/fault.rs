//! The writer's faults: a disk too full to write (refused before sled is
//! touched), sled or a sync failing (sled closed, nothing of the group
//! acknowledged), and the way back once the cause is gone.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{CommitOutcome, Writer};
use crate::store::{Commit, StoreError};

/// Why the writer refuses batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// Free space below `storage.min_free`; sled was not touched.
    DiskFull,
    /// sled or a sync failed; sled is closed until reopened.
    StoreFailed,
}

impl Fault {
    pub(super) fn label(self) -> &'static str {
        match self {
            Fault::DiskFull => "disk_full",
            Fault::StoreFailed => "store_failed",
        }
    }
}

impl Writer {
    /// Refuses the write (and enters [`Fault::DiskFull`]) when the store's
    /// filesystem would keep less than `storage.min_free` after `need` bytes.
    pub(super) fn check_space(&mut self, need: u64) -> Result<(), Fault> {
        let free = match self.space.free_bytes() {
            Ok(free) => free,
            // Not knowing is no reason to refuse: sled's own error decides.
            Err(_) => return Ok(()),
        };
        if free >= self.min_free.saturating_add(need) {
            return Ok(());
        }
        self.fault = Some(Fault::DiskFull);
        self.last_recovery = Instant::now();
        self.store.set_refusal(Some(format!(
            "disk full: {} free on the filesystem of storage.path {}, storage.min_free is {}",
            crate::config::format_size(free),
            self.store.path().display(),
            crate::config::format_size(self.min_free)
        )));
        Err(Fault::DiskFull)
    }

    /// sled or a sync failed: what sled holds is unknown (the fsync lesson:
    /// a failed flush cannot be retried into success), and a failed sled
    /// refuses everything, so it is closed and reopened once possible.
    pub(super) fn fail(&mut self, reason: String) {
        self.fault = Some(Fault::StoreFailed);
        self.last_recovery = Instant::now();
        self.seqs.clear();
        // Staged entries, and those handed to the applier, die with this
        // sled; the reopen replays the log, which holds every durable one.
        self.applier.abandon();
        self.staged = sled::Batch::default();
        self.staged_readings = 0;
        self.staged_bytes = 0;
        self.last_submit = None;
        self.next_id = self.durable_next_id;
        self.dirty = false;
        // Reopening replays the log and flushes sled: no checkpoint is owed,
        // and both halves of the log are free again.
        self.since_checkpoint = false;
        self.checkpoint_started = None;
        self.unlogged = false;
        // Interval mode: groups applied since the last durable point die
        // with this sled; nothing of theirs may be acknowledged.
        for commit in std::mem::take(&mut self.pending) {
            let mut replies = commit.replies;
            fail_stored(&mut replies, true);
            for (reply, outcome) in replies {
                let _ = reply.send(outcome);
            }
        }
        self.store.set_refusal(Some(reason));
        crate::events::StoreFailed.emit();
        self.store.close();
    }

    /// Clears a fault when its cause is gone: space is back above
    /// `storage.min_free`, and after a failure sled reopens cleanly.
    pub(super) fn try_recover(&mut self) {
        self.last_recovery = Instant::now();
        let Some(fault) = self.fault else { return };
        if fault == Fault::StoreFailed && self.store.is_closing() {
            // The failed sled's flushes still hold sled's process-wide
            // lock; a sled opened now could hang on its first write.
            return;
        }
        // The directory is opened again: if `storage.path` now names another
        // one (a volume mounted over it, a store restored), the reopened
        // sled writes there, and the check before every commit must ask
        // that filesystem, as this one does.
        self.space = crate::store::durability::SpaceProbe::open(self.store.path());
        let free = self.space.free_bytes().unwrap_or(u64::MAX);
        if free < self.min_free {
            return;
        }
        if fault == Fault::StoreFailed && self.store.is_wedged() && self.store.restart_in_place() {
            tracing::error!(
                "the failed store cannot be released in this process; space is back, restarting in place"
            );
            let e = crate::store::fault::reexec();
            tracing::error!(error = %e, "restarting in place failed");
        }
        if fault == Fault::StoreFailed {
            match self
                .store
                .reopen()
                .and_then(|last_id| self.adopt_reopened(last_id))
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the store failed; retrying");
                    self.store
                        .set_refusal(Some(format!("store failed and could not be reopened: {e}")));
                    return;
                }
            }
        }
        self.fault = None;
        self.store.set_refusal(None);
    }

    /// After a reopen, the store may hold a group whose flush reported
    /// failure but whose log write landed. Its batches were not acknowledged
    /// (the devices will resend and get `duplicate` acks), but its ids are
    /// taken: make them durable, then announce them like any commit.
    pub(super) fn adopt_reopened(&mut self, last_id: u64) -> Result<(), StoreError> {
        if last_id >= self.durable_next_id {
            let db = self.store.db()?;
            if let Err(e) = self.store.checkpoint(&db, last_id) {
                drop(db);
                self.store.close();
                return Err(e);
            }
            self.store.mark_durable(last_id);
            match self
                .store
                .read_since(self.durable_next_id - 1, usize::MAX, |_| true)
            {
                Ok(readings) if !readings.is_empty() => {
                    let readings = Arc::new(Commit::from(readings));
                    for l in &self.listeners {
                        l.on_commit(&readings);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not announce readings found after reopening")
                }
            }
        }
        self.next_id = self.next_id.max(last_id + 1);
        self.durable_next_id = self.next_id;
        Ok(())
    }
}

/// Turns every `Stored` outcome into `Failed`; once a flush failed, also
/// every `LastSeq` and `Duplicate` answer, which may rest on a seq applied
/// since the last durable point and now lost. Returns how many batches
/// would have been stored.
pub(super) fn fail_stored(
    replies: &mut [(oneshot::Sender<CommitOutcome>, CommitOutcome)],
    flush_failed: bool,
) -> u64 {
    let mut refused = 0;
    for (_, outcome) in replies.iter_mut() {
        let fail = match outcome {
            CommitOutcome::Stored { .. } => {
                refused += 1;
                true
            }
            CommitOutcome::LastSeq(_) | CommitOutcome::Duplicate => flush_failed,
            _ => false,
        };
        if fail {
            *outcome = CommitOutcome::Failed;
        }
    }
    refused
}
