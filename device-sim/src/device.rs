//! One simulated device, behaving like good firmware (docs/protocol.md):
//! it samples its sensors at `--rate`, numbers every batch with a `seq` and
//! keeps it until acked, pipelines at most `--window` unacked batches,
//! resends from the welcome's `last_seq + 1` after a reconnect and from
//! `expected` after `out_of_order` (go-back-N), waits out `retry_after_ms`
//! before resending a throttled batch, and reconnects with jittered
//! exponential backoff. The kept buffer is bounded ([`MAX_KEPT`]): a device
//! that cannot reach the server stops sampling rather than grow forever.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::conn::{self, Target, Ws};
use crate::scenario::{self, Interval, Scenario};
use crate::sendlog::{self, SendLog};
use crate::stats::Stats;
use crate::values::{BatchOut, Sensors};
use sensorgate_wire::{unix_ms, AckFrame, ErrorCode, ErrorFrame, ServerFrame, WelcomeFrame};

/// Most batches a device keeps unacked (sent or not) before it stops
/// sampling: bounds memory while the server is unreachable.
pub const MAX_KEPT: usize = 100_000;

/// How long a connection attempt (TCP + handshake + welcome) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Used when a throttling error carries no `retry_after_ms`.
const DEFAULT_RETRY: Duration = Duration::from_millis(100);

/// What every device of the run shares.
pub struct Plan {
    pub target: Target,
    /// Readings per second per device.
    pub rate: f64,
    pub batch: usize,
    pub window: usize,
    pub sensors: usize,
    pub interval: Interval,
    pub scenario: Scenario,
    pub devices: usize,
    /// When the load phase ends: no sampling after it.
    pub end: Instant,
    /// When the drain ends: whatever is unacked then is lost.
    pub drain_end: Instant,
    pub duration: Duration,
    pub start: Instant,
    /// With subscribers: where first sends are booked for their latency.
    pub send_log: Option<Arc<SendLog>>,
    /// Every device samples at the same instants (no random phase).
    pub aligned: bool,
}

/// A batch kept until the server confirms it stored.
struct Kept {
    seq: u64,
    frame: Bytes,
    readings: u64,
    /// The readings' `ts` (one per batch).
    ts: i64,
    /// Last time it went on the wire; `None` while never sent.
    sent_at: Option<Instant>,
}

/// How a connection ended.
enum Outcome {
    /// The run is over for this device.
    Done,
    /// Churn: we hung up on purpose and will come back.
    HungUp,
    /// The connection failed or the server closed it.
    Dropped,
}

pub struct Device {
    plan: Arc<Plan>,
    stats: Arc<Stats>,
    index: usize,
    token: String,
    /// Values and timing only, nothing secret: a fast generator (a flood
    /// draws about ten numbers per reading).
    rng: SmallRng,
    sensors: Sensors,
    kept: VecDeque<Kept>,
    /// Seq for the next new batch.
    next_seq: u64,
    /// Seq of the next kept batch to put on the wire.
    next_to_send: u64,
    /// Set by the first welcome: new batches continue from its `last_seq`.
    seq_known: bool,
    /// After `rate_limited`/`overloaded`: send nothing until then.
    paused_until: Option<Instant>,
    /// The seq we last went back to. Batches pipelined behind a rewound one
    /// all answer `out_of_order` with the same `expected`; only the first of
    /// those replies should cause a resend.
    rewound_to: Option<u64>,
    next_sample: Instant,
    max_readings: usize,
    /// `garbage`: malformed frames owed, each sent just before a new good
    /// batch so the server's consecutive-error count keeps resetting.
    garbage_owed: usize,
    garbage_kind: usize,
    welcomes: u64,
    gave_up: bool,
}

impl Device {
    pub fn new(plan: Arc<Plan>, stats: Arc<Stats>, index: usize, token: String) -> Device {
        let mut rng = SmallRng::from_entropy();
        let sensors = Sensors::new(plan.sensors, &mut rng);
        Device {
            plan,
            stats,
            index,
            token,
            rng,
            sensors,
            kept: VecDeque::new(),
            next_seq: 1,
            next_to_send: 1,
            seq_known: false,
            paused_until: None,
            rewound_to: None,
            next_sample: Instant::now(),
            max_readings: usize::MAX,
            garbage_owed: 0,
            garbage_kind: 0,
            welcomes: 0,
            gave_up: false,
        }
    }

