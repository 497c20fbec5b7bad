//! One subscriber's bounded queue of readings (`fanout.subscriber_queue`).
//!
//! The hub pushes from its router task and must never wait for the
//! subscriber: a push takes a short mutex, appends one shared list of
//! readings ([`Routed`]: a commit, or each step of 4,096 of a bigger one,
//! for subscribers to everything; the readings one routing matched for the
//! others), and returns. Subscribers to everything share that list, so a
//! commit costs each of them one reference count, not one per reading. When the queue is full the named
//! policy decides: `drop_oldest` discards the oldest queued readings and
//! counts them (reported as `lagged`), and `disconnect` empties the queue and
//! closes the subscriber (4008). The hub also closes every queue when routing
//! a commit failed, since their subscribers would miss it (1011: they
//! subscribe again with `since`). At most `capacity` readings wait,
//! and no list holds more than `capacity` (a bigger one is cut to its
//! newest `capacity` when pushed, into a list of its own), so the front
//! list's readings already taken or dropped keep at most `capacity` more
//! alive, and a frame being sent at most one take more (a frame spliced
//! from its lists keeps them: at most five fourths of a take's readings,
//! [`super::wire::live_frame`]). A list for
//! subscribers to everything may be a range of its commit, which it keeps
//! alive whole; that is done only for commits of at most
//! [`super::hub::SHARE_COMMIT_UP_TO`] readings, and every later step of
//! that commit is queued behind it, so that is at most one such commit more.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::wire::Routed;
use crate::config::SlowPolicy;

/// Readings for one or more subscribers, in id order.
pub type Items = Arc<Routed>;

pub struct SubscriberQueue {
    state: Mutex<State>,
    capacity: usize,
    policy: SlowPolicy,
    /// Wakes the connection task after a push.
    notify: Notify,
    /// Cancelled when the hub gives up on this subscriber: see
    /// [`SubscriberQueue::why_closed`].
    closed: CancellationToken,
    /// Set just before `closed` is cancelled, for the checks on every push
    /// and every frame: the token's own `is_cancelled` takes a mutex.
    given_up: AtomicBool,
    /// Set before `closed` when routing failed (else the queue overflowed).
    routing_failed: AtomicBool,
    /// Tests: the next push panics while it holds the lock.
    #[cfg(test)]
    panic_in_push: AtomicBool,
}

/// Gives up on the queue if a push panics (a bug) while it holds the
/// state: the state may be half-changed, and its subscriber may have
/// missed what was being pushed. Covers both callers, the router task
/// (which also closes every other queue) and the bridge's relay.
struct FailOnPanic<'a>(&'a SubscriberQueue);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

/// Why the hub gave up on a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Full under the `disconnect` policy.
    Overflowed,
    /// A commit it may have matched was not routed to it.
    RoutingFailed,
}

#[derive(Default)]
struct State {
    /// Lists, each with the index of its first reading still waiting.
    lists: VecDeque<(Items, usize)>,
    /// Readings waiting, over all lists.
    len: usize,
    /// Readings dropped since the last [`SubscriberQueue::take`].
    dropped: u64,
}

impl State {
    /// Discards the oldest `n` waiting readings.
    fn drop_front(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let (items, from) = self.lists.front_mut().expect("n <= len");
            let left = items.len() - *from;
            if left > n {
                *from += n;
                return;
            }
            n -= left;
            self.lists.pop_front();
        }
    }
}

/// What the connection task takes out in one go.
#[derive(Default)]
pub struct Taken {
    /// Readings skipped before `items` (drop_oldest).
    pub dropped: u64,
    /// The readings, as ranges of the lists they were pushed in.
    parts: Vec<(Items, Range<usize>)>,
}

impl Taken {
    /// The readings taken, oldest first, as ranges of their lists.
    pub fn runs(&self) -> impl Iterator<Item = (&Items, Range<usize>)> {
        self.parts.iter().map(|(list, r)| (list, r.clone()))
    }

