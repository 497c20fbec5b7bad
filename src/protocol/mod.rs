//! The wire model (SPEC §2, §3): readings, device batches, and the frames
//! each side sends.
//!
//! The model itself lives in the `sensorgate-wire` crate, shared with
//! device-sim, so a protocol change is made once; it is re-exported here so
//! the daemon, tests and benches keep using `sensorgate::protocol::*`. What
//! stays here is what needs the daemon: how its configured limits become
//! the limits a welcome announces.

pub use sensorgate_wire::{
    decode_batch, decode_batch_with, encode_frame, is_valid_name, AckFrame, Batch, ErrorCode,
    ErrorFrame, FrameError, Limits, Names, Reading, ReadingIn, ServerFrame, StreamItem, Value,
    WelcomeFrame, MAX_NAME_LEN, MAX_SEQ, MAX_STRING_VALUE_BYTES, MAX_UNIT_BYTES,
};

use crate::config::LimitsConfig;

/// Appends `v` as MessagePack, as serde writes a [`Value`] (untagged, the
/// shortest integer form): the one place the daemon's hand-written
/// encoders (stream items, stored rows) write a value.
pub fn write_msgpack_value(out: &mut Vec<u8>, v: &Value) {
    use rmp::encode::{write_bool, write_f64, write_sint, write_str, write_uint};
    // Writing into a Vec cannot fail.
    let _ = match v {
        Value::Bool(b) => write_bool(out, *b).map_err(drop),
        Value::Int(n) => write_sint(out, *n).map(drop).map_err(drop),
        Value::UInt(n) => write_uint(out, *n).map(drop).map_err(drop),
        Value::Float(f) => write_f64(out, *f).map_err(drop),
        Value::Str(s) => write_str(out, s).map_err(drop),
    };
}

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Limits {
        Limits {
            max_frame_bytes: c.max_frame_bytes,
            max_readings_per_frame: c.max_readings_per_frame,
            readings_per_sec: c.readings_per_sec,
        }
    }
}
