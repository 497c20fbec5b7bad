//! What subscribers see on the wire (SPEC §4): the client's ops, the
//! server's messages, and the two encodings. Pure functions, no I/O.
//!
//! A reading is encoded at most once per encoding however many subscribers
//! receive it: [`Item`] keeps its JSON and MessagePack forms (computed on
//! first use), and [`readings_frame`] splices those bytes into a
//! `{"type":"readings","items":[...]}` frame without re-serializing them.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{write_msgpack_value, Reading, StreamItem, Value};

/// The encoding a subscriber chose at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Text frames holding JSON (the default, and `sensorgate.json`).
    Json,
    /// Binary frames holding one MessagePack map (`sensorgate.msgpack`).
    Msgpack,
}

/// Subprotocol names, in order of preference.
pub const PROTO_MSGPACK: &str = "sensorgate.msgpack";
pub const PROTO_JSON: &str = "sensorgate.json";

impl Encoding {
    pub fn from_protocol(p: Option<&str>) -> Encoding {
        match p {
            Some(PROTO_MSGPACK) => Encoding::Msgpack,
            _ => Encoding::Json,
        }
    }
}

/// One reading on its way to subscribers, shared by all of them.
#[derive(Debug)]
pub struct Item {
    pub reading: Reading,
    /// Set for readings relayed from another instance (`mqtt.relay`): they
    /// are live only and their ids come from another instance's sequence.
    pub origin: Option<Arc<str>>,
    /// Kept as a `str` so a JSON frame splices it without checking its
    /// UTF-8 again for every subscriber.
    /// (`String` and `Vec`, not boxed slices: boxing would reallocate
    /// each one to its exact size.)
    json: OnceLock<String>,
    msgpack: OnceLock<Vec<u8>>,
}

impl Item {
    pub fn new(reading: Reading, origin: Option<Arc<str>>) -> Item {
        Item {
            reading,
            origin,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    pub fn id(&self) -> u64 {
        self.reading.id
    }

    pub fn is_relayed(&self) -> bool {
        self.origin.is_some()
    }

    /// The fields of a §4 item, as the wire crate defines them.
    fn wire(&self) -> StreamItem<'_> {
        let r = &self.reading;
        StreamItem {
            id: r.id,
            device: &r.device,
            sensor: &r.sensor,
            ts: r.ts,
            value: &r.value,
            unit: r.unit.as_deref().map(Cow::Borrowed),
            received: r.received,
            origin: self.origin.as_deref().map(Cow::Borrowed),
        }
    }

    /// The item as JSON, encoded on first use and then shared.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| String::from_utf8(item_json(&self.wire())).expect("JSON is UTF-8"))
    }

    /// The item as MessagePack, encoded on first use and then shared.
    pub fn msgpack(&self) -> &[u8] {
        self.msgpack.get_or_init(|| item_msgpack(&self.wire()))
    }
}

/// An item as JSON: the bytes `serde_json::to_vec` gives for a
/// [`StreamItem`], written directly. Why by hand: encoding items was most
/// of a subscriber task's time, and serde's path grows its buffer several
/// times per item and goes through a formatter per field; this writes into
/// one buffer sized up front. The tests compare both byte for byte.
fn item_json(item: &StreamItem<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(JSON_MAX_FIXED + strings_len(item));
    let mut ints = itoa::Buffer::new();
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(ints.format(item.id).as_bytes());
    out.extend_from_slice(b",\"device\":");
    json_str(&mut out, item.device);
    out.extend_from_slice(b",\"sensor\":");
    json_str(&mut out, item.sensor);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ints.format(item.ts).as_bytes());
    out.extend_from_slice(b",\"value\":");
    match item.value {
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(n) => out.extend_from_slice(ints.format(*n).as_bytes()),
        Value::UInt(n) => out.extend_from_slice(ints.format(*n).as_bytes()),
        // Floats are serde_json's own (shortest round-trip digits, null
        // for a non-finite one, which is never stored).
        Value::Float(f) => {
            serde_json::to_writer(&mut out, f).expect("writing to a Vec cannot fail")
        }
        Value::Str(s) => json_str(&mut out, s),
    }
    if let Some(unit) = &item.unit {
        out.extend_from_slice(b",\"unit\":");
        json_str(&mut out, unit);
    }
    out.extend_from_slice(b",\"received\":");
    out.extend_from_slice(ints.format(item.received).as_bytes());
    if let Some(origin) = &item.origin {
        out.extend_from_slice(b",\"origin\":");
        json_str(&mut out, origin);
    }
    out.push(b'}');
    out
}

