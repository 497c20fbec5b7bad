//! The outbox's bookkeeping, without I/O: which readings are waiting, which
//! are with the broker, and how far the cursor may advance.
//!
//! The outbox is the readings log past a cursor. Readings are read from the
//! store into `ready`, handed to the MQTT client (then they sit in `window`
//! until acknowledged), and the cursor is the id below which everything is
//! done: acknowledged, or dropped and counted. Because the broker may ack out
//! of order, the cursor follows the *contiguous* acknowledged prefix only.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::Reading;

/// One reading handed to the MQTT client.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    acked: bool,
}

/// The bookkeeping of one bridge. Ids only ever grow through it.
#[derive(Debug)]
pub struct Outbox {
    /// Everything with `id <= next` has been read from the store (or
    /// skipped); the next read starts after it.
    next: u64,
    /// Read, not yet handed to the client, in id order.
    ready: VecDeque<Reading>,
    /// Handed to the client, in id order, acked or not.
    window: VecDeque<Slot>,
    /// Handed to the client but not yet written to the socket. The client
    /// writes requests in the order it got them, so the n-th write event is
    /// the n-th id here.
    unwritten: VecDeque<u64>,
    /// Written at QoS 1 and awaiting PUBACK, by packet id: the reading's id
    /// and when it was written (for the publish latency).
    by_pkid: HashMap<u16, (u64, Instant)>,
    max_window: usize,
}

impl Outbox {
    /// An outbox whose cursor is `cursor`, handing at most `max_window`
    /// readings to the client at a time.
    pub fn new(cursor: u64, max_window: usize) -> Outbox {
        Outbox {
            next: cursor,
            ready: VecDeque::new(),
            window: VecDeque::new(),
            unwritten: VecDeque::new(),
            by_pkid: HashMap::new(),
            max_window: max_window.max(1),
        }
    }

    /// Everything with `id <= cursor` is done (acknowledged or dropped).
    pub fn cursor(&self) -> u64 {
        self.window
            .front()
            .map(|s| s.id)
            .or_else(|| self.ready.front().map(|r| r.id))
            .map_or(self.next, |id| id - 1)
    }

