//! The durable readings sled does not hold yet.
//!
//! A commit is durable once the write-ahead log is synced; the writer
//! applies commits to sled in groups of many ([`super::writer`]), because
//! every sled `apply_batch` costs the same I/O whatever its size. Between
//! the two, readers (stream replay, `/v1/readings`, the bridge) find those
//! readings here: the same `Arc` the commit listeners were given, so the
//! tail costs no copy. It is bounded by how much the writer lets build up
//! before applying (`APPLY_MAX_READINGS` plus a group, three times over:
//! staged, one apply queued and one being applied), and every apply
//! empties it of what it put in sled.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Commit;

/// Durable commits newer than what sled holds, in id order.
#[derive(Debug)]
pub(super) struct Tail {
    /// Every id up to this one is in sled (applied; maybe not yet durable
    /// there: the log covers that).
    applied: u64,
    commits: VecDeque<Arc<Commit>>,
}

/// What a reader sees at one instant: sled up to `applied`, then `commits`,
/// all of it up to `upper` (the newest durable id).
pub(super) struct View {
    pub upper: u64,
    pub applied: u64,
    pub commits: Vec<Arc<Commit>>,
}

impl Tail {
    pub(super) fn new(applied: u64) -> Tail {
        Tail {
            applied,
            commits: VecDeque::new(),
        }
    }

    /// A commit just became durable. Already in sled (applied before its
    /// sync): nothing to keep.
    pub(super) fn publish(&mut self, readings: &Arc<Commit>) {
        if readings.last().is_some_and(|r| r.id > self.applied) {
            self.commits.push_back(readings.clone());
        }
    }

    /// sled now holds every id up to `id`: readers find those there.
    pub(super) fn applied_through(&mut self, id: u64) {
        self.applied = self.applied.max(id);
        while self
            .commits
            .front()
            .is_some_and(|c| c.last().is_none_or(|r| r.id <= self.applied))
        {
            self.commits.pop_front();
        }
    }

    /// After a reopen replayed the log: sled holds everything up to `id`.
    pub(super) fn reset(&mut self, id: u64) {
        self.applied = id;
        self.commits.clear();
    }

    pub(super) fn view(&self, upper: u64) -> View {
        View {
            upper,
            applied: self.applied,
            commits: self.commits.iter().cloned().collect(),
        }
    }

    /// The oldest id held here (for a store whose sled holds no reading yet).
    pub(super) fn first_id(&self) -> Option<u64> {
        self.commits.front().and_then(|c| c.first()).map(|r| r.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::Reading;

    fn commit(ids: std::ops::RangeInclusive<u64>) -> Arc<Commit> {
        Arc::new(
            ids.map(|id| Reading {
                id,
                device: Arc::from("d"),
                sensor: "s".into(),
                ts: 0,
                value: crate::protocol::Value::Int(0),
                unit: None,
                received: 0,
            })
            .collect(),
        )
    }

    #[test]
    fn an_apply_drops_exactly_the_commits_sled_now_holds() {
        let mut tail = Tail::new(10);
        tail.publish(&commit(5..=10)); // applied before its sync
        tail.publish(&commit(11..=12));
        tail.publish(&commit(13..=20));
        assert_eq!(tail.first_id(), Some(11));
        tail.applied_through(12);
        let view = tail.view(20);
        assert_eq!(view.applied, 12);
        assert_eq!(view.commits.len(), 1);
        assert_eq!(view.commits[0][0].id, 13);
        tail.reset(30);
        assert_eq!(tail.first_id(), None);
        assert_eq!(tail.view(30).applied, 30);
    }
}