/// A JSON string. Names (the usual case) never need escaping and are
/// copied; anything else is escaped exactly as serde_json does it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// An item as MessagePack: the bytes `rmp_serde::to_vec_named` gives for
/// a [`StreamItem`] (a map with the field names, the shortest integer
/// forms), written directly into one buffer for the reason [`item_json`]
/// gives. The tests compare both byte for byte.
fn item_msgpack(item: &StreamItem<'_>) -> Vec<u8> {
    use rmp::encode::{write_map_len, write_sint, write_str, write_uint};
    let mut out = Vec::with_capacity(MSGPACK_MAX_FIXED + strings_len(item));
    let fields = 6 + u32::from(item.unit.is_some()) + u32::from(item.origin.is_some());
    // Keys are fixed strings: their bytes (fixstr marker, then the name)
    // are copied rather than encoded each time. Writing into a Vec cannot
    // fail, so results are ignored.
    let o = &mut out;
    let _ = write_map_len(o, fields);
    o.extend_from_slice(b"\xa2id");
    let _ = write_uint(o, item.id);
    o.extend_from_slice(b"\xa6device");
    let _ = write_str(o, item.device);
    o.extend_from_slice(b"\xa6sensor");
    let _ = write_str(o, item.sensor);
    o.extend_from_slice(b"\xa2ts");
    let _ = write_sint(o, item.ts);
    o.extend_from_slice(b"\xa5value");
    write_msgpack_value(o, item.value);
    if let Some(unit) = &item.unit {
        o.extend_from_slice(b"\xa4unit");
        let _ = write_str(o, unit);
    }
    o.extend_from_slice(b"\xa8received");
    let _ = write_sint(o, item.received);
    if let Some(origin) = &item.origin {
        o.extend_from_slice(b"\xa6origin");
        let _ = write_str(o, origin);
    }
    out
}

/// The most bytes of an item's JSON that are not its strings' own: 80 of
/// keys, quotes and punctuation, three 64-bit integers of up to 20 digits,
/// and a value of up to 24 (the longest float). Sizing the buffer by a
/// guess instead cost a reallocation for most items (a profile at 100,000
/// readings/s showed it).
const JSON_MAX_FIXED: usize = 80 + 3 * 20 + 24;

/// The same for MessagePack: the map's marker, 47 bytes of keys, three
/// 9-byte integers, a value of up to 9 bytes and four string headers of up
/// to 5.
const MSGPACK_MAX_FIXED: usize = 1 + 47 + 3 * 9 + 9 + 4 * 5;

/// The bytes of an item's strings, for sizing its buffer.
fn strings_len(item: &StreamItem<'_>) -> usize {
    let value = match item.value {
        Value::Str(s) => s.len(),
        _ => 0,
    };
    item.device.len()
        + item.sensor.len()
        + value
        + item.unit.as_deref().map_or(0, str::len)
        + item.origin.as_deref().map_or(0, str::len)
}

/// A frame ready for the socket: text for JSON, binary for MessagePack.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

/// `{"type":"readings","items":[...]}` from already-encoded items.
pub fn readings_frame<I: std::ops::Deref<Target = Item>>(enc: Encoding, items: &[I]) -> Frame {
    match enc {
        Encoding::Json => {
            let len: usize = items.iter().map(|i| i.json().len() + 1).sum();
            let mut out = String::with_capacity(len + 32);
            out.push_str(r#"{"type":"readings","items":["#);
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(item.json());
            }
            out.push_str("]}");
            Frame::Text(out)
        }
        Encoding::Msgpack => {
            let len: usize = items.iter().map(|i| i.msgpack().len()).sum();
            let mut out = Vec::with_capacity(len + 32);
            // Writing into a Vec cannot fail.
            rmp::encode::write_map_len(&mut out, 2).expect("vec write");
            rmp::encode::write_str(&mut out, "type").expect("vec write");
            rmp::encode::write_str(&mut out, "readings").expect("vec write");
            rmp::encode::write_str(&mut out, "items").expect("vec write");
            rmp::encode::write_array_len(&mut out, items.len() as u32).expect("vec write");
            for item in items {
                out.extend_from_slice(item.msgpack());
            }
            Frame::Binary(out.into())
        }
    }
}

