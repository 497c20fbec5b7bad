//! Server → device frames (SPEC §3). Each is one MessagePack map with named
//! keys, sent as a binary WebSocket frame.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WelcomeFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub device: &'a str,
    pub last_seq: u64,
    pub max_frame_bytes: usize,
    pub max_readings_per_frame: usize,
    pub readings_per_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AckFrame {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seq: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorFrame {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
}

impl<'a> WelcomeFrame<'a> {
    pub fn new(device: &'a str, last_seq: u64, limits: &crate::config::LimitsConfig) -> Self {
        WelcomeFrame {
            kind: "welcome",
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
        AckFrame {
            kind: "ack",
            seq,
            duplicate,
        }
    }
}

impl ErrorFrame {
    pub fn new(seq: Option<u64>, code: ErrorCode, detail: impl Into<String>) -> Self {
        ErrorFrame {
            kind: "error",
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
