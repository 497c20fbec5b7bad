//! The applier: a thread that does the writer's sled work, applying
//! staged commits and taking checkpoints, so commits do not wait for it.
//!
//! Why: an `apply_batch` of [`super::APPLY_AT_READINGS`] readings takes sled
//! 1–2.5 ms (up to four times that at high rates: [`super::APPLY_SPACING`]),
//! and a checkpoint (sled's flush, the syncs of its files and of the
//! high-water mark) several ms, every second. On the writer thread every
//! commit queued meanwhile waited for them: at the fleet shape (1,000
//! devices, one small batch a second each) the applies held up one commit in
//! a hundred, which set the p99, and the checkpoints the p999. What they work
//! on is already durable in the write-ahead log, so the writer goes on
//! logging (to the log's other half during a checkpoint:
//! [`super::super::wal`]) and waits only when it needs sled to hold
//! everything ([`Applier::wait`]): for a checkpoint of its own, before
//! clearing its seq cache, at the end.
//!
//! Order and failure: jobs run one at a time in the order they were
//! submitted, so sled still holds a prefix of the log and a checkpoint
//! covers every apply submitted before it. The first failure is kept for
//! the writer ([`Applier::take_error`], or returned by the next
//! [`Applier::wait`]); later jobs of the same generation are skipped, since
//! applying them would leave sled with a hole. When the writer gives up on
//! its sled ([`Applier::abandon`], on any store failure) jobs still queued
//! for that sled are dropped; the reopen replays the log. Each job carries
//! its own `sled::Db`: while one is queued, sled's file lock keeps a reopen
//! from opening the same files a second time.
//!
//! Priority: the thread is in the idle CPU class while nobody waits for it,
//! so that its long sled calls never keep the writer or the runtime's
//! workers off a CPU, and at normal priority while anybody does: the
//! writer below (a full queue, [`Applier::wait`], the end) and every
//! holder of a store handle on sled ([`crate::store::priority`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::priority::{Priority, Waiting};
use crate::store::{Store, StoreError};

/// What the applier does to the store (a trait so that its tests can make
/// it fail).
pub(super) trait Target: Send + 'static {
    fn apply(&self, db: &sled::Db, batch: sled::Batch) -> Result<(), StoreError>;
    /// sled holds every commit up to `id`: readers find them there.
    fn applied(&self, id: u64);
    /// Every commit applied so far, `last_id` among them, becomes durable
    /// in sled's own files.
    fn checkpoint(&self, db: &sled::Db, last_id: u64) -> Result<(), StoreError>;
}

impl Target for Arc<Store> {
    fn apply(&self, db: &sled::Db, batch: sled::Batch) -> Result<(), StoreError> {
        Ok(db.apply_batch(batch)?)
    }

    fn applied(&self, id: u64) {
        self.applied_through(id);
    }

    fn checkpoint(&self, db: &sled::Db, last_id: u64) -> Result<(), StoreError> {
        self.sled_checkpoint(db, last_id)
    }
}

/// Commits staged by the writer, to be applied to sled as one batch.
pub(super) struct Staged {
    pub batch: sled::Batch,
    /// The newest id in `batch`.
    pub through: u64,
}

enum Job {
    Apply {
        generation: u64,
        db: sled::Db,
        staged: Staged,
    },
    /// The last staged commits go with their checkpoint, in one job: two
    /// would leave the writer waiting for a place in the queue behind the
    /// apply still running, at every checkpoint (up to 0.9 ms a second at
    /// 100,000 readings/s).
    Checkpoint {
        generation: u64,
        db: sled::Db,
        staged: Option<Staged>,
        last_id: u64,
    },
    /// Answered once every job before it is done.
    Wait(SyncSender<()>),
}

#[derive(Default)]
struct Shared {
    /// Bumped by [`Applier::abandon`]: jobs of older generations are skipped.
    generation: AtomicU64,
    /// The newest `last_id` a checkpoint made durable in sled.
    checkpointed: AtomicU64,
    failure: Mutex<Failure>,
    /// The thread is running a job.
    busy: AtomicBool,
    /// Held while a job waits behind the one running: the applier is
    /// behind, and runs at normal priority until it has caught up.
    behind: Mutex<Option<Waiting>>,
}