    /// Runs the device until the run (and its drain) is over, then books
    /// whatever was never confirmed as lost.
    pub async fn run(mut self) {
        let p = self.plan.clone();
        sleep_until(p.start + p.scenario.start_delay(self.index, p.devices, p.duration)).await;
        self.next_sample = Instant::now() + self.phase();
        let mut attempt = 0u32;
        loop {
            let now = Instant::now();
            if self.gave_up || now >= p.drain_end || (now >= p.end && self.kept.is_empty()) {
                break;
            }
            let welcomes = self.welcomes;
            // The run's end bounds a hanging attempt too.
            let limit = CONNECT_TIMEOUT.min(p.drain_end.saturating_duration_since(now));
            let pause =
                match timeout(limit, conn::connect(&p.target, self.index, &self.token)).await {
                    Ok(Ok(ws)) => match self.session(ws).await {
                        Outcome::Done => break,
                        Outcome::HungUp => Scenario::churn_pause(&mut self.rng),
                        Outcome::Dropped if self.welcomes > welcomes => {
                            attempt = 0;
                            scenario::backoff(0, &mut self.rng)
                        }
                        Outcome::Dropped => {
                            attempt += 1;
                            scenario::backoff(attempt, &mut self.rng)
                        }
                    },
                    Ok(Err(e)) => {
                        Stats::add(&self.stats.connect_failures, 1);
                        *self.stats.last_error.lock().unwrap() = Some(e.detail);
                        if e.permanent {
                            break;
                        }
                        attempt += 1;
                        scenario::backoff(attempt, &mut self.rng)
                    }
                    Err(_) => {
                        Stats::add(&self.stats.connect_failures, 1);
                        *self.stats.last_error.lock().unwrap() =
                            Some(format!("no handshake within {limit:?}"));
                        attempt += 1;
                        scenario::backoff(attempt, &mut self.rng)
                    }
                };
            sleep_until((Instant::now() + pause).min(p.drain_end)).await;
        }
        for k in &self.kept {
            if k.sent_at.is_some() {
                Stats::add(&self.stats.lost_batches, 1);
                Stats::add(&self.stats.lost_readings, k.readings);
            } else {
                Stats::add(&self.stats.unsent_readings, k.readings);
            }
        }
    }