    /// The last id read from the store (or skipped).
    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Readings handed to the client and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.window.len()
    }

    /// The connection is gone: whatever the client held is lost with it
    /// (clean session) and will be sent again from the cursor.
    pub fn reset(&mut self) {
        self.next = self.cursor();
        self.ready.clear();
        self.window.clear();
        self.unwritten.clear();
        self.by_pkid.clear();
    }

    /// Adds readings read from the store with `id > next()`, in id order.
    /// `upper` is the store's last id taken *before* the read: when the read
    /// came back short of it, the missing ids were deleted by retention.
    /// Returns how many ids were lost that way.
    pub fn extend(&mut self, readings: Vec<Reading>, upper: u64, exhausted: bool) -> u64 {
        let mut lost = 0;
        for r in readings {
            if r.id <= self.next {
                continue;
            }
            lost += r.id - self.next - 1;
            self.next = r.id;
            self.ready.push_back(r);
        }
        if exhausted && upper > self.next {
            lost += upper - self.next;
            self.next = upper;
        }
        lost
    }

    /// Keeps the backlog (`last_id - cursor`) at most `max` by dropping the
    /// oldest readings not yet handed to the client. Returns how many were
    /// dropped. Readings already in flight are left to finish, so the
    /// backlog may exceed `max` by at most the window.
    pub fn enforce_backlog(&mut self, last_id: u64, max: u64) -> u64 {
        if last_id.saturating_sub(self.cursor()) <= max {
            return 0;
        }
        let floor = last_id - max;
        let mut dropped = 0;
        while self.ready.front().is_some_and(|r| r.id <= floor) {
            self.ready.pop_front();
            dropped += 1;
        }
        if floor > self.next {
            dropped += floor - self.next;
            self.next = floor;
        }
        dropped
    }

    /// The next reading to hand to the client, if the window has room.
    pub fn peek_sendable(&self) -> Option<&Reading> {
        if self.window.len() >= self.max_window {
            return None;
        }
        self.ready.front()
    }

    /// The reading from [`Outbox::peek_sendable`] was handed to the client.
    pub fn mark_sent(&mut self) {
        if let Some(r) = self.ready.pop_front() {
            self.window.push_back(Slot {
                id: r.id,
                acked: false,
            });
            self.unwritten.push_back(r.id);
        }
    }

    /// The client wrote the next publish to the socket. At QoS 0 that is as
    /// far as delivery goes, so it counts as acknowledged.
    pub fn written(&mut self, pkid: u16, qos0: bool) {
        let Some(id) = self.unwritten.pop_front() else {
            return;
        };
        if qos0 {
            self.ack_id(id);
        } else {
            self.by_pkid.insert(pkid, (id, Instant::now()));
        }
    }

    /// The broker acknowledged packet `pkid`. If it was ours: how long
    /// after it was written.
    pub fn acked(&mut self, pkid: u16) -> Option<Duration> {
        let (id, written) = self.by_pkid.remove(&pkid)?;
        self.ack_id(id);
        Some(written.elapsed())
    }

    fn ack_id(&mut self, id: u64) {
        if let Some(slot) = self.window.iter_mut().find(|s| s.id == id) {
            slot.acked = true;
        }
        while self.window.front().is_some_and(|s| s.acked) {
            self.window.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Value;

    fn r(id: u64) -> Reading {
        Reading {
            id,
            device: "d1".into(),
            sensor: "t".into(),
            ts: 0,
            value: Value::Int(1),
            unit: None,
            received: 0,
        }
    }

    fn rs(ids: impl IntoIterator<Item = u64>) -> Vec<Reading> {
        ids.into_iter().map(r).collect()
    }

    fn send_all(o: &mut Outbox) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(r) = o.peek_sendable() {
            sent.push(r.id);
            o.mark_sent();
        }
        sent
    }

    #[test]
    fn cursor_follows_the_contiguous_acked_prefix() {
        let mut o = Outbox::new(0, 10);
        assert_eq!(o.extend(rs(1..=3), 3, true), 0);
        assert_eq!(send_all(&mut o), vec![1, 2, 3]);
        for pkid in 1..=3 {
            o.written(pkid, false);
        }
        assert_eq!(o.cursor(), 0);
        assert!(o.acked(2).is_some());
        assert_eq!(o.cursor(), 0, "1 is not acked yet");
        assert!(o.acked(1).is_some());
        assert_eq!(o.cursor(), 2);
        assert!(o.acked(9).is_none(), "unknown pkid");
        assert!(o.acked(3).is_some());
        assert_eq!(o.cursor(), 3);
    }

    #[test]
    fn qos0_counts_as_acked_once_written() {
        let mut o = Outbox::new(5, 10);
        o.extend(rs(6..=7), 7, true);
        send_all(&mut o);
        o.written(0, true);
        assert_eq!(o.cursor(), 6);
        o.written(0, true);
        assert_eq!(o.cursor(), 7);
    }

    #[test]
    fn window_bounds_what_is_handed_out() {
        let mut o = Outbox::new(0, 2);
        o.extend(rs(1..=5), 5, true);
        assert_eq!(send_all(&mut o), vec![1, 2]);
        o.written(1, false);
        o.acked(1);
        assert_eq!(send_all(&mut o), vec![3]);
    }

    #[test]
    fn reset_resends_from_the_cursor() {
        let mut o = Outbox::new(0, 10);
        o.extend(rs(1..=4), 4, true);
        send_all(&mut o);
        o.written(1, false);
        o.written(2, false);
        o.acked(1);
        o.reset();
        assert_eq!(o.cursor(), 1);
        assert_eq!(o.next(), 1);
        assert_eq!(o.in_flight(), 0);
        assert_eq!(o.ready_len(), 0);
    }

    #[test]
    fn retention_gaps_are_counted_as_lost() {
        let mut o = Outbox::new(0, 10);
        assert_eq!(o.extend(rs([4, 5]), 5, true), 3);
        assert_eq!(o.cursor(), 3);
        // An empty read below the store's last id: everything up to it is gone.
        assert_eq!(o.extend(Vec::new(), 9, true), 4);
        assert_eq!(o.next(), 9);
        // A read cut short by its limit says nothing about what follows.
        let mut o = Outbox::new(0, 10);
        assert_eq!(o.extend(rs([1, 2]), 100, false), 0);
        assert_eq!(o.next(), 2);
    }

    #[test]
    fn backlog_over_max_drops_the_oldest_unsent() {
        let mut o = Outbox::new(0, 10);
        assert_eq!(o.enforce_backlog(100, 100), 0);
        assert_eq!(o.enforce_backlog(150, 100), 50);
        assert_eq!(o.cursor(), 50);
        o.extend(rs(51..=60), 60, false);
        assert_eq!(o.enforce_backlog(155, 100), 5);
        assert_eq!(o.cursor(), 55);
        assert_eq!(send_all(&mut o)[0], 56);
    }
}
