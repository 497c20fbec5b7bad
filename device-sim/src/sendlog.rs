//! When each batch first went on the wire, in microseconds, so subscribers
//! can measure device-to-subscriber latency finer than the readings' own
//! `ts` (whole milliseconds, SPEC §2).
//!
//! A subscriber sees `(device, ts)` for every reading; the devices record
//! `(ts, first send)` per batch here. A reading whose batch is no longer (or
//! never was) in the log falls back to `now − ts`, i.e. millisecond
//! resolution. Each device's log is bounded in age and length, so a long run
//! does not grow it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Entries older than this (in µs) are dropped: latency beyond it is
/// measured from `ts` anyway.
const MAX_AGE_US: u64 = 10_000_000;
/// At most this many batches remembered per device.
const MAX_ENTRIES: usize = 1024;

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One log per device, indexed like the devices (id `<prefix><index + 1>`).
pub struct SendLog {
    prefix: String,
    devices: Vec<Mutex<VecDeque<(i64, u64)>>>,
}

impl SendLog {
    pub fn new(prefix: &str, devices: usize) -> SendLog {
        SendLog {
            prefix: prefix.to_string(),
            devices: (0..devices).map(|_| Mutex::new(VecDeque::new())).collect(),
        }
    }

    /// Books the first send of a batch sampled at `ts` (ms) by device `index`.
    pub fn sent(&self, index: usize, ts: i64, at_us: u64) {
        let Some(log) = self.devices.get(index) else {
            return;
        };
        let mut log = log.lock().unwrap();
        while log.len() >= MAX_ENTRIES
            || log.front().is_some_and(|&(_, at)| at + MAX_AGE_US < at_us)
        {
            log.pop_front();
        }
        log.push_back((ts, at_us));
    }

    /// The device index of `device` if it is one of this run's.
    pub fn index_of(&self, device: &str) -> Option<usize> {
        let n: usize = device.strip_prefix(&self.prefix)?.parse().ok()?;
        (1..=self.devices.len()).contains(&n).then(|| n - 1)
    }

    /// When the earliest batch of device `index` with this `ts` was first
    /// sent, if it is still remembered.
    pub fn first_send(&self, index: usize, ts: i64) -> Option<u64> {
        let log = self.devices.get(index)?.lock().unwrap();
        // Newest last; several batches can share a millisecond.
        let mut found = None;
        for &(t, at) in log.iter().rev() {
            if t == ts {
                found = Some(at);
            } else if t < ts {
                break;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_earliest_send_of_a_millisecond() {
        let log = SendLog::new("sim-", 2);
        log.sent(1, 100, 100_000);
        log.sent(1, 105, 105_300);
        log.sent(1, 105, 105_700);
        log.sent(1, 107, 107_100);
        assert_eq!(log.index_of("sim-2"), Some(1));
        assert_eq!(log.index_of("sim-3"), None);
        assert_eq!(log.index_of("sim-0"), None);
        assert_eq!(log.index_of("other-1"), None);
        assert_eq!(log.first_send(1, 105), Some(105_300));
        assert_eq!(log.first_send(1, 107), Some(107_100));
        assert_eq!(log.first_send(1, 106), None);
        assert_eq!(log.first_send(0, 105), None);
    }

    #[test]
    fn forgets_old_and_excess_entries() {
        let log = SendLog::new("d", 1);
        log.sent(0, 1, 0);
        log.sent(0, 2, MAX_AGE_US + 1);
        assert_eq!(log.first_send(0, 1), None, "older than MAX_AGE_US");
        for i in 0..MAX_ENTRIES as i64 + 10 {
            log.sent(0, 10 + i, MAX_AGE_US + 2);
        }
        assert_eq!(log.devices[0].lock().unwrap().len(), MAX_ENTRIES);
        assert_eq!(log.first_send(0, 10), None);
        assert!(log.first_send(0, 10 + MAX_ENTRIES as i64).is_some());
    }
}
