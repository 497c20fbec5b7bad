//! Live fan-out of durable readings to `/v1/stream` subscribers (SPEC §4).
//!
//! Owns: topic filters ([`filter`]); the [`Hub`] that routes each commit to
//! the subscribers whose filters match ([`hub`]), on a task the store's
//! writer hands commits to (its [`hub::Router`] is a
//! [`crate::store::CommitListener`]); each subscriber's bounded
//! queue and slow policy ([`queue`]); the wire format shared by all
//! subscribers, each routed list of readings encoded once however many
//! subscribers it goes to ([`wire`]); the per-connection
//! loop with replay and the seam to live delivery ([`session`]). The device
//! book behind `/v1/devices` is [`crate::devices`]'s.
//!
//! Never: makes the writer thread wait for a subscriber, or lets a subscriber
//! that does not read grow memory beyond `fanout.subscriber_queue` readings
//! (plus the part of a list already taken, as [`queue`] says).

pub mod filter;
pub mod hub;
pub mod queue;
pub mod session;
pub mod wire;

pub use filter::{FilterError, TopicFilter};
pub use hub::{Hub, Subscriber};
