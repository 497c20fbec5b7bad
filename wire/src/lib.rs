//! The wire model shared by the daemon and device-sim (SPEC §2–§4): what a
//! device sends, what the server answers, and the token that admits it.
//!
//! Owns: the reading and its value ([`Reading`], [`Value`]), decoding and
//! validating a device's MessagePack batch ([`decode_batch`], and
//! [`decode_batch_with`] sharing a connection's sensor names: [`Names`]), the
//! server → device frames and their decoding on the device side
//! ([`WelcomeFrame`], [`AckFrame`], [`ErrorFrame`], [`ServerFrame`]), the
//! items subscribers receive ([`StreamItem`]), the name rule
//! ([`is_valid_name`]), the JWT claim set with minting and
//! verification ([`auth`]), the clock readings are stamped with
//! ([`unix_ms`]), and a cursor for reading MessagePack by hand
//! ([`msgpack`]).
//!
//! Pure functions over bytes and plain types: no sockets, no storage, no
//! runtime. It exists so that a protocol change is made in one place and a
//! client such as device-sim can speak the protocol without compiling the
//! daemon; keep its dependencies to serde, MessagePack, JWT and thiserror.

pub mod auth;
mod batch;
mod frames;
pub mod msgpack;
mod name;
mod reading;
mod stream;
mod time;

pub use batch::{decode_batch, decode_batch_with, Batch, FrameError, Names, ReadingIn, MAX_SEQ};
pub use frames::{
    encode as encode_frame, AckFrame, DecodeError, ErrorCode, ErrorFrame, Limits, ServerFrame,
    WelcomeFrame,
};
pub use name::{is_valid_name, MAX_NAME_LEN, MAX_STRING_VALUE_BYTES, MAX_UNIT_BYTES};
pub use reading::{Reading, Value};
pub use stream::StreamItem;
pub use time::unix_ms;