/// Server → subscriber messages other than readings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Notice {
    Subscribed { topics: Vec<String>, last_id: u64 },
    Unsubscribed { topics: Vec<String> },
    Truncated { oldest_id: u64 },
    Lagged { dropped: u64 },
    Error { code: ErrorCode, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCode {
    Invalid,
    Forbidden,
}

impl Notice {
    pub fn error(code: ErrorCode, detail: impl Into<String>) -> Notice {
        Notice::Error {
            code,
            detail: detail.into(),
        }
    }

    pub fn encode(&self, enc: Encoding) -> Frame {
        match enc {
            Encoding::Json => {
                Frame::Text(serde_json::to_string(self).expect("notices always encode"))
            }
            Encoding::Msgpack => Frame::Binary(
                rmp_serde::to_vec_named(self)
                    .expect("notices always encode")
                    .into(),
            ),
        }
    }
}

/// Subscriber → server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Subscribe {
        topics: Vec<String>,
        #[serde(default)]
        since: Option<u64>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
}

/// Decodes a client message: JSON from a text frame, MessagePack from a
/// binary one (either is accepted whatever the handshake chose). The error
/// is the `detail` of an `invalid` notice.
pub fn decode_op(text: Option<&str>, binary: Option<&[u8]>) -> Result<Op, String> {
    let value: serde_json::Value = match (text, binary) {
        (Some(t), _) => serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?,
        (None, Some(b)) => rmp_serde::from_slice(b).map_err(|e| format!("not MessagePack: {e}"))?,
        (None, None) => return Err("empty message".into()),
    };
    let op = value
        .get("op")
        .ok_or("missing \"op\"")?
        .as_str()
        .ok_or("\"op\" must be a string")?
        .to_string();
    if op != "subscribe" && op != "unsubscribe" {
        return Err(format!(
            "unknown op {op:?} (expected \"subscribe\" or \"unsubscribe\")"
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("bad {op}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Items covering every field form: each value kind and its integer
    /// sizes, optional fields present and absent, strings that need escaping.
    fn varied_items() -> Vec<Item> {
        let values = [
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(0),
            Value::Int(-1),
            Value::Int(-33),
            Value::Int(-129),
            Value::Int(-40_000),
            Value::Int(-3_000_000_000),
            Value::Int(i64::MIN),
            Value::Int(127),
            Value::Int(255),
            Value::Int(65_535),
            Value::Int(4_294_967_296),
            Value::Int(i64::MAX),
            Value::UInt(u64::MAX),
            Value::Float(21.5),
            Value::Float(-0.0),
            Value::Float(1e-7),
            Value::Float(1.0e300),
            Value::Float(3.0),
            Value::Float(f64::NAN),
            Value::Str(String::new()),
            Value::Str("open".into()),
            Value::Str("a \"quoted\" \\ line\nwith\ttabs \u{1} and é°".into()),
        ];
        let mut items = Vec::new();
        for (n, value) in values.into_iter().enumerate() {
            let n = n as u64;
            let unit = match n % 3 {
                0 => None,
                1 => Some("°C".into()),
                _ => Some("\"in\"".into()),
            };
            let origin = (n % 2 == 0).then(|| Arc::<str>::from(format!("site-{n}\r")));
            let reading = Reading {
                id: [0, 1, 200, 70_000, u64::MAX][n as usize % 5],
                device: format!("dev-{n}").into(),
                sensor: ["t", "sensor_1.x:y-z", "s\u{7f}"][n as usize % 3].into(),
                ts: [1_763_800_000_123, -5, 0][n as usize % 3],
                value,
                unit,
                received: [i64::MAX, 1_763_800_000_124, -1][n as usize % 3],
            };
            items.push(Item::new(reading, origin));
        }
        items
    }

    #[test]
    fn items_are_encoded_as_serde_encodes_them() {
        for item in varied_items() {
            let wire = item.wire();
            assert_eq!(
                item.json(),
                serde_json::to_string(&wire).unwrap(),
                "{wire:?}"
            );
            assert_eq!(
                item.msgpack(),
                rmp_serde::to_vec_named(&wire).unwrap(),
                "{wire:?}"
            );
        }
    }

    /// The buffers are sized so that no item needs a second allocation:
    /// the fixed parts' bounds hold at every integer's extreme and the
    /// longest float. (Strings that need escaping may grow it; they are
    /// rare.)
    #[test]
    fn encoded_items_fit_their_first_buffer() {
        let mut extremes = Vec::new();
        for value in [
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Float(-1.2345678901234567e-308),
            Value::Str("v".into()),
            Value::Bool(false),
        ] {
            let reading = Reading {
                id: u64::MAX,
                device: "d".into(),
                sensor: "s".into(),
                ts: i64::MIN,
                value,
                unit: Some("u".into()),
                received: i64::MIN,
            };
            extremes.push(Item::new(reading, Some("o".into())));
        }
        for item in &extremes {
            let wire = item.wire();
            let room = strings_len(&wire);
            assert!(item_json(&wire).len() <= JSON_MAX_FIXED + room, "{wire:?}");
            assert!(
                item_msgpack(&wire).len() <= MSGPACK_MAX_FIXED + room,
                "{wire:?}"
            );
        }
        // Both bounds are tight. JSON: the longest float at every extreme.
        // MessagePack: strings long enough for 5-byte headers.
        let longest = extremes[2].wire();
        assert_eq!(
            item_json(&longest).len(),
            JSON_MAX_FIXED + strings_len(&longest)
        );
        let long: Arc<str> = "x".repeat(1 << 16).into();
        let reading = Reading {
            id: u64::MAX,
            device: long.clone(),
            sensor: long.clone(),
            ts: i64::MIN,
            value: Value::Int(i64::MIN),
            unit: Some(long.clone()),
            received: i64::MIN,
        };
        let item = Item::new(reading, Some(long));
        let wire = item.wire();
        assert_eq!(
            item_msgpack(&wire).len(),
            MSGPACK_MAX_FIXED + strings_len(&wire)
        );
    }

    fn item(id: u64) -> Arc<Item> {
        Arc::new(Item::new(
            Reading {
                id,
                device: "d1".into(),
                sensor: "temp".into(),
                ts: 5,
                value: Value::Float(21.5),
                unit: Some("C".into()),
                received: 7,
            },
            None,
        ))
    }

    #[test]
    fn json_frame_splices_items() {
        let Frame::Text(t) = readings_frame(Encoding::Json, &[item(1), item(2)]) else {
            panic!("JSON frames are text");
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"type":"readings","items":[
                {"id":1,"device":"d1","sensor":"temp","ts":5,"value":21.5,"unit":"C","received":7},
                {"id":2,"device":"d1","sensor":"temp","ts":5,"value":21.5,"unit":"C","received":7}]})
        );
    }

    #[test]
    fn msgpack_frame_decodes_to_the_same_fields() {
        let Frame::Binary(b) = readings_frame(Encoding::Msgpack, &[item(1)]) else {
            panic!("MessagePack frames are binary");
        };
        let v: serde_json::Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(v["type"], "readings");
        assert_eq!(v["items"][0]["id"], 1);
        assert_eq!(v["items"][0]["unit"], "C");
    }

    #[test]
    fn ops_decode_and_reject_unknown() {
        assert_eq!(
            decode_op(
                Some(r##"{"op":"subscribe","topics":["#"],"since":3}"##),
                None
            ),
            Ok(Op::Subscribe {
                topics: vec!["#".into()],
                since: Some(3)
            })
        );
        assert!(decode_op(Some(r#"{"op":"nope"}"#), None)
            .unwrap_err()
            .contains("unknown op"));
        assert!(decode_op(Some("{"), None).is_err());
        assert!(decode_op(Some(r#"{"op":"subscribe"}"#), None).is_err());
    }

    #[test]
    fn notices_are_tagged_by_type() {
        let Frame::Text(t) = Notice::Lagged { dropped: 3 }.encode(Encoding::Json) else {
            panic!()
        };
        assert_eq!(t, r#"{"type":"lagged","dropped":3}"#);
    }
}
