//! The applier's CPU priority: idle while nobody waits for it, normal while
//! anybody does.
//!
//! Why: an apply is 1–3 ms of sled's CPU in one call, and the scheduler
//! lets a running thread finish its slice before a thread it woke gets the
//! CPU, even with the other CPU idle (a thread that just ran is "cache hot"
//! and is not moved). On two cores the writer, back from the log's sync,
//! and the runtime's workers waited up to 3 ms behind an apply: `perf sched
//! timehist` showed the applier on the writer's CPU in 13 of the writer's 14
//! waits over 0.8 ms, and those set goal 2's p99 (BENCHMARKS.md, "What
//! holds the writer off its CPU"). A thread in the idle class (`SCHED_IDLE`)
//! is preempted as soon as a normal thread wakes on its CPU.
//!
//! Why not always idle: an idle thread gets almost no CPU while normal
//! threads want all of it, and others wait for the applier: the writer when
//! its queue to the applier is full, for a checkpoint of its own and at the
//! end; and every sled reader while an apply runs, since `apply_batch` holds
//! sled's global concurrency-control lock throughout. Beside two busy loops
//! an always-idle applier cut a flood from 1.39 M to 0.10 M readings/s. So
//! whoever may wait for it counts itself ([`Priority::waiting`]: the
//! writer before it blocks on the applier, every holder of a
//! [`super::Store`] handle on sled) and the applier runs at normal priority
//! while the count is above zero.
//!
//! Leaving the idle class is allowed to an unprivileged process only if
//! `RLIMIT_NICE` allows nice 0 (systemd: `LimitNICE=+0`, as the packaged
//! unit sets) or with `CAP_SYS_NICE`. Where it is not, or where the system
//! call is filtered, the applier simply stays at normal priority:
//! [`idle_is_reversible`] tries both steps on a thread of its own first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Shared by the applier (which adopts its thread) and everyone who may
/// wait for it.
#[derive(Default)]
pub struct Priority {
    /// Callers that may be waiting for the applier right now.
    waiting: AtomicUsize,
    /// The applier's thread, once adopted, and the policy last set on it.
    /// Locked while the policy is set, so that the last setting always
    /// follows the last change of `waiting`.
    applier: Mutex<Option<Applier>>,
}

struct Applier {
    tid: i32,
    policy: i32,
}

impl Priority {
    /// On the applier thread, once: from now on it is idle while nobody
    /// waits. Nothing changes where the idle class could not be left again.
    pub fn adopt_current_thread(&self) {
        if idle_is_reversible() {
            *self.lock() = Some(Applier {
                tid: current_tid(),
                policy: libc::SCHED_OTHER,
            });
            self.settle();
        }
    }

    /// The applier thread is ending: nothing to set any more.
    pub fn release(&self) {
        *self.lock() = None;
    }

    /// Counts the caller as waiting for the applier until the returned
    /// guard is dropped; meanwhile the applier runs at normal priority.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.settle();
        Waiting(self.clone())
    }

    /// Sets the applier's policy from the count: normal while anyone
    /// waits, idle otherwise. A system call only when that changes it.
    fn settle(&self) {
        let mut applier = self.lock();
        let Some(applier) = applier.as_mut() else {
            return;
        };
        let wanted = match self.waiting.load(Ordering::SeqCst) {
            0 => libc::SCHED_IDLE,
            _ => libc::SCHED_OTHER,
        };
        if applier.policy != wanted && set_policy(applier.tid, wanted) {
            applier.policy = wanted;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Applier>> {
        self.applier.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Callers counted as waiting right now, for tests.
    #[cfg(test)]
    pub fn waiting_now(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The adopted thread's policy as the kernel reports it (`None` before
    /// one was adopted), for tests.
    #[cfg(test)]
    pub fn applier_policy(&self) -> Option<i32> {
        let tid = self.lock().as_ref()?.tid;
        // SAFETY: a plain system call on a thread id of this process.
        Some(unsafe { libc::sched_getscheduler(tid) })
    }
}

/// A caller counted as waiting for the applier (see [`Priority::waiting`]).
pub struct Waiting(Arc<Priority>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.settle();
    }
}

/// Whether a thread of this process may enter the idle class and leave it
/// again: tried once, on a thread that exits right after, so that a
/// refusal strands nobody.
pub fn idle_is_reversible() -> bool {
    static REVERSIBLE: OnceLock<bool> = OnceLock::new();
    *REVERSIBLE.get_or_init(|| {
        std::thread::Builder::new()
            .name("sensorgate-prio".into())
            .spawn(|| {
                let tid = current_tid();
                set_policy(tid, libc::SCHED_IDLE) && set_policy(tid, libc::SCHED_OTHER)
            })
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false)
    })
}

fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sets thread `tid`'s policy (priority 0, the only one these two take);
/// false if refused.
fn set_policy(tid: i32, policy: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; a refusal is only an error code.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use super::*;

    /// A thread that adopts `priority` as the applier's, parked until the
    /// returned sender is dropped.
    fn adopt_on_a_thread(priority: &Arc<Priority>) -> std::sync::mpsc::Sender<()> {
        let (adopted_tx, adopted) = channel();
        let (end, ended) = channel::<()>();
        std::thread::spawn({
            let priority = priority.clone();
            move || {
                priority.adopt_current_thread();
                adopted_tx.send(()).unwrap();
                let _ = ended.recv();
                priority.release();
            }
        });
        adopted.recv().unwrap();
        end
    }

    #[test]
    fn the_applier_is_idle_unless_somebody_waits() {
        let priority = Arc::default();
        let _end = adopt_on_a_thread(&priority);
        if !idle_is_reversible() {
            // No permission to come back from idle: it is never entered.
            assert_eq!(priority.applier_policy(), None);
            return;
        }
        assert_eq!(priority.applier_policy(), Some(libc::SCHED_IDLE));
        let first = priority.waiting();
        assert_eq!(priority.applier_policy(), Some(libc::SCHED_OTHER));
        let second = priority.waiting();
        drop(first);
        assert_eq!(
            priority.applier_policy(),
            Some(libc::SCHED_OTHER),
            "one caller still waits"
        );
        drop(second);
        assert_eq!(priority.applier_policy(), Some(libc::SCHED_IDLE));
        assert_eq!(priority.waiting_now(), 0);
    }

    #[test]
    fn waiting_is_counted_before_any_applier_is_adopted() {
        let priority = Arc::new(Priority::default());
        let early = priority.waiting();
        let _end = adopt_on_a_thread(&priority);
        if idle_is_reversible() {
            assert_eq!(
                priority.applier_policy(),
                Some(libc::SCHED_OTHER),
                "adopted while a caller waits"
            );
            drop(early);
            assert_eq!(priority.applier_policy(), Some(libc::SCHED_IDLE));
        }
    }
}
