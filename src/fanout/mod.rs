//! Live fan-out of durable readings to `/v1/stream` subscribers (SPEC §4).
//!
//! Owns: topic filters ([`filter`]). The subscriber hub attaches to the
//! store's writer as a [`crate::store::CommitListener`].

pub mod filter;

pub use filter::{FilterError, TopicFilter};
