//! Server → device frames (SPEC §3). Each is one MessagePack map with named
//! keys, its `type` first, sent as a binary WebSocket frame.
//!
//! The daemon builds and [`encode`]s the frame structs; a device decodes
//! whatever arrives with [`ServerFrame::decode`]. Both sides use the same
//! structs, so a field added here reaches both.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Invalid,
    UnsupportedFrame,
    RateLimited,
    Overloaded,
    OutOfOrder,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::OutOfOrder => "out_of_order",
        }
    }

    /// Only malformed input counts towards `limits.max_consecutive_errors`
    /// (SPEC §10): being throttled is not misbehaviour.
    pub fn counts_as_bad_frame(self) -> bool {
        matches!(self, ErrorCode::Invalid | ErrorCode::UnsupportedFrame)
    }
}

/// The limits a welcome tells the device about. The daemon converts its
/// configuration into this (`From<&LimitsConfig>`), so this crate does not
/// need to know how the daemon is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_readings_per_frame: usize,
    pub readings_per_sec: u32,
}

// `tag` on a struct writes `"type": "<rename>"` as the first key when
// encoding; decoding a struct alone ignores it, which is why devices decode
// through [`ServerFrame`], whose tag picks the struct.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "welcome")]
pub struct WelcomeFrame<'a> {
    /// Borrowed: device ids never need escaping, and the frame is read once.
    pub device: &'a str,
    pub last_seq: u64,
    pub max_frame_bytes: usize,
    pub max_readings_per_frame: usize,
    pub readings_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "ack")]
pub struct AckFrame {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "error")]
pub struct ErrorFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
}

impl<'a> WelcomeFrame<'a> {
    pub fn new(device: &'a str, last_seq: u64, limits: impl Into<Limits>) -> Self {
        let limits = limits.into();
        WelcomeFrame {
            device,
            last_seq,
            max_frame_bytes: limits.max_frame_bytes,
            max_readings_per_frame: limits.max_readings_per_frame,
            readings_per_sec: limits.readings_per_sec,
        }
    }
}

impl AckFrame {
    pub fn new(seq: u64, duplicate: bool) -> Self {
        AckFrame { seq, duplicate }
    }
}

impl ErrorFrame {
    pub fn new(seq: Option<u64>, code: ErrorCode, detail: impl Into<String>) -> Self {
        ErrorFrame {
            seq,
            code,
            detail: detail.into(),
            retry_after_ms: None,
            expected: None,
        }
    }
}

/// Encodes any server frame as a MessagePack map.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(frame).expect("server frames are plain structs")
}

/// Any server → device frame, as a device reads it. Decode only: each
/// struct writes its own `type` when encoded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    #[serde(borrow)]
    Welcome(WelcomeFrame<'a>),
    Ack(AckFrame),
    Error(ErrorFrame),
}

/// A server frame that is not valid MessagePack, has an unknown `type`, or
/// lacks a field its type requires.
#[derive(Debug, thiserror::Error)]
#[error("undecodable server frame: {0}")]
pub struct DecodeError(#[from] rmp_serde::decode::Error);

impl<'a> ServerFrame<'a> {
    /// Decodes one binary WebSocket frame from the server.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(rmp_serde::from_slice(frame)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame_bytes: 65536,
        max_readings_per_frame: 500,
        readings_per_sec: 100,
    };

    fn as_json(bytes: &[u8]) -> serde_json::Value {
        rmp_serde::from_slice(bytes).unwrap()
    }

    #[test]
    fn frames_encode_as_the_spec_shows_them() {
        let welcome = encode(&WelcomeFrame::new("d1", 41, LIMITS));
        assert_eq!(
            as_json(&welcome),
            serde_json::json!({"type": "welcome", "device": "d1", "last_seq": 41,
                "max_frame_bytes": 65536, "max_readings_per_frame": 500, "readings_per_sec": 100})
        );
        assert_eq!(
            as_json(&encode(&AckFrame::new(42, false))),
            serde_json::json!({"type": "ack", "seq": 42})
        );
        let mut e = ErrorFrame::new(Some(43), ErrorCode::OutOfOrder, "gap");
        e.expected = Some(42);
        assert_eq!(
            as_json(&encode(&e)),
            serde_json::json!({"type": "error", "seq": 43, "code": "out_of_order",
                "detail": "gap", "expected": 42})
        );
    }

    #[test]
    fn type_is_the_first_key() {
        let bytes = encode(&AckFrame::new(1, true));
        let mut rd = &bytes[..];
        assert_eq!(rmp::decode::read_map_len(&mut rd).unwrap(), 3);
        let mut key = [0u8; 8];
        assert_eq!(rmp::decode::read_str(&mut rd, &mut key).unwrap(), "type");
    }

    #[test]
    fn what_the_server_encodes_a_device_decodes() {
        let welcome = encode(&WelcomeFrame::new("d1", 41, LIMITS));
        assert_eq!(
            ServerFrame::decode(&welcome).unwrap(),
            ServerFrame::Welcome(WelcomeFrame::new("d1", 41, LIMITS))
        );
        let dup = encode(&AckFrame::new(7, true));
        assert_eq!(
            ServerFrame::decode(&dup).unwrap(),
            ServerFrame::Ack(AckFrame::new(7, true))
        );
        let mut e = ErrorFrame::new(None, ErrorCode::RateLimited, "slow down");
        e.retry_after_ms = Some(250);
        assert_eq!(
            ServerFrame::decode(&encode(&e)).unwrap(),
            ServerFrame::Error(e)
        );
    }

    #[test]
    fn unknown_types_and_missing_fields_do_not_decode() {
        let frame = |v: serde_json::Value| rmp_serde::to_vec_named(&v).unwrap();
        assert!(ServerFrame::decode(&frame(serde_json::json!({"type": "hello"}))).is_err());
        assert!(ServerFrame::decode(&frame(serde_json::json!({"type": "ack"}))).is_err());
        assert!(ServerFrame::decode(&frame(serde_json::json!({"seq": 1}))).is_err());
        assert!(ServerFrame::decode(&[0xc1]).is_err());
    }
}
