//! WebSocket connections, server side: devices on `/v1/ingest`
//! ([`crate::ingest::connection`]) and subscribers on `/v1/stream`
//! ([`crate::fanout::session`]).
//!
//! Owns: the handshake and the task each upgraded socket runs in, tracked
//! on the daemon's `edge` tracker ([`upgrade`]); the socket itself, RFC 6455
//! frames in and out with no buffer held while the peer is silent
//! ([`socket`]); why a connection ends and the close code each ending gets
//! (RFC 6455, SPEC §3 and §4: [`End`]); the keep-alive, a ping every
//! `server.ping_interval` and an end after `server.idle_timeout` without a
//! frame from the peer ([`KeepAlive`]); the bounded send ([`send`]) and the
//! bounded closing handshake ([`close`]).
//!
//! Never: waits on a peer without a bound. A peer that takes nothing for
//! `server.idle_timeout` loses its socket at once (a closing frame would
//! queue behind what it never read), and a closing frame gets
//! [`CLOSE_TIMEOUT`], never past the shutdown drain deadline.

mod socket;
mod upgrade;

pub use socket::{push_binary_frame, Message, Outbound, Socket, MAX_SLICES};
pub use upgrade::{on_upgrade, Rejection, Upgrade};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::shutdown::Shutdown;

/// How long the closing frame may take to leave (never past the shutdown
/// drain deadline); a peer that does not take it just loses the socket.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Close codes (RFC 6455 §7.4.1, SPEC §3 and §4).
mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const BAD_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const REPLACED: u16 = 4001;
    pub const LAGGED: u16 = 4008;
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Shutdown,
    /// A newer connection of the same device took over (devices only).
    Replaced,
    /// The subscriber's queue overflowed under `disconnect` (subscribers only).
    Lagged,
    /// Nothing from the peer for `server.idle_timeout`.
    Idle,
    /// A send the peer did not take within `server.idle_timeout`: its
    /// socket is full of what it never read, so a closing frame would only
    /// wait behind that for [`CLOSE_TIMEOUT`]; the socket is dropped.
    Stalled,
    TooManyErrors,
    TooBig,
    /// An RFC 6455 violation (unmasked, oversized control or fragmented
    /// control frame, bad opcode...).
    Protocol,
    /// A text frame that is not UTF-8.
    BadData,
    StoreFailed,
    /// A commit was not routed to this subscriber (the router panicked):
    /// it subscribes again with `since` to have it replayed.
    RoutingFailed,
    /// The peer closed or the socket broke: nothing more to send.
    Gone,
}

impl End {
    /// The close code and reason to send; `None` when the socket is gone.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            End::Shutdown => (code::GOING_AWAY, "server shutting down"),
            End::Replaced => (code::REPLACED, "replaced"),
            End::Lagged => (code::LAGGED, "subscriber too slow"),
            End::Idle => (code::NORMAL, "idle timeout"),
            End::TooManyErrors => (code::POLICY, "too many consecutive errors"),
            End::TooBig => (code::TOO_BIG, "frame too big"),
            End::Protocol => (code::PROTOCOL, "protocol error"),
            End::BadData => (code::BAD_DATA, "invalid UTF-8 in a text frame"),
            End::StoreFailed => (code::INTERNAL, "store unavailable"),
            End::RoutingFailed => (
                code::INTERNAL,
                "live readings missed: resubscribe with since",
            ),
            End::Stalled | End::Gone => return None,
        })
    }
}

/// Which kind of peer a socket serves, for the write-timeout metric.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Device,
    Subscriber,
}

impl Peer {
    fn as_str(self) -> &'static str {
        match self {
            Peer::Device => "device",
            Peer::Subscriber => "subscriber",
        }
    }
}

/// Sends one message unless `stop` comes first (checked first: a loop's
/// shutdown, replacement or overflow wins over a send that is ready) or the
/// peer does not take it within `write_timeout` (then [`End::Stalled`]).
/// Cancelling the send never leaves half a frame on the wire: a frame that
/// started to go out stays queued in the socket, and the next send or the
/// closing frame writes its rest first. (A message cut off before it
/// started is dropped; every caller ends the connection then anyway.)
pub async fn send(
    socket: &mut Socket,
    msg: Outbound,
    write_timeout: Duration,
    peer: Peer,
    stop: impl Future<Output = End>,
) -> Result<(), End> {
    tokio::select! {
        biased;
        end = stop => Err(end),
        r = tokio::time::timeout(write_timeout, socket.send(msg)) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                crate::events::WriteTimedOut { peer: peer.as_str() }.emit();
                Err(End::Stalled)
            }
        },
    }
}

