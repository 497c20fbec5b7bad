//! What `mqtt_peer` and `nats_peer` share: the command line ([`PeerArgs`]),
//! the send schedule ([`schedule`]), the payloads ([`payload`]) and the
//! counting, latency and JSON report ([`report`]). A peer binary only
//! supplies its client: how to connect, publish, wait for the server's
//! acknowledgement and subscribe.

pub mod payload;
pub mod report;
pub mod schedule;

use std::time::Duration;

use thiserror::Error;

/// Most connections one run may open. The limit is 20,000 open files per
/// process; the load generator and the server under test each hold one
/// descriptor per connection, and 1,000 are left for everything else.
pub const MAX_CONNECTIONS: usize = 19_000;

/// Longest a run may publish, and longest it may wait afterwards for owed
/// acks and deliveries.
pub const MAX_SECONDS: f64 = 3_600.0;

/// The workload, the same flags on both peers (and the same schedule as
/// device-sim's `--devices --rate --batch --duration --drain --aligned`).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// The server's port on 127.0.0.1 (nothing else is contacted).
    #[arg(long)]
    pub port: u16,
    /// Publishers, one connection each (`sim-1` … `sim-N`).
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Readings per second per publisher.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Readings per send, every `batch / rate` seconds.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait afterwards for acks and deliveries still owed.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Also run subscribers on every subject and measure latency.
    #[arg(long)]
    pub subscribe: bool,
    /// With --subscribe: how many (each receives every reading).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Start every publisher at the same instant (lock-step bursts) instead
    /// of at a random point of its first interval.
    #[arg(long)]
    pub aligned: bool,
    /// One message per batch (a JSON object holding `batch` readings, as a
    /// device sends it) instead of one message per reading.
    #[arg(long)]
    pub batch_payload: bool,
    /// Instead of a load: open this many silent connections, print
    /// `{"idle_connected":N}`, hold them for --duration seconds and exit.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
}

#[derive(Debug, Error)]
#[error("bad arguments: {}", .0.join("; "))]
pub struct ArgsError(pub Vec<String>);

impl PeerArgs {
    /// Every problem at once; a run that passes is bounded in connections
    /// and time.
    pub fn check(&self) -> Result<(), ArgsError> {
        let mut problems = Vec::new();
        let seconds = |v: f64| v.is_finite() && (0.0..=MAX_SECONDS).contains(&v);
        if !(self.rate.is_finite() && self.rate > 0.0) {
            problems.push(format!("--rate must be positive (got {})", self.rate));
        }
        if self.batch == 0 {
            problems.push("--batch must be at least 1".into());
        }
        if !(seconds(self.duration) && self.duration > 0.0) {
            problems.push(format!("--duration must be in (0, {MAX_SECONDS}] s"));
        }
        if !seconds(self.drain) {
            problems.push(format!("--drain must be in [0, {MAX_SECONDS}] s"));
        }
        if self.subscribers == 0 {
            problems.push("--subscribers must be at least 1".into());
        }
        let connections = self.idle.max(self.devices + self.subscribers);
        if connections > MAX_CONNECTIONS {
            problems.push(format!(
                "{connections} connections: at most {MAX_CONNECTIONS} (open-file limit)"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ArgsError(problems))
        }
    }

    /// Subscriber connections this run opens.
    pub fn subscriber_count(&self) -> usize {
        if self.subscribe {
            self.subscribers
        } else {
            0
        }
    }

    /// Readings in each message of this run.
    pub fn readings_per_message(&self) -> u64 {
        if self.batch_payload {
            self.batch as u64
        } else {
            1
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain)
    }
}

/// Microseconds since the epoch: the send time carried in every payload,
/// compared with the receive time on the same machine.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        peer: PeerArgs,
    }

    fn parse(args: &[&str]) -> PeerArgs {
        Cli::parse_from(std::iter::once("peer").chain(args.iter().copied())).peer
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let a = parse(&["--port", "1", "--rate", "0", "--batch", "0", "--drain=-1"]);
        let ArgsError(problems) = a.check().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn connections_stay_under_the_open_file_limit() {
        let a = parse(&["--port", "1", "--devices", "19000", "--subscribe"]);
        assert!(a.check().is_err());
        let a = parse(&["--port", "1", "--idle", "19001"]);
        assert!(a.check().is_err());
        let a = parse(&["--port", "1", "--idle", "19000"]);
        assert!(a.check().is_ok());
        let a = parse(&["--port", "1", "--devices", "1000", "--subscribe"]);
        assert!(a.check().is_ok());
        assert_eq!(a.subscriber_count(), 1);
    }

    #[test]
    fn a_batch_message_carries_the_batch() {
        let a = parse(&["--port", "1", "--batch", "10", "--batch-payload"]);
        assert_eq!(a.readings_per_message(), 10);
        assert_eq!(parse(&["--port", "1"]).readings_per_message(), 1);
    }
}
