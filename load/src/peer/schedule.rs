//! The send schedule, device-sim's: each publisher sends one tick's
//! messages every `batch / rate` seconds until the end of the run, starting
//! at a random point of its first interval (or all at once with
//! `--aligned`). The loop is bounded by the deadline and by a tick count.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::payload::Composer;
use super::report::{Counters, Meter};
use super::{unix_us, PeerArgs};

/// How long the subscribers may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
#[error("a subscriber failed to start or was not ready within {READY_WITHIN:?}")]
pub struct NotReady;

/// Starts `n` subscribers on `tasks`, subscriber `i` as `start(i, meter,
/// ready)`, and returns their meters once each has said it is ready: the
/// publishers start after that, so no subscriber misses a message.
pub async fn start_subscribers<F, Fut>(
    n: usize,
    counters: &Arc<Counters>,
    tasks: &mut JoinSet<()>,
    mut start: F,
) -> Result<Vec<Meter>, NotReady>
where
    F: FnMut(usize, Meter, oneshot::Sender<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut meters = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    for i in 0..n {
        let meter = Meter::new(counters.clone());
        meters.push(meter.clone());
        let (tx, rx) = oneshot::channel();
        ready.push(rx);
        tasks.spawn(start(i, meter, tx));
    }
    let deadline = Instant::now() + READY_WITHIN;
    for rx in ready {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {}
            _ => return Err(NotReady),
        }
    }
    Ok(meters)
}

/// A connection that publishes. `publish` returns once the message is
/// handed to the client (acks are counted elsewhere, as they arrive), so a
/// slow server holds the publisher back only through the client's window of
/// unacknowledged messages. `false` means the connection is gone.
pub trait Publish: Send + 'static {
    /// The server's topic level separator.
    const SEPARATOR: char;

    fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        readings: u64,
    ) -> impl Future<Output = bool> + Send;
}

/// When the run's publishers send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    interval: Duration,
    end: Instant,
    max_ticks: u64,
    /// The first tick's offset is at most this (0 when aligned).
    max_phase: Duration,
    seed: f64,
    batch: usize,
    batch_payload: bool,
}

impl Plan {
    /// The schedule of a run that starts now.
    pub fn new(args: &PeerArgs) -> Plan {
        let interval = Duration::from_secs_f64(args.batch as f64 / args.rate);
        let max_phase = if args.aligned {
            Duration::ZERO
        } else {
            interval.min(args.duration() / 4)
        };
        Plan {
            interval,
            end: Instant::now() + args.duration(),
            max_ticks: (args.duration / interval.as_secs_f64()).ceil() as u64 + 1,
            max_phase,
            seed: (unix_us() % 1000) as f64 / 1000.0,
            batch: args.batch,
            batch_payload: args.batch_payload,
        }
    }

    /// Publisher `n`'s start offset: the golden-ratio sequence from a
    /// per-run seed spreads the publishers evenly over the first interval.
    fn phase(&self, n: usize) -> Duration {
        self.max_phase
            .mul_f64((self.seed + n as f64 * 0.618_033_988_75).fract())
    }
}

/// Publisher `n` (device `sim-n`): sends on the plan until its end or until
/// the connection is gone, counting what it handed over; returns the
/// connection so the caller can keep it open while acks drain.
pub async fn publish_on_schedule<P: Publish>(
    plan: Plan,
    n: usize,
    mut conn: P,
    counters: Arc<Counters>,
) -> P {
    tokio::time::sleep(plan.phase(n)).await;
    let mut composer = Composer::new(
        P::SEPARATOR,
        format!("sim-{n}"),
        plan.batch,
        plan.batch_payload,
    );
    let mut next = Instant::now();
    for _ in 0..plan.max_ticks {
        if Instant::now() >= plan.end {
            break;
        }
        for m in composer.tick() {
            if !conn.publish(m.topic, m.payload, m.readings).await {
                return conn;
            }
            counters.sent(m.readings);
        }
        next += plan.interval;
        // Not past the end: the run's rate is taken over its duration.
        tokio::time::sleep_until(next.min(plan.end)).await;
    }
    conn
}

/// Waits, at most `drain`, until every published reading is acked and
/// delivered to every subscriber.
pub async fn wait_drained(counters: &Counters, subscribers: usize, drain: Duration) {
    let end = Instant::now() + drain;
    while !counters.settled(subscribers) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
