//! What goes on the wire to the broker: topics and payloads, and what the
//! relay makes of incoming messages. Pure functions.

use serde::{Deserialize, Serialize};

use crate::config::Payload;
use crate::protocol::{is_valid_name, Reading, Value, MAX_STRING_VALUE_BYTES, MAX_UNIT_BYTES};

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

/// Why the relay refused an incoming message (the `reason` label of
/// `sensorgate_mqtt_relay_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a reading in the configured format, or fields outside SPEC §2
    /// (bad names, a non-finite float, an oversized string or unit).
    Malformed,
    /// The topic is not `<prefix>/<device>/<sensor>` of the reading itself.
    Topic,
    /// No `origin`: published by an instance without `mqtt.relay` (or by
    /// something else); we cannot say whose it is.
    NoOrigin,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Topic => "topic",
            Rejected::NoOrigin => "no_origin",
        }
    }
}

/// What the relay does with one incoming message on `topic`: `Ok(Some(r))`
/// to deliver (another instance's reading, origin set), `Ok(None)` to skip
/// silently (our own message, `origin == own`), `Err` to count and drop.
pub fn relayed(
    format: Payload,
    prefix: &str,
    own: &str,
    topic: &str,
    bytes: &[u8],
) -> Result<Option<Relayed>, Rejected> {
    let r = decode(format, bytes).ok_or(Rejected::Malformed)?;
    let Some(origin) = r.origin.as_deref() else {
        return Err(Rejected::NoOrigin);
    };
    if origin == own {
        return Ok(None);
    }
    if origin.is_empty() || !well_formed(&r.reading) {
        return Err(Rejected::Malformed);
    }
    // `topic` is `<prefix>/<device>/<sensor>`, and names contain no `/`.
    let expected = topic
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix('/'))
        .and_then(|t| t.split_once('/'));
    if expected != Some((&r.reading.device, &r.reading.sensor)) {
        return Err(Rejected::Topic);
    }
    Ok(Some(r))
}

/// The SPEC §2 rules a stored reading satisfies.
fn well_formed(r: &Reading) -> bool {
    let value_ok = match &r.value {
        Value::Float(f) => f.is_finite(),
        Value::Str(s) => s.len() <= MAX_STRING_VALUE_BYTES,
        Value::Bool(_) | Value::Int(_) | Value::UInt(_) => true,
    };
    is_valid_name(&r.device)
        && is_valid_name(&r.sensor)
        && value_ok
        && r.unit.as_ref().is_none_or(|u| u.len() <= MAX_UNIT_BYTES)
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

    #[test]
    fn relay_delivers_others_skips_own_and_rejects_the_rest() {
        for format in [Payload::Json, Payload::Msgpack] {
            let from_b = encode(format, &reading(), Some("b"));
            let got = relayed(format, "sg", "a", "sg/d1/temp", &from_b)
                .unwrap()
                .expect("another instance's reading is relayed");
            assert_eq!(got.reading, reading());
            assert_eq!(got.origin.as_deref(), Some("b"));
            // Our own message: skipped, not an error.
            let from_a = encode(format, &reading(), Some("a"));
            assert_eq!(relayed(format, "sg", "a", "sg/d1/temp", &from_a), Ok(None));
            // No origin: an instance without relay, or a stranger.
            let plain = encode(format, &reading(), None);
            assert_eq!(
                relayed(format, "sg", "a", "sg/d1/temp", &plain),
                Err(Rejected::NoOrigin)
            );
            // The topic must be the reading's own.
            for topic in [
                "sg/d1/hum",
                "sg/d2/temp",
                "other/d1/temp",
                "sgx/d1/temp",
                "sg/d1",
            ] {
                assert_eq!(
                    relayed(format, "sg", "a", topic, &from_b),
                    Err(Rejected::Topic),
                    "{topic}"
                );
            }
        }
        // A multi-level prefix.
        let from_b = encode(Payload::Json, &reading(), Some("b"));
        assert!(
            relayed(Payload::Json, "site/1", "a", "site/1/d1/temp", &from_b)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn malformed_relay_payloads_are_rejected_not_panics() {
        let bad: Vec<&[u8]> = vec![
            b"",
            b"not json",
            b"{\"x\":1}",
            b"[1,2,3]",
            b"\xc1\xff\x00",
            br#"{"id":1,"device":"d1","sensor":"temp","ts":1,"value":1,"received":1,"origin":7}"#,
            br#"{"id":-1,"device":"d1","sensor":"temp","ts":1,"value":1,"received":1,"origin":"b"}"#,
            br#"{"id":1,"device":"d/1","sensor":"temp","ts":1,"value":1,"received":1,"origin":"b"}"#,
            br#"{"id":1,"device":"d1","sensor":"temp","ts":1,"value":[1],"received":1,"origin":"b"}"#,
            br#"{"id":1,"device":"d1","sensor":"temp","ts":1,"value":1,"unit":"0123456789abcdefg","received":1,"origin":"b"}"#,
            br#"{"id":1,"device":"d1","sensor":"temp","ts":1,"value":1,"received":1,"origin":""}"#,
        ];
        for b in bad {
            assert_eq!(
                relayed(Payload::Json, "sg", "a", "sg/d1/temp", b),
                Err(Rejected::Malformed),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        // A NaN can only come in MessagePack.
        let mut nan = reading();
        nan.value = Value::Float(f64::NAN);
        let bytes = encode(Payload::Msgpack, &nan, Some("b"));
        assert_eq!(
            relayed(Payload::Msgpack, "sg", "a", "sg/d1/temp", &bytes),
            Err(Rejected::Malformed)
        );
        // JSON bytes when MessagePack is configured, and the reverse.
        let json = encode(Payload::Json, &reading(), Some("b"));
        assert!(relayed(Payload::Msgpack, "sg", "a", "sg/d1/temp", &json).is_err());
        let msgpack = encode(Payload::Msgpack, &reading(), Some("b"));
        assert!(relayed(Payload::Json, "sg", "a", "sg/d1/temp", &msgpack).is_err());
    }
}
