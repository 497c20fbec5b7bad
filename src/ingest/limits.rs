//! Rate limits with governor (SPEC §3, §10).
//!
//! - [`DeviceLimiter`]: readings per second per device, with a burst. Keyed by
//!   device rather than per connection, so reconnecting does not refill it.
//! - [`HandshakeLimiter`]: handshakes per second per client IP, checked before
//!   any token work so a flood of bad tokens costs almost nothing.
//!
//! Both keep state per key; [`prune_forever`] drops keys that have been idle
//! long enough to be full again, so the maps stay bounded by the active set.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Outcome of a rate check that failed: how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Milliseconds, rounded up so a device that waits exactly this long passes.
    pub fn as_millis_ceil(self) -> u64 {
        let ms = self.0.as_micros().div_ceil(1000);
        (ms as u64).max(1)
    }
}

#[derive(Clone)]
pub struct DeviceLimiter {
    inner: Arc<Keyed<Arc<str>>>,
}

impl DeviceLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let quota = Quota::per_second(nonzero(per_sec)).allow_burst(nonzero(burst));
        DeviceLimiter {
            inner: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    /// Takes `n` reading tokens from `device`'s bucket, or none at all.
    pub fn check(&self, device: &Arc<str>, n: usize) -> Result<(), RetryAfter> {
        check_n(&self.inner, device, n)
    }
}

#[derive(Clone)]
pub struct HandshakeLimiter {
    inner: Arc<Keyed<IpAddr>>,
}

impl HandshakeLimiter {
    pub fn new(per_sec: u32) -> Self {
        let quota = Quota::per_second(nonzero(per_sec));
        HandshakeLimiter {
            inner: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        check_n(&self.inner, &ip, 1)
    }
}

fn check_n<K: Clone + Hash + Eq>(limiter: &Keyed<K>, key: &K, n: usize) -> Result<(), RetryAfter> {
    let n = nonzero(u32::try_from(n).unwrap_or(u32::MAX));
    match limiter.check_key_n(key, n) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(RetryAfter(
            not_until.wait_time_from(DefaultClock::default().now()),
        )),
        // More than the burst can ever hold. Configuration keeps the burst at
        // least `max_readings_per_frame`, so this is unreachable for valid
        // batches; answer with a full refill period rather than panic.
        Err(_) => Err(RetryAfter(Duration::from_secs(1))),
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Every minute, forgets keys whose buckets are full again, until `shutdown`.
pub async fn prune_forever(
    devices: DeviceLimiter,
    handshakes: HandshakeLimiter,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                devices.inner.retain_recent();
                devices.inner.shrink_to_fit();
                handshakes.inner.retain_recent();
                handshakes.inner.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_passes_only_if_the_bucket_holds_all_its_readings() {
        let l = DeviceLimiter::new(10, 50);
        let d: Arc<str> = Arc::from("d1");
        assert!(l.check(&d, 50).is_ok());
        let retry = l.check(&d, 5).unwrap_err();
        // 5 readings at 10/s refill in about half a second.
        assert!(
            retry.as_millis_ceil() > 300 && retry.as_millis_ceil() <= 500,
            "{retry:?}"
        );
        // Another device has its own bucket.
        assert!(l.check(&Arc::from("d2"), 50).is_ok());
    }

    #[test]
    fn handshakes_are_limited_per_ip() {
        let l = HandshakeLimiter::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_err());
        assert!(l.check(b).is_ok());
    }
}
