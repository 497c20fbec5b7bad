//! The registry of known devices: what `/v1/devices` reports besides
//! connection state (that is [`crate::ingest::Registry`]'s), per device, when
//! its last reading was stored and which sensors it has reported.
//!
//! Kept in memory, fed by the writer: the [`DeviceBook`] is a
//! [`CommitListener`], updated from every durable commit (on the writer
//! thread, under a short lock), and seeded at start-up from the newest stored
//! readings, as the store's start reads them back to verify them (the book
//! is the start's [`SeenAtStart`]). Relayed readings of other instances
//! (`mqtt.relay`) are not stored here and never reach it. Bounded: at most
//! [`MAX_DEVICES`] devices (the least recently seen is forgotten past that)
//! and [`MAX_SENSORS`] sensor names per device.
//!
//! Every operation per reading is O(log n) in the number of devices: an
//! ordered index by last-seen time finds the device to forget without a
//! scan, so a fleet past the cap (reporting round-robin, each new report
//! evicting the oldest) costs the writer thread the same per reading as a
//! small one (BENCHMARKS.md, `cargo bench --bench devices`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::protocol::Reading;
use crate::store::{Commit, CommitListener, SeenAtStart};

pub const MAX_DEVICES: usize = 100_000;
pub const MAX_SENSORS: usize = 256;
/// Sensor names a run's readings are checked against by address before the
/// device's set: more than a device's usual handful.
const RECENT_NAMES: usize = 8;

#[derive(Default)]
pub struct DeviceBook {
    inner: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    devices: HashMap<Arc<str>, Seen>,
    /// `(last_seen, device)` of every entry of `devices`: the first is the
    /// one to forget.
    by_last_seen: BTreeSet<(i64, Arc<str>)>,
}

#[derive(Debug, Clone, Default)]
struct Seen {
    last_seen: i64,
    sensors: BTreeSet<Arc<str>>,
}

/// One row of `/v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    pub device: String,
    pub connected: bool,
    /// Unix ms (server clock) of the device's newest stored reading.
    pub last_seen: Option<i64>,
    pub sensors: Vec<String>,
}

/// Where readings come from: live commits, in commit order, or the
/// store's start, newest first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Live,
    NewestFirst,
}

impl DeviceBook {
    /// Records a commit's readings.
    pub fn observe(&self, readings: &[Reading]) {
        self.observe_in(readings, Order::Live);
    }

    fn observe_in(&self, readings: &[Reading], order: Order) {
        let mut book = self.book();
        // A commit holds whole batches, one device each: look each run's
        // device up once rather than once per reading.
        for run in readings.chunk_by(|a, b| a.device == b.device) {
            book.observe_run(run, order);
        }
    }

