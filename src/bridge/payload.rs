//! What goes on the wire to the broker: topics and payloads. Pure functions.

use serde::{Deserialize, Serialize};

use crate::config::Payload;
use crate::protocol::Reading;

/// `<prefix>/<device>/<sensor>`. Device and sensor names cannot contain
/// `/`, `+` or `#` (SPEC §2), so this is always a valid, literal topic.
pub fn topic(prefix: &str, r: &Reading) -> String {
    format!("{prefix}/{}/{}", r.device, r.sensor)
}

/// A published reading: the §4 item fields, plus `origin` (the publishing
/// instance's client id) when relaying is on, so that relaying instances can
/// recognise and skip their own messages.
#[derive(Serialize)]
struct Out<'a> {
    #[serde(flatten)]
    reading: &'a Reading,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
}

/// Encodes `r` as JSON or named-field MessagePack.
pub fn encode(format: Payload, r: &Reading, origin: Option<&str>) -> Vec<u8> {
    let out = Out { reading: r, origin };
    match format {
        Payload::Json => serde_json::to_vec(&out).expect("readings always encode"),
        Payload::Msgpack => rmp_serde::to_vec_named(&out).expect("readings always encode"),
    }
}

/// A reading another instance published, as received from the broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Relayed {
    #[serde(flatten)]
    pub reading: Reading,
    pub origin: Option<String>,
}

/// Decodes a payload in the configured format; `None` if it is not a reading.
pub fn decode(format: Payload, bytes: &[u8]) -> Option<Relayed> {
    match format {
        Payload::Json => serde_json::from_slice(bytes).ok(),
        Payload::Msgpack => rmp_serde::from_slice(bytes).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Value;
    use serde_json::json;

    fn reading() -> Reading {
        Reading {
            id: 7,
            device: "d1".into(),
            sensor: "temp".into(),
            ts: 1_763_800_000_123,
            value: Value::Float(21.5),
            unit: Some("C".into()),
            received: 1_763_800_000_200,
        }
    }

    #[test]
    fn json_payload_is_the_stream_item() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode(Payload::Json, &reading(), None)).unwrap();
        assert_eq!(
            v,
            json!({"id": 7, "device": "d1", "sensor": "temp", "ts": 1_763_800_000_123_i64,
                   "value": 21.5, "unit": "C", "received": 1_763_800_000_200_i64})
        );
        assert_eq!(topic("sg", &reading()), "sg/d1/temp");
    }

    #[test]
    fn payloads_round_trip_with_origin() {
        for format in [Payload::Json, Payload::Msgpack] {
            let bytes = encode(format, &reading(), Some("a"));
            let back = decode(format, &bytes).unwrap();
            assert_eq!(back.reading, reading());
            assert_eq!(back.origin.as_deref(), Some("a"));
        }
        let plain = encode(Payload::Msgpack, &reading(), None);
        assert_eq!(decode(Payload::Msgpack, &plain).unwrap().origin, None);
        assert!(decode(Payload::Json, b"{\"x\":1}").is_none());
    }
}
