//! Live fan-out of durable readings to `/v1/stream` subscribers (SPEC §4).
//!
//! Owns: topic filters ([`filter`]); the [`Hub`] that routes each commit to
//! the subscribers whose filters match ([`hub`]), attached to the store's
//! writer as a [`crate::store::CommitListener`]; each subscriber's bounded
//! queue and slow policy ([`queue`]); the wire format shared by all
//! subscribers, each reading encoded once ([`wire`]); the per-connection
//! loop with replay and the seam to live delivery ([`session`]); and the
//! in-memory device book behind `/v1/devices` ([`devices`]).
//!
//! Never: blocks the writer thread on a subscriber, or lets a subscriber
//! that does not read grow memory beyond `fanout.subscriber_queue` readings.

pub mod devices;
pub mod filter;
pub mod hub;
pub mod queue;
pub mod session;
pub mod wire;

pub use devices::{DeviceBook, DeviceInfo};
pub use filter::{FilterError, TopicFilter};
pub use hub::{Hub, Subscriber};

/// Readings read back at start-up to learn the devices of `/v1/devices`.
pub const DEVICE_SEED_READINGS: u64 = 100_000;

impl Hub {
    /// Seeds the device book from the newest stored readings. Blocking
    /// (sled): call before serving, or from `spawn_blocking`.
    pub fn seed_devices(
        &self,
        store: &crate::store::Store,
    ) -> Result<(), crate::store::StoreError> {
        let since = store.last_id().saturating_sub(DEVICE_SEED_READINGS);
        let readings = store.read_since(since, DEVICE_SEED_READINGS as usize, |_| true)?;
        self.devices().seed(&readings);
        Ok(())
    }
}
