//! A stored reading as clients (subscribers, `/v1/readings`, MQTT) see it.

use serde::{Deserialize, Serialize};

/// A reading's value: SPEC §2 allows a finite float, an integer, a bool or a
/// short string. Serialized untagged, so JSON shows `21.5`, `3`, `true`, `"on"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
}

/// One stored reading with its server-assigned `id` and `received` time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub id: u64,
    pub device: std::sync::Arc<str>,
    pub sensor: std::sync::Arc<str>,
    pub ts: i64,
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<std::sync::Arc<str>>,
    pub received: i64,
}

impl Reading {
    /// `<device>/<sensor>`, the topic filters match against.
    pub fn topic(&self) -> String {
        format!("{}/{}", self.device, self.sensor)
    }
}
