//! What subscribers see on the wire (SPEC §4): the client's ops, the
//! server's messages, and the two encodings. Pure functions, no I/O.
//!
//! A reading is encoded at most once per encoding however many subscribers
//! receive it: [`Item`] keeps its JSON and MessagePack bytes (computed on
//! first use), and [`readings_frame`] splices those bytes into a
//! `{"type":"readings","items":[...]}` frame without re-serializing them.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{Reading, StreamItem};

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
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
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

    /// The item's bytes in `enc`, encoded on first use and then shared.
    pub fn encoded(&self, enc: Encoding) -> &Bytes {
        match enc {
            Encoding::Json => self.json.get_or_init(|| {
                serde_json::to_vec(&self.wire())
                    .expect("readings always encode")
                    .into()
            }),
            Encoding::Msgpack => self.msgpack.get_or_init(|| {
                rmp_serde::to_vec_named(&self.wire())
                    .expect("readings always encode")
                    .into()
            }),
        }
    }
}

/// A frame ready for the socket: text for JSON, binary for MessagePack.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

/// `{"type":"readings","items":[...]}` from already-encoded items.
pub fn readings_frame(enc: Encoding, items: &[Arc<Item>]) -> Frame {
    match enc {
        Encoding::Json => {
            let len: usize = items.iter().map(|i| i.encoded(enc).len() + 1).sum();
            let mut out = String::with_capacity(len + 32);
            out.push_str(r#"{"type":"readings","items":["#);
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                // Produced by serde_json just above: always UTF-8.
                out.push_str(std::str::from_utf8(item.encoded(enc)).expect("JSON is UTF-8"));
            }
            out.push_str("]}");
            Frame::Text(out)
        }
        Encoding::Msgpack => {
            let len: usize = items.iter().map(|i| i.encoded(enc).len()).sum();
            let mut out = Vec::with_capacity(len + 32);
            // Writing into a Vec cannot fail.
            rmp::encode::write_map_len(&mut out, 2).expect("vec write");
            rmp::encode::write_str(&mut out, "type").expect("vec write");
            rmp::encode::write_str(&mut out, "readings").expect("vec write");
            rmp::encode::write_str(&mut out, "items").expect("vec write");
            rmp::encode::write_array_len(&mut out, items.len() as u32).expect("vec write");
            for item in items {
                out.extend_from_slice(item.encoded(enc));
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
    use crate::protocol::Value;
    use serde_json::json;

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