    /// The readings taken, oldest first.
    pub fn readings(&self) -> impl Iterator<Item = &crate::protocol::Reading> {
        self.runs().flat_map(|(list, r)| list.readings()[r].iter())
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|(_, r)| r.len()).sum()
    }
}

impl SubscriberQueue {
    pub fn new(capacity: usize, policy: SlowPolicy) -> SubscriberQueue {
        SubscriberQueue {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            policy,
            notify: Notify::new(),
            closed: CancellationToken::new(),
            given_up: AtomicBool::new(false),
            routing_failed: AtomicBool::new(false),
            #[cfg(test)]
            panic_in_push: AtomicBool::new(false),
        }
    }

    /// The state, even if a panic poisoned the lock: a panic while holding
    /// it (a bug) also gives up on the queue ([`FailOnPanic`]), so the
    /// session ends with 1011 instead of panicking on the lock.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `items` (all for this subscriber, in id order). Never blocks
    /// beyond the short queue lock.
    pub fn push(&self, items: Items) {
        if self.is_closed() || items.is_empty() {
            return;
        }
        let mut st = self.state();
        let _fail_on_panic = FailOnPanic(self);
        #[cfg(test)]
        if self.panic_in_push.swap(false, Ordering::Relaxed) {
            panic!("deliberate push panic");
        }
        let incoming = items.len();
        let mut from = 0;
        if st.len + incoming > self.capacity {
            match self.policy {
                SlowPolicy::Disconnect => {
                    *st = State::default();
                    drop(st);
                    crate::events::SlowSubscriber::Disconnected.emit();
                    self.give_up();
                    return;
                }
                SlowPolicy::DropOldest => {
                    let excess = st.len + incoming - self.capacity;
                    let from_queue = excess.min(st.len);
                    st.drop_front(from_queue);
                    st.dropped += excess as u64;
                    crate::events::ReadingsSkipped(excess as u64).emit();
                    // More new items than the whole queue holds: keep the newest.
                    from = excess - from_queue;
                }
            }
        }
        // A list bigger than the whole queue is cut to what it keeps, so
        // that no list holds more than `capacity` readings alive.
        let items = if from > 0 {
            Arc::new(items.tail_from(from))
        } else {
            items
        };
        st.len += items.len();
        st.lists.push_back((items, 0));
        drop(st);
        self.notify.notify_one();
    }

    /// Takes up to `max` queued readings and the count of readings dropped
    /// before them.
    pub fn take(&self, max: usize) -> Taken {
        let mut st = self.state();
        let mut taken = Taken {
            dropped: std::mem::take(&mut st.dropped),
            parts: Vec::new(),
        };
        let mut want = st.len.min(max);
        st.len -= want;
        while want > 0 {
            let (items, from) = st.lists.front_mut().expect("want <= len");
            let left = items.len() - *from;
            if left > want {
                taken.parts.push((items.clone(), *from..*from + want));
                *from += want;
                break;
            }
            want -= left;
            let (items, from) = st.lists.pop_front().expect("front");
            let end = items.len();
            taken.parts.push((items, from..end));
        }
        taken
    }

    pub fn is_empty(&self) -> bool {
        let st = self.state();
        st.len == 0 && st.dropped == 0
    }

    /// Resolves after the next push (or at once if one happened since the
    /// last wait).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Makes the next [`SubscriberQueue::notified`] resolve at once.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Cancelled once the hub gives up on this subscriber.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// The hub has given up on this subscriber ([`SubscriberQueue::closed`]
    /// is cancelled), without taking the token's lock.
    pub fn is_closed(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }

    fn give_up(&self) {
        self.given_up.store(true, Ordering::Release);
        self.closed.cancel();
    }

    /// Why [`SubscriberQueue::closed`] was cancelled.
    pub fn why_closed(&self) -> Closed {
        if self.routing_failed.load(Ordering::Acquire) {
            Closed::RoutingFailed
        } else {
            Closed::Overflowed
        }
    }

