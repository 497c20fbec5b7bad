//! One subscriber's bounded queue of readings (`fanout.subscriber_queue`).
//!
//! The hub pushes on the writer thread and must never wait for the
//! subscriber: a push takes a short mutex, appends `Arc`s, and returns. When
//! the queue is full the named policy decides: `drop_oldest` discards the
//! oldest queued readings and counts them (reported as `lagged`), and
//! `disconnect` empties the queue and cancels the subscriber (closed 4008).
//! Memory per subscriber is therefore at most `capacity` shared items.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::wire::Item;
use crate::config::SlowPolicy;

pub struct SubscriberQueue {
    state: Mutex<State>,
    capacity: usize,
    policy: SlowPolicy,
    /// Wakes the connection task after a push.
    notify: Notify,
    /// Cancelled when the `disconnect` policy gives up on this subscriber.
    overflowed: CancellationToken,
}

#[derive(Default)]
struct State {
    items: VecDeque<Arc<Item>>,
    /// Readings dropped since the last [`SubscriberQueue::take`].
    dropped: u64,
}

/// What the connection task takes out in one go.
#[derive(Default)]
pub struct Taken {
    /// Readings skipped before `items` (drop_oldest).
    pub dropped: u64,
    pub items: Vec<Arc<Item>>,
}

impl SubscriberQueue {
    pub fn new(capacity: usize, policy: SlowPolicy) -> SubscriberQueue {
        SubscriberQueue {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            policy,
            notify: Notify::new(),
            overflowed: CancellationToken::new(),
        }
    }

    /// Appends `items` (all for this subscriber, in id order). Never blocks
    /// beyond the short queue lock.
    pub fn push(&self, items: impl ExactSizeIterator<Item = Arc<Item>>) {
        if self.overflowed.is_cancelled() || items.len() == 0 {
            return;
        }
        let mut st = self.state.lock().expect("subscriber queue lock");
        let incoming = items.len();
        if st.items.len() + incoming > self.capacity {
            match self.policy {
                SlowPolicy::Disconnect => {
                    st.items = VecDeque::new();
                    drop(st);
                    crate::events::SlowSubscriber::Disconnected.emit();
                    self.overflowed.cancel();
                    return;
                }
                SlowPolicy::DropOldest => {
                    let excess = st.items.len() + incoming - self.capacity;
                    let from_queue = excess.min(st.items.len());
                    st.items.drain(..from_queue);
                    st.dropped += excess as u64;
                    crate::events::ReadingsSkipped(excess as u64).emit();
                    // More new items than the whole queue holds: keep the newest.
                    let skip_new = excess - from_queue;
                    st.items.extend(items.skip(skip_new));
                }
            }
        } else {
            st.items.extend(items);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Takes up to `max` queued items and the count of readings dropped
    /// before them.
    pub fn take(&self, max: usize) -> Taken {
        let mut st = self.state.lock().expect("subscriber queue lock");
        let n = st.items.len().min(max);
        Taken {
            dropped: std::mem::take(&mut st.dropped),
            items: st.items.drain(..n).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        let st = self.state.lock().expect("subscriber queue lock");
        st.items.is_empty() && st.dropped == 0
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

    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Reading, Value};

    fn items(ids: std::ops::Range<u64>) -> Vec<Arc<Item>> {
        ids.map(|id| {
            Arc::new(Item::new(
                Reading {
                    id,
                    device: "d".into(),
                    sensor: "s".into(),
                    ts: 0,
                    value: Value::Int(0),
                    unit: None,
                    received: 0,
                },
                None,
            ))
        })
        .collect()
    }

    fn ids(t: &Taken) -> Vec<u64> {
        t.items.iter().map(|i| i.id()).collect()
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
        let q = SubscriberQueue::new(3, SlowPolicy::DropOldest);
        q.push(items(1..3).into_iter());
        q.push(items(3..6).into_iter());
        let t = q.take(10);
        assert_eq!((t.dropped, ids(&t)), (2, vec![3, 4, 5]));
        q.push(items(6..11).into_iter());
        let t = q.take(10);
        assert_eq!((t.dropped, ids(&t)), (2, vec![8, 9, 10]));
        assert!(q.is_empty());
    }

    #[test]
    fn disconnect_policy_cancels_and_frees() {
        let q = SubscriberQueue::new(2, SlowPolicy::Disconnect);
        q.push(items(1..3).into_iter());
        assert!(!q.overflowed().is_cancelled());
        q.push(items(3..4).into_iter());
        assert!(q.overflowed().is_cancelled());
        assert!(q.take(10).items.is_empty());
    }
}