/// Sends the close frame for `end` (if any; a close from the peer is
/// echoed with its own code, RFC 6455 §5.5.1), bounded by [`CLOSE_TIMEOUT`]
/// and the shutdown drain deadline.
pub async fn close(socket: &mut Socket, end: End, shutdown: &Shutdown) {
    let (code, reason) = match (end.close_frame(), socket.peer_closed()) {
        (Some(frame), _) => frame,
        // A close without a code (1005 stands for none) is echoed as 1000.
        (None, Some(1005)) if end == End::Gone => (code::NORMAL, ""),
        (None, Some(theirs)) if end == End::Gone => (theirs, ""),
        (None, _) => return,
    };
    let by = shutdown.close_by(CLOSE_TIMEOUT);
    let _ = tokio::time::timeout_at(by, socket.send_close(code, reason)).await;
}

/// What the keep-alive asks the loop to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Ping,
    Idle,
}

/// A ping every `server.ping_interval`, and the idle deadline
/// `server.idle_timeout` after the peer's last frame (SPEC §10: any frame,
/// pongs included, counts as activity).
///
/// Both run on one timer for the connection's life, set to whichever comes
/// first and moved lazily: activity only notes the time, and when the
/// timer fires early (there was activity since it was set) it is set again.
/// Why not a new timer per wait: every wait of a connection's loop (one per
/// frame) then registered a timer and dropped it, each under the runtime's
/// timer lock, and at 10,000 frames a second that lock was contended enough
/// for its spinning waiters to yield their core to other processes, for up
/// to several milliseconds (BENCHMARKS.md, "Timers"). Why one and not one
/// per clock: every idle connection holds its timer, and a second one (a
/// tokio `Interval` beside the idle `Sleep`) was about 140 bytes of the 2.8
/// KiB an idle device connection cost (BENCHMARKS.md, "Memory per idle
/// device connection").
pub struct KeepAlive {
    timer: Pin<Box<Sleep>>,
    ping_every: Duration,
    idle_after: Duration,
    next_ping: Instant,
    last_activity: Instant,
}

impl KeepAlive {
    /// Starts both clocks now: the first ping is due one interval from now.
    pub fn start(ping_every: Duration, idle_after: Duration) -> KeepAlive {
        let now = Instant::now();
        let next_ping = now + ping_every;
        KeepAlive {
            timer: Box::pin(tokio::time::sleep_until(next_ping.min(now + idle_after))),
            ping_every,
            idle_after,
            next_ping,
            last_activity: now,
        }
    }