    /// The book, even if a panic while it was held poisoned the lock: the
    /// worst left is a device listed with a stale entry, and `/v1/devices`
    /// and the writer's commits must go on.
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Devices known now (at most [`MAX_DEVICES`]).
    pub fn len(&self) -> usize {
        self.book().devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every known device plus every connected one, sorted by id.
    pub fn list(&self, connected: &[Arc<str>]) -> Vec<DeviceInfo> {
        let book = self.book();
        let devices = &book.devices;
        let live: std::collections::HashSet<&str> = connected.iter().map(|d| &**d).collect();
        let mut out: Vec<DeviceInfo> = devices
            .iter()
            .map(|(d, s)| DeviceInfo {
                device: d.to_string(),
                connected: live.contains(&**d),
                last_seen: Some(s.last_seen),
                sensors: s.sensors.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        for d in connected {
            if !devices.contains_key(d) {
                out.push(DeviceInfo {
                    device: d.to_string(),
                    connected: true,
                    last_seen: None,
                    sensors: Vec::new(),
                });
            }
        }
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }
}

/// Seeded from the newest stored readings (about
/// [`crate::store::VERIFIED_AT_START`], whole segments) as the store's start
/// verifies them, rather than reading them again. They come newest segment
/// first; a full book then keeps the newest devices all the same.
impl SeenAtStart for DeviceBook {
    fn segment(&self, readings: &[Reading]) {
        self.observe_in(readings, Order::NewestFirst);
    }

    fn set_aside(&self) {
        *self.book() = Book::default();
    }
}

impl CommitListener for DeviceBook {
    fn on_commit(&self, readings: &Arc<Commit>) {
        self.observe(readings);
    }
}

impl Book {
    /// Records readings of one device (`run` is not empty).
    fn observe_run(&mut self, run: &[Reading], order: Order) {
        let device = &run[0].device;
        let newest = run
            .iter()
            .map(|r| r.received)
            .max()
            .expect("a run is never empty");
        // A known device is the rule: one look-up for it.
        if let Some(seen) = self.devices.get_mut(&**device) {
            if newest > seen.last_seen {
                // Re-key the index entry: O(log n).
                self.by_last_seen.remove(&(seen.last_seen, device.clone()));
                self.by_last_seen.insert((newest, device.clone()));
                seen.last_seen = newest;
            }
            note_sensors(&mut seen.sensors, run);
            return;
        }
        if self.devices.len() >= MAX_DEVICES {
            // Newest first, a device seen before every one kept would be
            // the next forgotten: the book is full of newer ones. (Live, a
            // new device always comes in, whatever its `received`: it is
            // reporting now.)
            if order == Order::NewestFirst
                && self
                    .by_last_seen
                    .first()
                    .is_some_and(|(oldest, _)| newest < *oldest)
            {
                return;
            }
            self.evict_oldest();
        }
        let mut seen = Seen {
            last_seen: newest,
            sensors: BTreeSet::new(),
        };
        note_sensors(&mut seen.sensors, run);
        self.by_last_seen.insert((newest, device.clone()));
        self.devices.insert(device.clone(), seen);
    }

    /// Forgets the least recently seen device (ties: the smallest id).
    fn evict_oldest(&mut self) {
        if let Some((_, device)) = self.by_last_seen.pop_first() {
            self.devices.remove(&device);
        }
    }
}

/// Adds a run's sensor names to a device's (at most [`MAX_SENSORS`]).
fn note_sensors(sensors: &mut BTreeSet<Arc<str>>, run: &[Reading]) {
    // The names this run has already seen, by address: a batch cycles
    // through a few sensors, and the decoder's fast path shares each name
    // as one `Arc` across a connection's readings (for its first 32
    // distinct names and units), so those readings are found here without
    // a look-up in the set. Names it does not share are simply looked up.
    // The address alone identifies a name: each `Arc<str>` is an
    // allocation of its own, and all of them live for this call.
    let mut recent = [std::ptr::null::<u8>(); RECENT_NAMES];
    let mut slot = 0;
    for r in run {
        let ptr = r.sensor.as_ptr();
        if recent.contains(&ptr) {
            continue;
        }
        recent[slot] = ptr;
        slot = (slot + 1) % recent.len();
        if sensors.len() >= MAX_SENSORS {
            break;
        }
        // Known names are the rule: a look-up costs no reference count
        // (inserting a known one clones and drops one).
        if !sensors.contains(&r.sensor) {
            sensors.insert(r.sensor.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Value;

    fn reading(device: &str, received: i64) -> Reading {
        Reading {
            id: 0,
            device: Arc::from(device),
            sensor: "t".into(),
            ts: 0,
            value: Value::Float(1.0),
            unit: None,
            received,
        }
    }

    #[test]
    fn past_the_cap_the_least_recently_seen_are_forgotten() {
        let book = DeviceBook::default();
        let n = MAX_DEVICES + 50_000;
        // Device i reports at time i; device 0 reports again at the end of
        // the first round, so it is the newest of the old ones.
        for i in 0..MAX_DEVICES {
            book.observe(&[reading(&format!("d{i}"), i as i64)]);
        }
        book.observe(&[reading("d0", n as i64 * 2)]);
        for i in MAX_DEVICES..n {
            book.observe(&[reading(&format!("d{i}"), i as i64)]);
        }
        assert_eq!(book.len(), MAX_DEVICES);
        let list = book.list(&[]);
        let ids: std::collections::HashSet<_> = list.iter().map(|d| d.device.as_str()).collect();
        assert!(ids.contains("d0"), "re-reported device kept");
        assert!(!ids.contains("d1"), "oldest forgotten");
        // Forgotten: d1 ..= d50_000 (50,000 new, d0 survived).
        assert!(!ids.contains("d50000") && ids.contains("d50001"));
        assert!(ids.contains(format!("d{}", n - 1).as_str()));
        let book = book.inner.lock().unwrap();
        assert_eq!(book.by_last_seen.len(), book.devices.len());
        assert_eq!(book.by_last_seen.last().unwrap().1.as_ref(), "d0");
    }

    /// The start shows the newest readings first: a full book still ends
    /// with the newest devices, and forgets what a set-aside store showed.
    #[test]
    fn newest_first_past_the_cap_keeps_the_newest_devices() {
        let book = DeviceBook::default();
        let n = MAX_DEVICES + 10;
        for i in (0..n).rev() {
            book.segment(&[reading(&format!("d{i}"), i as i64)]);
        }
        assert_eq!(book.len(), MAX_DEVICES);
        let list = book.list(&[]);
        let ids: std::collections::HashSet<_> = list.iter().map(|d| d.device.as_str()).collect();
        assert!(
            !ids.contains("d9") && ids.contains("d10"),
            "the oldest ten left"
        );
        assert!(ids.contains(format!("d{}", n - 1).as_str()));
        // Live, a new device comes in whatever its `received` (a clock
        // stepped back): it is reporting now.
        book.observe(&[reading("late", -1)]);
        assert_eq!(book.len(), MAX_DEVICES);
        assert!(book.list(&[]).iter().any(|d| d.device == "late"));
        book.set_aside();
        assert!(book.is_empty());
    }

    #[test]
    fn an_older_reading_does_not_move_last_seen_back() {
        let book = DeviceBook::default();
        book.observe(&[reading("a", 10), reading("a", 5)]);
        assert_eq!(book.list(&[])[0].last_seen, Some(10));
        assert_eq!(book.inner.lock().unwrap().by_last_seen.len(), 1);
    }

    #[test]
    fn a_commit_of_several_devices_records_each_run() {
        let book = DeviceBook::default();
        let with = |device: &str, sensor: &str, received: i64| Reading {
            sensor: sensor.into(),
            ..reading(device, received)
        };
        book.observe(&[
            with("a", "t", 3),
            with("a", "h", 4),
            with("b", "t", 9),
            with("a", "p", 2),
            with("a", "t", 7),
        ]);
        let list = book.list(&[]);
        let a = list.iter().find(|d| d.device == "a").unwrap();
        let b = list.iter().find(|d| d.device == "b").unwrap();
        assert_eq!((a.last_seen, b.last_seen), (Some(7), Some(9)));
        assert_eq!(a.sensors, ["h", "p", "t"]);
        assert_eq!(b.sensors, ["t"]);
        let book = book.inner.lock().unwrap();
        assert_eq!(book.by_last_seen.len(), 2);
    }

    /// Names are found by address among the run's last few: shared names
    /// cycling past those, in runs of one device and of a known one, are
    /// all recorded, and the cap still holds.
    #[test]
    fn shared_names_cycling_are_each_recorded_up_to_the_cap() {
        let book = DeviceBook::default();
        let names: Vec<Arc<str>> = (0..20).map(|n| Arc::from(format!("s{n:02}"))).collect();
        let run = |from: usize, count: usize| -> Vec<Reading> {
            (0..60)
                .map(|i| Reading {
                    sensor: names[from + (i * 7) % count].clone(),
                    ..reading("a", i as i64)
                })
                .collect()
        };
        book.observe(&run(0, 10));
        book.observe(&run(10, 10));
        let list = book.list(&[]);
        let expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(list[0].sensors, expected);

        // Names that come back within the last few (found by address),
        // with new ones between them: each new one is still recorded.
        let order = [0, 1, 0, 2, 0, 3, 1, 4, 0, 5, 2, 6];
        let shared: Vec<Reading> = order
            .iter()
            .map(|&n| Reading {
                sensor: names[n].clone(),
                ..reading("c", 1)
            })
            .collect();
        book.observe(&shared);
        let list = book.list(&[]);
        let c = list.iter().find(|d| d.device == "c").unwrap();
        assert_eq!(c.sensors, expected[..7]);

        let many: Vec<Reading> = (0..MAX_SENSORS + 40)
            .map(|i| Reading {
                sensor: Arc::from(format!("m{i:04}")),
                ..reading("b", 1)
            })
            .collect();
        book.observe(&many);
        let list = book.list(&[]);
        let b = list.iter().find(|d| d.device == "b").unwrap();
        assert_eq!(b.sensors.len(), MAX_SENSORS);
    }
}