#[derive(Default)]
struct Failure {
    /// The generation whose job failed: its later jobs are skipped.
    generation: Option<u64>,
    /// That failure, until the writer takes it.
    error: Option<StoreError>,
}

impl Shared {
    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Failure> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_behind(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        self.behind.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the writer, after queueing a job: if another is running, this one
    /// waits behind it, and the applier is behind until it has been out of
    /// work for [`CAUGHT_UP_AFTER`].
    fn queued_behind(&self, priority: &Arc<Priority>) {
        if self.busy.load(Ordering::SeqCst) {
            self.lock_behind().get_or_insert_with(|| priority.waiting());
        }
    }

    /// On the thread: the next job, `None` once the writer has gone. The
    /// applier counts as caught up (back to idle) only after
    /// [`CAUGHT_UP_AFTER`] without one.
    fn next_job(&self, rx: &Receiver<Job>) -> Option<Job> {
        self.busy.store(false, Ordering::SeqCst);
        let job = match rx.recv_timeout(CAUGHT_UP_AFTER) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => {
                drop(self.lock_behind().take());
                rx.recv().ok()
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }?;
        self.busy.store(true, Ordering::SeqCst);
        Some(job)
    }
}

/// How long the applier must be out of work before it goes back to idle
/// once it was behind. A flood hands it an apply every few ms: going idle
/// between them left each new one starved until the next came (beside two
/// busy loops a flood acked 0.75 M readings/s instead of 1.25 M).
const CAUGHT_UP_AFTER: Duration = Duration::from_millis(20);

/// The writer's handle on the applier thread.
pub(super) struct Applier {
    tx: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    priority: Arc<Priority>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    /// Starts the thread, which adopts `priority` (idle while nobody
    /// waits for it).
    pub(super) fn spawn(target: impl Target, priority: Arc<Priority>) -> Applier {
        // One job waiting beside the one running: a writer that stages
        // faster than sled applies waits here, which bounds the store's
        // tail (the readings readers find outside sled).
        let (tx, rx) = sync_channel(1);
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("sensorgate-apply".into())
            .spawn({
                let shared = shared.clone();
                let priority = priority.clone();
                move || {
                    priority.adopt_current_thread();
                    run(&shared, rx, target, &priority);
                    priority.release();
                }
            })
            .expect("spawning the applier thread");
        Applier {
            tx: Some(tx),
            shared,
            priority,
            thread: Some(thread),
        }
    }

    /// Queues `staged` to be applied to `db`.
    /// Blocks while another job is already waiting.
    pub(super) fn submit(&self, db: sled::Db, staged: Staged) -> Result<(), StoreError> {
        let generation = self.generation();
        self.send(Job::Apply {
            generation,
            db,
            staged,
        })
    }

    /// Queues a checkpoint of everything submitted before it and of
    /// `staged`, which is applied first; once it has returned,
    /// [`Applier::checkpointed`] is at least `last_id`.
    pub(super) fn checkpoint(
        &self,
        db: sled::Db,
        staged: Option<Staged>,
        last_id: u64,
    ) -> Result<(), StoreError> {
        let generation = self.generation();
        self.send(Job::Checkpoint {
            generation,
            db,
            staged,
            last_id,
        })
    }

    /// The newest id a checkpoint has made durable in sled.
    pub(super) fn checkpointed(&self) -> u64 {
        self.shared.checkpointed.load(Ordering::Acquire)
    }

    /// Waits until every job submitted has run; the first failure since
    /// the last [`Applier::abandon`], if any.
    pub(super) fn wait(&self) -> Result<(), StoreError> {
        let _waiting = self.priority.waiting();
        let (tx, rx) = sync_channel(1);
        self.send(Job::Wait(tx))?;
        rx.recv().map_err(|_| stopped())?;
        self.take_error().map_or(Ok(()), Err)
    }