    /// The peer sent something (or the socket reported on it).
    pub fn activity(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Resolves when a ping is due, or (checked second) when the peer has
    /// been silent too long. Cancel-safe: select on it in the loop (all its
    /// state is in `self`, and it changes only just before it returns).
    pub async fn due(&mut self) -> Due {
        loop {
            self.timer.as_mut().await;
            let now = Instant::now();
            if self.next_ping <= now {
                // The next one an interval after this one was due, so a
                // late wake does not slow the pace; after a whole interval
                // missed, an interval from now (no burst to catch up).
                let next = self.next_ping + self.ping_every;
                self.next_ping = if next > now {
                    next
                } else {
                    now + self.ping_every
                };
                self.set_timer();
                return Due::Ping;
            }
            if self.last_activity + self.idle_after <= now {
                return Due::Idle;
            }
            self.set_timer();
        }
    }

    /// The timer at whichever comes first: the next ping or the idle
    /// deadline as the last activity puts it.
    fn set_timer(&mut self) {
        let at = self.next_ping.min(self.last_activity + self.idle_after);
        self.timer.as_mut().reset(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_the_spec() {
        assert_eq!(End::Shutdown.close_frame().unwrap().0, 1001);
        assert_eq!(End::Replaced.close_frame().unwrap().0, 4001);
        assert_eq!(End::Lagged.close_frame().unwrap().0, 4008);
        assert_eq!(End::RoutingFailed.close_frame().unwrap().0, 1011);
        assert_eq!(End::TooManyErrors.close_frame().unwrap().0, 1008);
        assert_eq!(End::TooBig.close_frame().unwrap().0, 1009);
        assert_eq!(End::Idle.close_frame().unwrap().0, 1000);
        assert_eq!(End::Gone.close_frame(), None);
        assert_eq!(End::Stalled.close_frame(), None);
    }

    #[tokio::test]
    async fn keep_alive_pings_then_gives_up_on_a_silent_peer() {
        let hour = Duration::from_secs(3600);
        let mut ka = KeepAlive::start(Duration::from_millis(5), hour);
        assert_eq!(ka.due().await, Due::Ping);
        assert_eq!(ka.due().await, Due::Ping, "the interval keeps ticking");
        let mut ka = KeepAlive::start(hour, Duration::from_millis(5));
        assert_eq!(ka.due().await, Due::Idle);
    }

    /// One timer serves both clocks: pings come every interval whether the
    /// peer is active or not, and a silent peer is idle at its deadline,
    /// which falls between two pings.
    #[tokio::test(start_paused = true)]
    async fn pings_keep_their_interval_and_idleness_falls_between_them() {
        let (every, idle) = (Duration::from_secs(3), Duration::from_secs(10));
        let started = Instant::now();
        let mut ka = KeepAlive::start(every, idle);
        for k in 1..=3 {
            assert_eq!(ka.due().await, Due::Ping);
            assert_eq!(started.elapsed(), every * k);
        }
        assert_eq!(ka.due().await, Due::Idle);
        assert_eq!(started.elapsed(), idle);

        // A peer that sends something 2 s into every wait: a ping every
        // 3 s all the same, and never idle.
        let started = Instant::now();
        let mut ka = KeepAlive::start(every, idle);
        let mut pings = Vec::new();
        while started.elapsed() < Duration::from_secs(31) {
            match tokio::time::timeout(Duration::from_secs(2), ka.due()).await {
                Ok(Due::Ping) => pings.push(started.elapsed().as_secs()),
                Ok(Due::Idle) => panic!("idle at {:?}", started.elapsed()),
                Err(_) => ka.activity(),
            }
        }
        assert_eq!(pings, (1..=10).map(|k| 3 * k).collect::<Vec<_>>());
    }

    /// A ping taken late (the loop was busy) keeps the pace of those after
    /// it; one taken a whole interval late starts the pace again from now,
    /// rather than a burst of pings to catch up.
    #[tokio::test(start_paused = true)]
    async fn late_pings_keep_the_pace_and_missed_ones_are_not_made_up() {
        let every = Duration::from_secs(3);
        let started = Instant::now();
        let mut ka = KeepAlive::start(every, Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(ka.due().await, Due::Ping, "due at 3 s, taken at 4 s");
        assert_eq!(ka.due().await, Due::Ping);
        assert_eq!(started.elapsed(), Duration::from_secs(6), "on the pace");
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(ka.due().await, Due::Ping, "due at 9 s, taken at 13 s");
        assert_eq!(ka.due().await, Due::Ping);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(16),
            "from the late one"
        );
    }

    /// Activity moves the idle deadline to `idle_after` past it, however
    /// early the timer was set, and a loop that stops waiting (another
    /// branch of its select won) and waits again keeps the same deadline.
    #[tokio::test(start_paused = true)]
    async fn activity_moves_the_idle_deadline() {
        let hour = Duration::from_secs(3600);
        let idle = Duration::from_secs(10);
        let mut ka = KeepAlive::start(hour, idle);
        let started = Instant::now();
        // Waits cut short, as a connection loop's are by every frame.
        for _ in 0..3 {
            let cut = tokio::time::timeout(Duration::from_secs(2), ka.due()).await;
            assert!(cut.is_err(), "not idle yet");
            ka.activity();
        }
        assert_eq!(ka.due().await, Due::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(6) + idle);
        assert_eq!(ka.due().await, Due::Idle, "and stays idle");
        // Activity after all (a frame was still arriving, as the device
        // loop finds out): idle again a whole `idle_after` later.
        ka.activity();
        let again = Instant::now();
        assert_eq!(ka.due().await, Due::Idle);
        assert_eq!(again.elapsed(), idle);
    }
}
