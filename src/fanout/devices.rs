//! What `/v1/devices` reports besides connection state: per device, when
//! its last reading was stored and which sensors it has reported.
//!
//! Kept in memory, updated from every commit (on the writer thread, under a
//! short lock), and seeded at start-up from the newest stored readings
//! ([`DeviceBook::seed`]). Bounded: at most [`MAX_DEVICES`] devices (the
//! least recently seen is forgotten past that) and [`MAX_SENSORS`] sensor
//! names per device.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::protocol::Reading;

pub const MAX_DEVICES: usize = 100_000;
pub const MAX_SENSORS: usize = 256;

#[derive(Default)]
pub struct DeviceBook {
    devices: Mutex<HashMap<Arc<str>, Seen>>,
}

#[derive(Debug, Clone, Default)]
struct Seen {
    last_seen: i64,
    sensors: BTreeSet<String>,
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

impl DeviceBook {
    /// Records a commit's readings.
    pub fn observe(&self, readings: &[Reading]) {
        let mut devices = self.devices.lock().expect("device book lock");
        for r in readings {
            let seen = match devices.get_mut(&*r.device) {
                Some(s) => s,
                None => {
                    if devices.len() >= MAX_DEVICES {
                        evict_oldest(&mut devices);
                    }
                    devices.entry(r.device.clone()).or_default()
                }
            };
            seen.last_seen = seen.last_seen.max(r.received);
            if seen.sensors.len() < MAX_SENSORS && !seen.sensors.contains(&r.sensor) {
                seen.sensors.insert(r.sensor.clone());
            }
        }
    }

    /// Seeds from stored readings (start-up): same as observing them.
    pub fn seed(&self, readings: &[Reading]) {
        self.observe(readings)
    }

    /// Every known device plus every connected one, sorted by id.
    pub fn list(&self, connected: &[Arc<str>]) -> Vec<DeviceInfo> {
        let devices = self.devices.lock().expect("device book lock");
        let live: std::collections::HashSet<&str> = connected.iter().map(|d| &**d).collect();
        let mut out: Vec<DeviceInfo> = devices
            .iter()
            .map(|(d, s)| DeviceInfo {
                device: d.to_string(),
                connected: live.contains(&**d),
                last_seen: Some(s.last_seen),
                sensors: s.sensors.iter().cloned().collect(),
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

fn evict_oldest(devices: &mut HashMap<Arc<str>, Seen>) {
    if let Some(oldest) = devices
        .iter()
        .min_by_key(|(_, s)| s.last_seen)
        .map(|(d, _)| d.clone())
    {
        devices.remove(&oldest);
    }
}