    /// A failure of a job submitted since the last [`Applier::abandon`],
    /// without waiting.
    pub(super) fn take_error(&self) -> Option<StoreError> {
        let generation = self.generation();
        let mut failure = self.shared.lock_failure();
        if failure.generation == Some(generation) {
            failure.error.take()
        } else {
            None
        }
    }

    /// The writer gave up on its sled: what is still queued is not run.
    pub(super) fn abandon(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Queues `job`; when one is already waiting, blocks until the
    /// applier takes that one, with the applier at normal priority.
    fn send(&self, job: Job) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().expect("sender lives until drop");
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let _waiting = self.priority.waiting();
                tx.send(job).map_err(|_| stopped())?;
            }
            Err(TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        self.shared.queued_behind(&self.priority);
        Ok(())
    }
}

impl Drop for Applier {
    /// Lets the thread finish what is queued, then joins it.
    fn drop(&mut self) {
        let _waiting = self.priority.waiting();
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Sled(sled::Error::ReportableBug(
        "the applier thread stopped".into(),
    ))
}

fn run(shared: &Shared, rx: Receiver<Job>, target: impl Target, priority: &Arc<Priority>) {
    while let Some(job) = shared.next_job(&rx) {
        run_job(shared, job, &target, priority);
    }
    // The writer has gone: nothing waits behind any more.
    drop(shared.lock_behind().take());
}

/// Runs one job. Only sled's own work on an apply may run in the idle
/// class: the rest takes locks the writer takes after every commit (the
/// store's tail, the high-water mark), and a holder preempted there would
/// hold the writer for as long as normal threads keep the CPU.
fn run_job(shared: &Shared, job: Job, target: &impl Target, priority: &Arc<Priority>) {
    let generation = match &job {
        Job::Wait(_) => None,
        Job::Apply { generation, .. } | Job::Checkpoint { generation, .. } => Some(*generation),
    };
    if let Some(generation) = generation {
        let current = shared.generation.load(Ordering::Acquire);
        if generation != current || shared.lock_failure().generation == Some(generation) {
            return; // abandoned, or behind a failed job
        }
    }
    // Effects are reported even for a sled abandoned meanwhile: the
    // reopen, which resets what readers take sled to hold, cannot come
    // before the job's handle on sled is dropped (sled's file lock), at
    // the end of its arm.
    let ran = match job {
        Job::Wait(done) => {
            let _ = done.send(());
            Ok(())
        }
        Job::Apply { db, staged, .. } => apply(target, &db, staged, priority),
        Job::Checkpoint {
            db,
            staged,
            last_id,
            ..
        } => staged
            .map_or(Ok(()), |staged| apply(target, &db, staged, priority))
            .and_then(|()| {
                let _normal = priority.waiting();
                guarded(|| target.checkpoint(&db, last_id))
            })
            .map(|()| {
                shared.checkpointed.fetch_max(last_id, Ordering::AcqRel);
            }),
    };
    if let (Err(e), Some(generation)) = (ran, generation) {
        *shared.lock_failure() = Failure {
            generation: Some(generation),
            error: Some(e),
        };
    }
}

/// Applies `staged` to sled (in whatever class the thread is in), then
/// tells readers at normal priority.
fn apply(
    target: &impl Target,
    db: &sled::Db,
    staged: Staged,
    priority: &Arc<Priority>,
) -> Result<(), StoreError> {
    guarded(|| target.apply(db, staged.batch)).map(|()| {
        let _normal = priority.waiting();
        target.applied(staged.through)
    })
}

/// `f`, a panic (inside sled) becoming an error: the thread lives on and
/// the writer learns of it like of any failed job.
fn guarded(f: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(StoreError::Sled(sled::Error::ReportableBug(format!(
            "sled panicked: {}",
            crate::store::recovery::panic_message(&*panic)
        ))))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    /// A target whose jobs (applies and checkpoints, counted together from
    /// 0) fail when listed in `fails`, or panic with `panics`; the first
    /// job can be held until the test lets it go (`gate`).
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        fails: &'static [usize],
        panics: bool,
        applied: Arc<Mutex<Vec<u64>>>,
        gate: Option<(SyncSender<()>, Mutex<Receiver<()>>)>,
        gated: AtomicBool,
    }

