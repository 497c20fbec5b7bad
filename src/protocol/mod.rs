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

impl From<&LimitsConfig> for Limits {
    fn from(c: &LimitsConfig) -> Limits {
        Limits {
            max_frame_bytes: c.max_frame_bytes,
            max_readings_per_frame: c.max_readings_per_frame,
            readings_per_sec: c.readings_per_sec,
        }
    }
}
