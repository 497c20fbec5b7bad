//! The applier: a thread that applies staged commits to sled, so the
//! writer thread does not wait for it.
//!
//! Why: an `apply_batch` of [`super::APPLY_AT_READINGS`] readings takes sled
//! 1–2.5 ms. On the writer thread every commit queued meanwhile waited for
//! it; at the fleet shape (1,000 devices, one small batch a second each)
//! that was one commit in a hundred, which set the p99. The commits it
//! applies are already durable in the write-ahead log, so nothing waits
//! for an apply except a checkpoint (and the writer's seq cache before it
//! is cleared): they call [`Applier::wait`].
//!
//! Order and failure: jobs are applied one at a time in the order they
//! were submitted, so sled still holds a prefix of the log. The first
//! failure is kept for the writer ([`Applier::take_error`], or returned by
//! the next [`Applier::wait`]); later jobs of the same generation are
//! skipped, since applying them would leave sled with a hole. When the
//! writer gives up on its sled ([`Applier::abandon`], on any store failure)
//! jobs still queued for that sled are dropped unapplied; the reopen
//! replays them from the log. Each job carries its own `sled::Db`: while one
//! is queued, sled's file lock keeps a reopen from opening the same files
//! a second time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::store::{Store, StoreError};

enum Job {
    Apply {
        generation: u64,
        db: sled::Db,
        batch: sled::Batch,
        /// The newest id in `batch`.
        through: u64,
    },
    /// Answered once every job before it is done.
    Wait(SyncSender<()>),
}

#[derive(Default)]
struct Shared {
    /// Bumped by [`Applier::abandon`]: jobs of older generations are skipped.
    generation: AtomicU64,
    failure: Mutex<Failure>,
}

#[derive(Default)]
struct Failure {
    /// The generation whose apply failed: its later jobs are skipped.
    generation: Option<u64>,
    /// That failure, until the writer takes it.
    error: Option<StoreError>,
}

impl Shared {
    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Failure> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer's handle on the applier thread.
pub(super) struct Applier {
    tx: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    pub(super) fn spawn(store: Arc<Store>) -> Applier {
        Applier::spawn_with(apply, move |through| store.applied_through(through))
    }

    /// The applier with its two effects given: `apply` one batch to sled,
    /// and tell readers that sled holds everything up to an id (`applied`).
    fn spawn_with(
        apply: impl Fn(&sled::Db, sled::Batch) -> Result<(), StoreError> + Send + 'static,
        applied: impl Fn(u64) + Send + 'static,
    ) -> Applier {
        // One job waiting beside the one being applied: a writer that
        // stages faster than sled applies waits here, which bounds the
        // store's tail (the readings readers find outside sled).
        let (tx, rx) = sync_channel(1);
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("sensorgate-apply".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, rx, apply, applied)
            })
            .expect("spawning the applier thread");
        Applier {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        }
    }

    /// Queues `batch` (every commit up to `through`) to be applied to `db`.
    /// Blocks while another job is already waiting.
    pub(super) fn submit(
        &self,
        db: sled::Db,
        batch: sled::Batch,
        through: u64,
    ) -> Result<(), StoreError> {
        let job = Job::Apply {
            generation: self.shared.generation.load(Ordering::Acquire),
            db,
            batch,
            through,
        };
        self.send(job)
    }

    /// Waits until everything submitted is applied; the first failure since
    /// the last [`Applier::abandon`], if any.
    pub(super) fn wait(&self) -> Result<(), StoreError> {
        let (tx, rx) = sync_channel(1);
        self.send(Job::Wait(tx))?;
        rx.recv().map_err(|_| stopped())?;
        self.take_error().map_or(Ok(()), Err)
    }

    /// A failure of an apply submitted since the last [`Applier::abandon`],
    /// without waiting.
    pub(super) fn take_error(&self) -> Option<StoreError> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let mut failure = self.shared.lock_failure();
        if failure.generation == Some(generation) {
            failure.error.take()
        } else {
            None
        }
    }

    /// The writer gave up on its sled: what is still queued is not applied.
    pub(super) fn abandon(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.tx
            .as_ref()
            .expect("sender lives until drop")
            .send(job)
            .map_err(|_| stopped())
    }
}