    impl Fake {
        fn call(&self) -> Result<(), StoreError> {
            if let Some((started, release)) = &self.gate {
                if !self.gated.swap(true, Ordering::SeqCst) {
                    started.send(()).unwrap();
                    release.lock().unwrap().recv().unwrap();
                }
            }
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.fails.contains(&call) {
                return Ok(());
            }
            if self.panics {
                panic!("deliberate");
            }
            Err(StoreError::Sync(std::io::Error::other("deliberate")))
        }
    }

    impl Target for Arc<Fake> {
        fn apply(&self, _: &sled::Db, _: sled::Batch) -> Result<(), StoreError> {
            self.call()
        }
        fn applied(&self, id: u64) {
            self.applied.lock().unwrap().push(id);
        }
        fn checkpoint(&self, _: &sled::Db, _: u64) -> Result<(), StoreError> {
            self.call()
        }
    }

    /// A fake whose first job waits until the test lets it go, with the
    /// receiver that hears it start and the sender that lets it go.
    fn gated(fails: &'static [usize]) -> (Fake, Receiver<()>, SyncSender<()>) {
        let (started_tx, started) = sync_channel(1);
        let (release, released) = sync_channel(1);
        let fake = Fake {
            gate: Some((started_tx, Mutex::new(released))),
            fails,
            ..Fake::default()
        };
        (fake, started, release)
    }

    fn applier(fake: Fake) -> (Applier, Arc<Mutex<Vec<u64>>>) {
        let applied = fake.applied.clone();
        (Applier::spawn(Arc::new(fake), Arc::default()), applied)
    }

    fn db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    fn staged(through: u64) -> Staged {
        Staged {
            batch: sled::Batch::default(),
            through,
        }
    }

    fn submit(applier: &Applier, db: &sled::Db, through: u64) {
        applier.submit(db.clone(), staged(through)).unwrap();
    }

    #[test]
    fn jobs_run_in_order_and_wait_returns_after_them() {
        let (applier, applied) = applier(Fake::default());
        let db = db();
        for id in [10, 20] {
            submit(&applier, &db, id);
        }
        applier.checkpoint(db.clone(), None, 20).unwrap();
        submit(&applier, &db, 30);
        applier.wait().unwrap();
        assert_eq!(*applied.lock().unwrap(), [10, 20, 30]);
        assert_eq!(applier.checkpointed(), 20);
        assert!(applier.take_error().is_none());
    }

    #[test]
    fn after_a_failure_nothing_more_runs_until_abandoned() {
        // The second job fails: an apply, then a checkpoint; by error or panic.
        for (panics, checkpoint) in [(false, false), (true, false), (false, true), (true, true)] {
            let case = format!("panics {panics}, checkpoint {checkpoint}");
            let (applier, applied) = applier(Fake {
                fails: &[1],
                panics,
                ..Fake::default()
            });
            let db = db();
            submit(&applier, &db, 10);
            match checkpoint {
                true => applier.checkpoint(db.clone(), None, 10).unwrap(),
                false => submit(&applier, &db, 20),
            }
            submit(&applier, &db, 30);
            applier.checkpoint(db.clone(), None, 30).unwrap();
            let e = applier.wait().expect_err("the second job failed");
            let expected = if panics { "panicked" } else { "deliberate" };
            assert!(e.to_string().contains(expected), "{case}: {e}");
            // 30 comes after the failure: applying it would leave a hole.
            assert_eq!(*applied.lock().unwrap(), [10], "{case}");
            assert_eq!(applier.checkpointed(), 0, "{case}");
            assert!(applier.take_error().is_none(), "{case}: reported once");
            submit(&applier, &db, 40);
            applier.wait().unwrap();
            assert_eq!(*applied.lock().unwrap(), [10], "{case}: still skipped");

            // The writer gave up on that sled (and reopened it): what it
            // submits from now on runs again.
            applier.abandon();
            submit(&applier, &db, 50);
            applier.checkpoint(db.clone(), None, 50).unwrap();
            applier.wait().unwrap();
            assert_eq!(*applied.lock().unwrap(), [10, 50], "{case}");
            assert_eq!(applier.checkpointed(), 50, "{case}");
        }
    }