    /// Gives up on this subscriber because a commit was not routed to it.
    /// Takes no lock: the failed routing may have left one poisoned.
    pub fn fail(&self) {
        self.routing_failed.store(true, Ordering::Release);
        self.give_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(ids: std::ops::Range<u64>) -> Items {
        Arc::new(Routed::of_ids(ids))
    }

    fn ids(t: &Taken) -> Vec<u64> {
        t.readings().map(|r| r.id).collect()
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
        let q = SubscriberQueue::new(3, SlowPolicy::DropOldest);
        q.push(items(1..3));
        q.push(items(3..6));
        let t = q.take(10);
        assert_eq!((t.dropped, ids(&t)), (2, vec![3, 4, 5]));
        q.push(items(6..11));
        let t = q.take(10);
        assert_eq!((t.dropped, ids(&t)), (2, vec![8, 9, 10]));
        assert!(q.is_empty());
    }

    #[test]
    fn takes_and_drops_cut_lists_anywhere() {
        let q = SubscriberQueue::new(5, SlowPolicy::DropOldest);
        q.push(items(1..4));
        q.push(items(4..6));
        let t = q.take(2);
        assert_eq!((t.dropped, ids(&t), t.len()), (0, vec![1, 2], 2));
        q.push(items(6..8));
        q.push(items(8..9));
        // Six waiting for five places: 3 goes, from the front list's rest.
        let t = q.take(4);
        assert_eq!((t.dropped, ids(&t)), (1, vec![4, 5, 6, 7]));
        let t = q.take(4);
        assert_eq!((t.dropped, ids(&t)), (0, vec![8]));
        assert!(q.is_empty() && q.take(4).is_empty());
    }

    #[test]
    fn a_commit_bigger_than_the_queue_is_cut_to_what_it_keeps() {
        let q = SubscriberQueue::new(3, SlowPolicy::DropOldest);
        let big = items(1..11);
        q.push(big.clone());
        assert_eq!(Arc::strong_count(&big), 1, "the queue holds a copy of 3");
        let t = q.take(10);
        assert_eq!((t.dropped, ids(&t)), (7, vec![8, 9, 10]));
    }

    #[test]
    fn disconnect_policy_cancels_and_frees() {
        let q = SubscriberQueue::new(2, SlowPolicy::Disconnect);
        q.push(items(1..3));
        assert!(!q.closed().is_cancelled() && !q.is_closed());
        q.push(items(3..4));
        assert!(q.closed().is_cancelled() && q.is_closed());
        assert_eq!(q.why_closed(), Closed::Overflowed);
        assert!(q.take(10).is_empty());
    }

    #[test]
    fn a_failed_queue_says_why_and_takes_no_more() {
        let q = SubscriberQueue::new(10, SlowPolicy::DropOldest);
        q.push(items(1..3));
        q.fail();
        assert!(q.closed().is_cancelled() && q.is_closed());
        assert_eq!(q.why_closed(), Closed::RoutingFailed);
        q.push(items(3..4));
        assert_eq!(ids(&q.take(10)), vec![1, 2], "nothing pushed after");
    }

    #[test]
    fn a_panic_inside_push_gives_up_on_the_queue_without_poisoning_it() {
        let q = SubscriberQueue::new(10, SlowPolicy::DropOldest);
        q.push(items(1..3));
        q.panic_in_push.store(true, Ordering::Relaxed);
        let pushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.push(items(3..5))));
        assert!(pushed.is_err());
        assert!(q.closed().is_cancelled() && q.is_closed());
        assert_eq!(q.why_closed(), Closed::RoutingFailed);
        // The lock is poisoned; the queue still answers.
        assert!(!q.is_empty());
        assert_eq!(ids(&q.take(10)), vec![1, 2]);
    }
}