impl Drop for Applier {
    /// Lets the thread finish what is queued, then joins it.
    fn drop(&mut self) {
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

fn run(
    shared: &Shared,
    rx: Receiver<Job>,
    apply: impl Fn(&sled::Db, sled::Batch) -> Result<(), StoreError>,
    applied: impl Fn(u64),
) {
    for job in rx {
        match job {
            Job::Wait(done) => {
                let _ = done.send(());
            }
            Job::Apply {
                generation,
                db,
                batch,
                through,
            } => {
                let current = shared.generation.load(Ordering::Acquire);
                if generation != current || shared.lock_failure().generation == Some(generation) {
                    continue; // abandoned, or behind a failed apply
                }
                match guarded(|| apply(&db, batch)) {
                    // Even for a sled abandoned meanwhile: the reopen, which
                    // resets what readers take sled to hold, cannot come
                    // before `db` is dropped (sled's file lock).
                    Ok(()) => applied(through),
                    Err(e) => {
                        *shared.lock_failure() = Failure {
                            generation: Some(generation),
                            error: Some(e),
                        }
                    }
                }
                drop(db);
            }
        }
    }
}

fn apply(db: &sled::Db, batch: sled::Batch) -> Result<(), StoreError> {
    Ok(db.apply_batch(batch)?)
}

/// `f`, a panic (inside sled) becoming an error: the thread lives on and
/// the writer learns of it like of any failed apply.
fn guarded(f: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(StoreError::Sled(sled::Error::ReportableBug(format!(
            "sled panicked applying a batch: {}",
            crate::store::recovery::panic_message(&*panic)
        ))))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// An applier whose `apply` fails on the calls listed (counting from
    /// 0; `panics` panics instead of failing), and the ids it reported
    /// applied.
    fn applier(fails: &'static [usize], panics: bool) -> (Applier, Arc<Mutex<Vec<u64>>>) {
        let calls = AtomicUsize::new(0);
        let applied = Arc::new(Mutex::new(Vec::new()));
        let applier = Applier::spawn_with(
            move |_, _| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                if !fails.contains(&call) {
                    return Ok(());
                }
                if panics {
                    panic!("deliberate");
                }
                Err(StoreError::Sync(std::io::Error::other("deliberate")))
            },
            {
                let applied = applied.clone();
                move |id| applied.lock().unwrap().push(id)
            },
        );
        (applier, applied)
    }

    fn db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    fn submit(applier: &Applier, db: &sled::Db, through: u64) {
        applier
            .submit(db.clone(), sled::Batch::default(), through)
            .unwrap();
    }

    #[test]
    fn jobs_are_applied_in_order_and_wait_returns_after_them() {
        let (applier, applied) = applier(&[], false);
        let db = db();
        for id in [10, 20, 30] {
            submit(&applier, &db, id);
        }
        applier.wait().unwrap();
        assert_eq!(*applied.lock().unwrap(), [10, 20, 30]);
        assert!(applier.take_error().is_none());
    }

    #[test]
    fn after_a_failure_nothing_more_is_applied_until_abandoned() {
        for panics in [false, true] {
            let (applier, applied) = applier(&[1], panics);
            let db = db();
            for id in [10, 20, 30] {
                submit(&applier, &db, id);
            }
            let e = applier.wait().expect_err("the second apply failed");
            let expected = if panics { "panicked" } else { "deliberate" };
            assert!(e.to_string().contains(expected), "{e}");
            // 30 comes after the failed 20: applying it would leave a hole.
            assert_eq!(*applied.lock().unwrap(), [10], "panics: {panics}");
            assert!(applier.take_error().is_none(), "reported once");
            submit(&applier, &db, 40);
            applier.wait().unwrap();
            assert_eq!(*applied.lock().unwrap(), [10], "still skipped");

            // The writer gave up on that sled (and reopened it): what it
            // submits from now on is applied again.
            applier.abandon();
            submit(&applier, &db, 50);
            applier.wait().unwrap();
            assert_eq!(*applied.lock().unwrap(), [10, 50]);
        }
    }

    #[test]
    fn jobs_queued_before_abandon_are_dropped_and_a_failure_forgotten() {
        for fail_first in [true, false] {
            // The first apply starts, waits for the test, then ends.
            let (started_tx, started) = sync_channel(1);
            let (release, released) = sync_channel::<()>(1);
            let released = Mutex::new(released);
            let first = std::sync::atomic::AtomicBool::new(true);
            let applied = Arc::new(Mutex::new(Vec::new()));
            let applier = Applier::spawn_with(
                move |_, _| {
                    if !first.swap(false, Ordering::SeqCst) {
                        return Ok(());
                    }
                    started_tx.send(()).unwrap();
                    released.lock().unwrap().recv().unwrap();
                    match fail_first {
                        true => Err(StoreError::Sync(std::io::Error::other("deliberate"))),
                        false => Ok(()),
                    }
                },
                {
                    let applied = applied.clone();
                    move |id| applied.lock().unwrap().push(id)
                },
            );
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