    /// One connection, from the welcome until it drops, we hang up, or the
    /// run is over.
    async fn session(&mut self, mut ws: Ws) -> Outcome {
        let limit = CONNECT_TIMEOUT.min(
            self.plan
                .drain_end
                .saturating_duration_since(Instant::now()),
        );
        let Ok(Some(first)) = timeout(limit, next_binary(&mut ws)).await else {
            return Outcome::Dropped;
        };
        let Ok(ServerFrame::Welcome(welcome)) = ServerFrame::decode(&first) else {
            return Outcome::Dropped;
        };
        self.on_welcome(&welcome);
        let stats = self.stats.clone();
        Stats::add(&stats.connected, 1);
        let _connected = Gauge(&stats);
        let p = self.plan.clone();
        let hang_up_at = p
            .scenario
            .churn_after(&mut self.rng)
            .map(|d| Instant::now() + d);
        loop {
            let now = Instant::now();
            let loading = now < p.end;
            if now >= p.drain_end || self.gave_up || (!loading && self.kept.is_empty()) {
                let _ = ws.close(None).await;
                return Outcome::Done;
            }
            if loading && hang_up_at.is_some_and(|t| now >= t) {
                let _ = ws.close(None).await;
                return Outcome::HungUp;
            }
            if self.paused_until.is_some_and(|t| now >= t) {
                self.paused_until = None;
            }
            if loading {
                self.sample(now);
            }
            if self.pump(&mut ws, now).await.is_err() {
                return Outcome::Dropped;
            }
            let mut wake = p.drain_end;
            if loading {
                wake = wake.min(p.end);
                if p.scenario != Scenario::Flood {
                    wake = wake.min(self.next_sample);
                }
                if let Some(t) = hang_up_at {
                    wake = wake.min(t);
                }
            }
            if let Some(t) = self.paused_until {
                wake = wake.min(t);
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(b))) => match ServerFrame::decode(&b) {
                        Ok(f) => self.on_frame(f),
                        Err(_) => self.stats.reject("undecodable_reply"),
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Outcome::Dropped,
                    Some(Ok(_)) => {}
                },
                _ = sleep_until(wake) => {}
            }
        }
    }

    fn on_welcome(&mut self, w: &WelcomeFrame<'_>) {
        let last_seq = w.last_seq;
        self.welcomes += 1;
        if self.welcomes == 1 {
            Stats::add(&self.stats.devices_connected_ever, 1);
        } else {
            Stats::add(&self.stats.reconnects, 1);
        }
        self.max_readings = w.max_readings_per_frame.max(1);
        if self.seq_known {
            // Go-back-N: everything up to `last_seq` is stored.
            self.confirm_through(last_seq, None);
        } else {
            self.seq_known = true;
        }
        if self.kept.is_empty() {
            self.next_seq = self.next_seq.max(last_seq + 1);
        }
        self.next_to_send = self.kept.front().map_or(self.next_seq, |k| k.seq);
        self.paused_until = None;
        self.rewound_to = None;
    }

    /// Samples the batches that are due (or, flooding, as many as the window
    /// has room for).
    fn sample(&mut self, now: Instant) {
        let p = self.plan.clone();
        let batch = p.batch.min(self.max_readings);
        if p.scenario == Scenario::Flood {
            while self.kept.len() < p.window {
                self.push_batch(batch);
            }
            return;
        }
        let mean = Duration::from_secs_f64(batch as f64 / p.rate);
        while self.next_sample <= now {
            self.next_sample += p.interval.next_gap(mean, &mut self.rng);
            if self.kept.len() < MAX_KEPT {
                self.push_batch(batch);
            }
        }
    }

    /// Where in its first interval this device starts sampling. Real
    /// fleets are not phase-locked, so by default each device starts at a
    /// random point of its first interval (at most a quarter of the run, so
    /// short runs still send); `--aligned` makes every device sample at the
    /// same instants, the burstiest case.
    fn phase(&mut self) -> Duration {
        let p = &self.plan;
        if p.aligned || p.scenario == Scenario::Flood {
            return Duration::ZERO;
        }
        let mean = Duration::from_secs_f64(p.batch.min(self.max_readings) as f64 / p.rate);
        mean.min(p.duration / 4).mul_f64(self.rng.gen::<f64>())
    }

    fn push_batch(&mut self, n: usize) {
        let ts = unix_ms();
        // Sampled first, then named: the readings borrow their sensors'
        // names from `self.sensors`, which sampling changes.
        let samples: Vec<_> = (0..n).map(|_| self.sensors.sample(&mut self.rng)).collect();
        let readings: Vec<_> = samples
            .into_iter()
            .map(|sample| self.sensors.reading(sample, ts))
            .collect();
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = BatchOut {
            seq: Some(seq),
            readings: &readings,
        }
        .encode();
        self.kept.push_back(Kept {
            seq,
            frame: frame.into(),
            readings: n as u64,
            ts,
            sent_at: None,
        });
        if self.plan.scenario == Scenario::Garbage {
            self.garbage_owed += 1;
        }
    }

    /// Puts kept batches on the wire while the window has room.
    async fn pump(&mut self, ws: &mut Ws, now: Instant) -> Result<(), ()> {
        let mut wrote = false;
        while self.paused_until.is_none() {
            let Some(front) = self.kept.front().map(|k| k.seq) else {
                break;
            };
            self.next_to_send = self.next_to_send.max(front);
            let idx = (self.next_to_send - front) as usize;
            if idx >= self.plan.window || idx >= self.kept.len() {
                break;
            }
            let first = self.kept[idx].sent_at.is_none();
            if first && self.garbage_owed > 0 {
                self.garbage_owed -= 1;
                let (msg, _) = scenario::garbage(self.garbage_kind, unix_ms(), self.max_readings);
                self.garbage_kind += 1;
                ws.feed(msg).await.map_err(|_| ())?;
                Stats::add(&self.stats.garbage_sent, 1);
            }
            let k = &mut self.kept[idx];
            ws.feed(Message::Binary(k.frame.clone()))
                .await
                .map_err(|_| ())?;
            k.sent_at = Some(now);
            if first {
                if let Some(log) = &self.plan.send_log {
                    log.sent(self.index, k.ts, sendlog::unix_us());
                }
                Stats::add(&self.stats.sent_batches, 1);
                Stats::add(&self.stats.sent_readings, k.readings);
            } else {
                Stats::add(&self.stats.resent_batches, 1);
            }
            self.next_to_send += 1;
            wrote = true;
        }
        if wrote {
            ws.flush().await.map_err(|_| ())?;
        }
        Ok(())
    }

    fn on_frame(&mut self, f: ServerFrame<'_>) {
        match f {
            ServerFrame::Ack(ack) => self.on_ack(ack),
            ServerFrame::Error(err) => self.on_error(err),
            // Only the first frame of a connection is a welcome.
            ServerFrame::Welcome(_) => {}
        }
    }

    /// A duplicate ack means "already stored": as good as an ack.
    fn on_ack(&mut self, ack: AckFrame) {
        if ack.duplicate {
            Stats::add(&self.stats.duplicate_acks, 1);
        }
        self.confirm_through(ack.seq, Some(Instant::now()));
    }

    fn on_error(&mut self, err: ErrorFrame) {
        self.stats.reject(err.code.as_str());
        match (err.code, err.seq) {
            (ErrorCode::OutOfOrder, _) => {
                if let Some(expected) = err.expected {
                    self.confirm_through(expected.saturating_sub(1), None);
                    if self.rewound_to != Some(expected) {
                        self.rewind(expected);
                    }
                }
            }
            (ErrorCode::RateLimited | ErrorCode::Overloaded, Some(seq)) => {
                let wait = err
                    .retry_after_ms
                    .map_or(DEFAULT_RETRY, Duration::from_millis);
                self.paused_until = Some(Instant::now() + wait);
                self.rewind(seq);
            }
            (ErrorCode::Invalid, Some(seq)) if self.kept.iter().any(|k| k.seq == seq) => {
                // Our own batch was refused: a bug in the simulator or a
                // server that disagrees with the protocol. Its seq cannot
                // be skipped, so this device stops.
                *self.stats.last_error.lock().unwrap() = Some(format!(
                    "device {}: batch {seq} rejected as invalid: {}",
                    self.index, err.detail
                ));
                self.gave_up = true;
            }
            _ => {}
        }
    }

    /// Resend from `seq` (go-back-N).
    fn rewind(&mut self, seq: u64) {
        let front = self.kept.front().map_or(self.next_seq, |k| k.seq);
        self.next_to_send = seq.max(front).min(self.next_to_send.max(front));
        self.rewound_to = Some(seq);
    }

    /// Drops every kept batch with seq <= `seq`: the server has it. With
    /// `acked_at`, records each one's send-to-ack latency.
    fn confirm_through(&mut self, seq: u64, acked_at: Option<Instant>) {
        while let Some(k) = self.kept.front() {
            if k.seq > seq {
                break;
            }
            let k = self.kept.pop_front().expect("front exists");
            Stats::add(&self.stats.acked_batches, 1);
            Stats::add(&self.stats.acked_readings, k.readings);
            if let (Some(at), Some(sent)) = (acked_at, k.sent_at) {
                self.stats.ack_latency(at.saturating_duration_since(sent));
            }
        }
        if let Some(front) = self.kept.front() {
            self.next_to_send = self.next_to_send.max(front.seq);
        } else {
            self.next_to_send = self.next_to_send.max(self.next_seq);
        }
    }
}

/// Decrements the connected-devices gauge when a session ends, however it ends.
struct Gauge<'a>(&'a Stats);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Relaxed);
    }
}

/// The next binary (MessagePack) frame from the server, pings skipped.
async fn next_binary(ws: &mut Ws) -> Option<Bytes> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Some(b),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}