    /// The last staged commits travel with their checkpoint: applied
    /// first (a failed apply leaves the checkpoint undone), and the two
    /// take one place in the queue, so a writer behind a running apply
    /// queues them without waiting for it.
    #[test]
    fn a_checkpoint_applies_what_it_carries_first_in_one_place_in_the_queue() {
        for carried_fails in [false, true] {
            let (fake, started, release) = gated(if carried_fails { &[1] } else { &[] });
            let (applier, applied) = applier(fake);
            let db = db();
            submit(&applier, &db, 10);
            started.recv().unwrap();
            // On a thread of its own: were it to wait for the running
            // apply, the test would otherwise hang here.
            let (queued_tx, queued) = sync_channel(1);
            let queued_at_once = std::thread::scope(|s| {
                s.spawn(|| {
                    applier
                        .checkpoint(db.clone(), Some(staged(20)), 20)
                        .unwrap();
                    queued_tx.send(()).unwrap();
                });
                let at_once = queued.recv_timeout(Duration::from_secs(5)).is_ok();
                release.send(()).unwrap();
                at_once
            });
            let waited = applier.wait();
            let case = format!("the carried apply fails: {carried_fails}");
            assert!(queued_at_once, "{case}: queued behind the running apply");
            if carried_fails {
                assert!(waited.is_err(), "{case}");
                assert_eq!(*applied.lock().unwrap(), [10], "{case}");
                assert_eq!(applier.checkpointed(), 0, "{case}: no checkpoint");
            } else {
                waited.unwrap();
                assert_eq!(*applied.lock().unwrap(), [10, 20], "{case}");
                assert_eq!(applier.checkpointed(), 20, "{case}");
            }
        }
    }

    #[test]
    fn the_applier_is_idle_unless_it_is_behind_or_waited_for() {
        if !crate::store::priority::idle_is_reversible() {
            return; // no permission to leave the idle class: never entered
        }
        // The first apply holds the applier until the test lets it go.
        let (fake, started, release) = gated(&[]);
        let applied = fake.applied.clone();
        let priority = Arc::new(Priority::default());
        let applier = Applier::spawn(Arc::new(fake), priority.clone());
        let db = db();
        submit(&applier, &db, 10);
        started.recv().unwrap();
        let alone = priority.applier_policy();
        // A second job waits behind the running one: the applier is behind.
        submit(&applier, &db, 20);
        let behind = priority.applier_policy();
        // (Asserted only after the gate is open: a failed assertion would
        // otherwise leave the applier's thread, and the test, hanging.)
        release.send(()).unwrap();
        applier.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while priority.applier_policy() != Some(libc::SCHED_IDLE)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(CAUGHT_UP_AFTER);
        }
        let caught_up = priority.applier_policy();
        assert_eq!(alone, Some(libc::SCHED_IDLE), "one job, nobody waiting");
        assert_eq!(behind, Some(libc::SCHED_OTHER), "a job queued behind");
        assert_eq!(caught_up, Some(libc::SCHED_IDLE), "caught up");
        assert_eq!(*applied.lock().unwrap(), [10, 20]);
    }

    #[test]
    fn jobs_queued_before_abandon_are_dropped_and_a_failure_forgotten() {
        for fail_first in [true, false] {
            // The first apply starts, waits for the test, then ends.
            let (fake, started, release) = gated(if fail_first { &[0] } else { &[] });
            let (applier, applied) = applier(fake);
            let db = db();
            submit(&applier, &db, 10);
            started.recv().unwrap();
            submit(&applier, &db, 20); // queued for the sled given up on
            applier.abandon();
            release.send(()).unwrap();
            applier.wait().unwrap();
            assert!(applier.take_error().is_none(), "an abandoned sled's error");
            submit(&applier, &db, 30);
            applier.wait().unwrap();
            let expected: &[u64] = if fail_first { &[30] } else { &[10, 30] };
            assert_eq!(
                *applied.lock().unwrap(),
                expected,
                "fail_first: {fail_first}"
            );
        }
    }
}
