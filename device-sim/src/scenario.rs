//! Load shapes (`--scenario`) and send timing (`--interval`): when each
//! device starts, how it paces its batches, when a churning device hangs
//! up, and the malformed frames of the `garbage` scenario (one of each kind
//! SPEC §3 rejects). Pure functions of their inputs and a random generator.

use std::time::Duration;

use clap::ValueEnum;
use rand::Rng;
use sensorgate_wire::ErrorCode;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every device connects at once and sends at `--rate`.
    Steady,
    /// Devices connect evenly spread over the first half of `--duration`.
    Ramp,
    /// Devices hang up and reconnect at random, resending what was unacked.
    Churn,
    /// Ignore `--rate`: send as fast as the window allows, honouring
    /// `retry_after_ms` when throttled.
    Flood,
    /// Between good batches, send malformed frames of every kind.
    Garbage,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Ramp => "ramp",
            Scenario::Churn => "churn",
            Scenario::Flood => "flood",
            Scenario::Garbage => "garbage",
        }
    }

    /// When device `index` of `devices` starts, from the run's start.
    pub fn start_delay(self, index: usize, devices: usize, duration: Duration) -> Duration {
        match self {
            Scenario::Ramp if devices > 1 => duration / 2 * index as u32 / devices as u32,
            _ => Duration::ZERO,
        }
    }

    /// How long a churning device stays connected before hanging up.
    pub fn churn_after(self, rng: &mut impl Rng) -> Option<Duration> {
        (self == Scenario::Churn).then(|| Duration::from_millis(rng.gen_range(300..2500)))
    }

    /// How long a churning device stays away before reconnecting.
    pub fn churn_pause(rng: &mut impl Rng) -> Duration {
        Duration::from_millis(rng.gen_range(20..300))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Interval {
    /// Exactly `batch / rate` seconds between batches.
    Fixed,
    /// Exponentially distributed gaps with that mean (a Poisson process).
    Poisson,
}

impl Interval {
    /// The gap before the next batch, for a mean gap of `mean`.
    pub fn next_gap(self, mean: Duration, rng: &mut impl Rng) -> Duration {
        match self {
            Interval::Fixed => mean,
            Interval::Poisson => {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                mean.mul_f64(-u.ln()).min(mean * 20)
            }
        }
    }
}

/// Exponential backoff with jitter for reconnect attempt `attempt` (0-based):
/// 100 ms doubling, capped at 3 s, each drawn from the upper half of its range
/// so a fleet that lost its server does not come back in lockstep.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let cap = Duration::from_secs(3);
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(8))
        .min(cap);
    base.mul_f64(rng.gen_range(0.5..1.0))
}

/// The kinds of malformed frame, sent in turn by the `garbage` scenario.
pub const GARBAGE_KINDS: usize = 7;

#[derive(Serialize)]
struct Reading<V: Serialize> {
    sensor: String,
    ts: i64,
    value: V,
}

#[derive(Serialize)]
struct Frame<V: Serialize> {
    readings: Vec<Reading<V>>,
}

fn frame<V: Serialize>(sensor: &str, ts: i64, values: Vec<V>) -> Message {
    let f = Frame {
        readings: values
            .into_iter()
            .map(|value| Reading {
                sensor: sensor.to_string(),
                ts,
                value,
            })
            .collect(),
    };
    Message::Binary(rmp_serde::to_vec_named(&f).expect("plain struct").into())
}

/// Malformed frame number `kind % GARBAGE_KINDS` (none carries a `seq`, so
/// the rejections never interfere with the device's good batches). Returns
/// the frame and the error code the server must answer with.
pub fn garbage(kind: usize, ts: i64, max_readings: usize) -> (Message, ErrorCode) {
    match kind % GARBAGE_KINDS {
        0 => (
            Message::Text(r#"{"readings":[]}"#.into()),
            ErrorCode::UnsupportedFrame,
        ),
        // A MessagePack array, not a map.
        1 => (
            Message::Binary(rmp_serde::to_vec(&[1, 2, 3]).expect("array").into()),
            ErrorCode::Invalid,
        ),
        // A map without `readings`.
        2 => {
            let mut buf = Vec::new();
            rmp::encode::write_map_len(&mut buf, 1).expect("vec write");
            rmp::encode::write_str(&mut buf, "seqq").expect("vec write");
            rmp::encode::write_uint(&mut buf, 1).expect("vec write");
            (Message::Binary(buf.into()), ErrorCode::Invalid)
        }
        3 => (frame("bad sensor/name!", ts, vec![1.0]), ErrorCode::Invalid),
        4 => (frame("temp", ts, vec![f64::NAN]), ErrorCode::Invalid),
        5 => (
            frame("label", ts, vec!["x".repeat(300)]),
            ErrorCode::Invalid,
        ),
        // Capped: a welcome without `max_readings_per_frame` must not make
        // us build an absurd frame.
        _ => (
            frame("temp", ts, vec![1.0; max_readings.min(10_000) + 1]),
            ErrorCode::Invalid,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_garbage_frame_is_rejected_by_the_server_decoder() {
        for kind in 0..GARBAGE_KINDS {
            let (msg, code) = garbage(kind, 1, 500);
            match msg {
                Message::Text(_) => assert_eq!(code, ErrorCode::UnsupportedFrame),
                Message::Binary(b) => {
                    let e = sensorgate_wire::decode_batch(&b, 500).unwrap_err();
                    assert_eq!(e.code, code, "kind {kind}: {e}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ramp_spreads_starts_over_the_first_half() {
        let d = Duration::from_secs(10);
        assert_eq!(Scenario::Ramp.start_delay(0, 4, d), Duration::ZERO);
        assert_eq!(
            Scenario::Ramp.start_delay(2, 4, d),
            Duration::from_millis(2500)
        );
        assert_eq!(Scenario::Steady.start_delay(3, 4, d), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(backoff(0, &mut rng) <= Duration::from_millis(100));
        for a in 0..40 {
            assert!(backoff(a, &mut rng) <= Duration::from_secs(3));
        }
        assert!(backoff(10, &mut rng) >= Duration::from_millis(1500));
    }

    #[test]
    fn poisson_gaps_average_to_the_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mean = Duration::from_millis(10);
        let total: Duration = (0..10_000)
            .map(|_| Interval::Poisson.next_gap(mean, &mut rng))
            .sum();
        let avg = total.as_secs_f64() / 10_000.0;
        assert!((0.009..0.011).contains(&avg), "{avg}");
    }
}
