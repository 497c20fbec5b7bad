//! Server → subscriber readings (SPEC §4): the fields of one item of a
//! `{"type":"readings","items":[...]}` message, as the daemon writes them
//! and as a client reads them.
//!
//! Only the item lives here: the daemon splices already-encoded items into
//! the `readings` envelope, so there is no envelope struct to share.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::Value;

/// One reading as a subscriber receives it, fields in the order they are
/// written. Everything borrows, so neither encoding nor decoding copies:
/// device ids and sensors are names (SPEC §2) and never need a JSON escape;
/// `unit` and `origin` may, so they fall back to an owned string when they
/// do.
///
/// `V` is how the value is held: the daemon writes a `&Value`; a client that
/// does not look at values reads `serde::de::IgnoredAny` and skips parsing
/// them. (device-sim reads only `device` and `ts`, by hand: its `frame`
/// module.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamItem<'a, V = &'a Value> {
    pub id: u64,
    pub device: &'a str,
    pub sensor: &'a str,
    pub ts: i64,
    pub value: V,
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Cow<'a, str>>,
    pub received: i64,
    /// Set for readings relayed from another instance (`mqtt.relay`).
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows when it can: serde borrows a bare `Cow`
/// field but always copies one inside an `Option`.
fn borrowed_str<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    fn item(value: &Value, unit: Option<&str>) -> String {
        serde_json::to_string(&StreamItem {
            id: 1,
            device: "d1",
            sensor: "temp",
            ts: 5,
            value,
            unit: unit.map(Cow::Borrowed),
            received: 7,
            origin: None,
        })
        .unwrap()
    }

    #[test]
    fn items_are_written_in_spec_order_without_empty_fields() {
        assert_eq!(
            item(&Value::Float(21.5), Some("C")),
            r#"{"id":1,"device":"d1","sensor":"temp","ts":5,"value":21.5,"unit":"C","received":7}"#
        );
        assert_eq!(
            item(&Value::Bool(true), None),
            r#"{"id":1,"device":"d1","sensor":"temp","ts":5,"value":true,"received":7}"#
        );
    }

    #[test]
    fn a_client_reads_items_borrowed_and_can_skip_values() {
        let text = item(&Value::Str("open".into()), Some("%"));
        let read: StreamItem<'_, IgnoredAny> = serde_json::from_str(&text).unwrap();
        assert_eq!((read.device, read.ts, read.received), ("d1", 5, 7));
        assert!(matches!(read.unit, Some(Cow::Borrowed("%"))));
        let read: StreamItem<'_, Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(read.value, Value::Str("open".into()));
    }

    #[test]
    fn a_unit_that_needs_escaping_still_reads() {
        let text = item(&Value::Int(3), Some("\"in\""));
        let read: StreamItem<'_, IgnoredAny> = serde_json::from_str(&text).unwrap();
        assert_eq!(read.unit.as_deref(), Some("\"in\""));
    }
}
