//! The daemon's one shutdown signal and its one deadline (SPEC §8: exit
//! within `server.shutdown_timeout`, whatever any peer does).
//!
//! [`Shutdown`] wraps the cancellation token every task selects on and fixes
//! the deadline the first time anyone asks for it after cancellation (the
//! daemon's shutdown task asks at once), so every stage measures against
//! the same instant instead of each starting its own `grace` timer:
//! - connections (listener, HTTP requests, device and subscriber sockets)
//!   finish by [`Shutdown::drain_deadline`];
//! - the writer's last flush, the MQTT hand-off and closing the store use
//!   what is left up to [`Shutdown::deadline`]; whatever is still running
//!   then is abandoned (acked readings are already durable).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The share of the grace period kept back from connections for the
/// pipeline behind them (writer flush, MQTT hand-off, closing sled).
const PIPELINE_SHARE: u32 = 4;
/// ... but never more than this: a flush rarely takes long.
const MAX_PIPELINE_RESERVE: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
    grace: Duration,
    deadline: Arc<OnceLock<Instant>>,
}

impl Shutdown {
    pub fn new(grace: Duration) -> Self {
        Shutdown {
            token: CancellationToken::new(),
            grace,
            deadline: Arc::new(OnceLock::new()),
        }
    }

    /// The token to cancel (and to select on).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// When the process must be done: `shutdown_timeout` after the first
    /// caller asked once the token was cancelled (the daemon's shutdown task
    /// asks as soon as it sees it). Before cancellation nothing is fixed and
    /// this is just `shutdown_timeout` from now.
    pub fn deadline(&self) -> Instant {
        if !self.token.is_cancelled() {
            return Instant::now() + self.grace;
        }
        *self.deadline.get_or_init(|| Instant::now() + self.grace)
    }

    /// When connections must be gone, leaving the rest for the pipeline.
    pub fn drain_deadline(&self) -> Instant {
        let reserve = (self.grace / PIPELINE_SHARE).min(MAX_PIPELINE_RESERVE);
        self.deadline() - reserve
    }

    /// `wait` from now, but never past the drain deadline once shutdown
    /// has begun: for a connection's closing handshake.
    pub fn close_by(&self, wait: Duration) -> Instant {
        let by = Instant::now() + wait;
        if self.token.is_cancelled() {
            by.min(self.drain_deadline())
        } else {
            by
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_is_fixed_once_and_connections_finish_first() {
        let s = Shutdown::new(Duration::from_secs(4));
        let early = s.deadline();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.token().cancel();
        assert!(s.deadline() > early, "nothing is fixed before cancellation");
        let d = s.deadline();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.clone().deadline(), d);
        assert_eq!(s.drain_deadline(), d - Duration::from_secs(1));
        let long = Shutdown::new(Duration::from_secs(60));
        long.token().cancel();
        assert_eq!(
            long.deadline() - long.drain_deadline(),
            MAX_PIPELINE_RESERVE
        );
    }
}
