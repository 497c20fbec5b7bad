//! `device-sim`: a fleet of simulated devices for load-testing sensorgate.
//!
//! This file is the shell: it parses the command line, mints tokens, starts
//! one task per device (plus the optional subscriber), shows progress, and
//! prints the report. The device behaviour lives in [`device`], load shapes
//! in [`scenario`], sensor values in [`values`], counters in [`stats`].

mod conn;
mod device;
mod frame;
mod scenario;
mod sendlog;
mod stats;
mod subscriber;
mod values;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use sensorgate_wire::auth::{Authenticator, Role};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::conn::Target;
use crate::device::{Device, Plan};
use crate::scenario::{Interval, Scenario};
use crate::sendlog::SendLog;
use crate::stats::{RunMeta, Stats};

/// Simulated devices streaming readings into sensorgate.
#[derive(Debug, Parser)]
#[command(version, about)]
#[command(group(clap::ArgGroup::new("auth").required(true).args(["secret", "token"])))]
struct Args {
    /// The daemon's ingest endpoint, e.g. ws://127.0.0.1:8750/v1/ingest.
    #[arg(long)]
    url: String,
    /// Number of devices, one connection each.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Readings per second per device (ignored by `--scenario flood`).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Readings per batch.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// How long devices send, e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// After --duration, how long to wait for outstanding acks.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// The daemon's JWT secret: mints a device token per device.
    #[arg(long)]
    secret: Option<String>,
    /// One device token for all devices (then --devices must be 1).
    #[arg(long)]
    token: Option<String>,
    /// Also subscribe at this /v1/stream URL and measure device-to-subscriber
    /// latency (token minted from --secret; none with --token).
    #[arg(long)]
    subscribe: Option<String>,
    /// With --subscribe: how many subscriber connections (each receives
    /// every reading; deliveries are counted over all of them).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// With --subscribe: the frames subscribers ask for (`msgpack` is the
    /// `sensorgate.msgpack` subprotocol).
    #[arg(long, value_enum, default_value = "json")]
    subscriber_format: subscriber::Format,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Device ids are `<prefix><n>`, n from 1.
    #[arg(long, default_value = "sim-")]
    device_prefix: String,
    /// Sensors per device.
    #[arg(long, default_value_t = 4)]
    sensors: usize,
    /// Gaps between batches.
    #[arg(long, value_enum, default_value = "fixed")]
    interval: Interval,
    /// Load shape.
    #[arg(long, value_enum, default_value = "steady")]
    scenario: Scenario,
    /// Start every device's schedule at the same instant (lock-step
    /// bursts, the worst case) instead of at a random point of its first
    /// interval.
    #[arg(long)]
    aligned: bool,
    /// Most unacked batches in flight per device.
    #[arg(long, default_value_t = 8)]
    window: usize,
}

impl Args {
    /// Every problem with the arguments, at once.
    fn check(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.devices == 0 {
            problems.push("--devices must be at least 1".to_string());
        }
        if self.token.is_some() && self.devices != 1 {
            problems.push(format!(
                "--token gives every device the same id, and the server keeps one connection \
                 per device (a second one replaces the first), so --token needs --devices 1 \
                 (got {}); use --secret to mint a token per device",
                self.devices
            ));
        }
        if self.scenario != Scenario::Flood && !(self.rate > 0.0 && self.rate.is_finite()) {
            problems.push(format!(
                "--rate must be a positive number (got {})",
                self.rate
            ));
        }
        if self.batch == 0 {
            problems.push("--batch must be at least 1".into());
        }
        if self.subscribe.is_some() && self.subscribers == 0 {
            problems.push("--subscribers must be at least 1 with --subscribe".into());
        }
        if self.window == 0 {
            problems.push("--window must be at least 1".into());
        }
        if self.sensors == 0 {
            problems.push("--sensors must be at least 1".into());
        }
        let last = format!("{}{}", self.device_prefix, self.devices);
        if !sensorgate_wire::is_valid_name(&last) {
            problems.push(format!(
                "--device-prefix {:?}: device ids such as {last:?} must be 1-64 characters of [A-Za-z0-9_.:-]",
                self.device_prefix
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }
}

fn main() -> ExitCode {
    if let Some(code) = generate_assets() {
        return code;
    }
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("device-sim: {e}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("device-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `device-sim --generate-assets DIR`, used by the packaging script: writes
/// the man page and completions. Checked before clap parses, because clap
/// would otherwise insist on `--url` and an auth option; it is not part of
/// [`Args`], so it stays out of the help, the man page and the completions.
fn generate_assets() -> Option<ExitCode> {
    use clap::CommandFactory;
    let mut argv = std::env::args_os().skip(1);
    if argv.next()? != "--generate-assets" {
        return None;
    }
    let Some(dir) = argv.next().map(std::path::PathBuf::from) else {
        eprintln!("device-sim: --generate-assets needs a directory");
        return Some(ExitCode::from(2));
    };
    Some(match sensorgate_cli_docs::write(Args::command(), &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("device-sim: --generate-assets {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    })
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args.url, args.devices)
        .await
        .context("--url")?;
    // One descriptor per connection, plus the subscribers and some slack.
    let subscribers = if args.subscribe.is_some() {
        args.subscribers
    } else {
        0
    };
    let need = (args.devices + subscribers) as u64 + 64;
    let have = conn::raise_fd_limit(need);
    if have < need {
        eprintln!(
            "device-sim: the open-files limit is {have}, below the ~{need} that {} connections \
             need; some devices will fail to connect (raise `ulimit -n`)",
            args.devices
        );
    }
    let stats = Arc::new(Stats::default());
    let auth = args.secret.as_deref().map(Authenticator::new);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let send_log = args
        .subscribe
        .is_some()
        .then(|| Arc::new(SendLog::new(&args.device_prefix, args.devices)));
    let mut subscriber_tasks = JoinSet::new();
    if let (Some(url), Some(log)) = (&args.subscribe, &send_log) {
        let token = auth
            .as_ref()
            .map(|a| a.mint(Role::Subscriber, "device-sim", None, None))
            .unwrap_or_default();
        let mut ready = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.push(ready_rx);
            let (url, token, log, stats, stop) = (
                url.clone(),
                token.clone(),
                log.clone(),
                stats.clone(),
                stop_rx.clone(),
            );
            let format = args.subscriber_format;
            subscriber_tasks.spawn(async move {
                subscriber::run(&url, &token, format, log, stats, ready_tx, stop).await
            });
        }
        // Devices start once every subscription stands (or failed: then
        // its sender is dropped), so the first readings are measured too.
        let all_ready = futures_util::future::join_all(ready);
        let _ = tokio::time::timeout(Duration::from_secs(30), all_ready).await;
    }
    let start = Instant::now();
    let plan = Arc::new(Plan {
        target,
        rate: args.rate,
        batch: args.batch,
        window: args.window,
        sensors: args.sensors,
        interval: args.interval,
        scenario: args.scenario,
        devices: args.devices,
        end: start + args.duration,
        drain_end: start + args.duration + args.drain,
        duration: args.duration,
        start,
        send_log,
        aligned: args.aligned,
    });

    let mut devices = JoinSet::new();
    for i in 0..args.devices {
        let id = format!("{}{}", args.device_prefix, i + 1);
        let token = match (&auth, &args.token) {
            (Some(a), _) => a.mint(Role::Device, &id, None, None),
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("clap requires --secret or --token"),
        };
        devices.spawn(Device::new(plan.clone(), stats.clone(), i, token).run());
    }

    let progress = std::io::stderr().is_terminal().then(|| {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprint!("\r{}", stats.progress(start.elapsed()));
            }
        })
    });

    while devices.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let mut sub_error = None;
    if subscribers > 0 {
        // Let the last readings reach the subscribers: every acked reading
        // is fanned out to each, so wait (bounded) until they have seen as
        // many.
        let want = stats.acked_readings.load(Relaxed) * subscribers as u64;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && stats.subscriber_readings.load(Relaxed) + stats.subscriber_lagged.load(Relaxed)
                < want
            && subscriber_tasks.len() == subscribers
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A subscriber that ended early is an error: reap it below.
            if let Some(done) = subscriber_tasks.try_join_next() {
                record_subscriber_end(done, &mut sub_error);
            }
        }
        let _ = stop_tx.send(true);
        while let Some(done) = subscriber_tasks.join_next().await {
            record_subscriber_end(done, &mut sub_error);
        }
    }

    let meta = RunMeta {
        devices: args.devices,
        scenario: args.scenario.name(),
        subscribed: args.subscribe.is_some(),
        subscribers,
    };
    let mut report = stats.report(&meta, elapsed);
    if let Some(e) = &sub_error {
        report["subscriber"]["error"] = e.clone().into();
        eprintln!("device-sim: subscriber: {e}");
    }
    if args.json {
        println!("{report}");
    } else {
        print!("{}", stats::table(&report));
    }

    if stats.devices_connected_ever.load(Relaxed) == 0 {
        let why = stats.last_error.lock().unwrap().clone().unwrap_or_default();
        eprintln!("device-sim: no device could connect: {why}");
        return Ok(ExitCode::from(1));
    }
    let lost = stats.lost_batches.load(Relaxed);
    if lost > 0 {
        eprintln!(
            "device-sim: {lost} sent batches ({} readings) were never acked (lost acks)",
            stats.lost_readings.load(Relaxed)
        );
        return Ok(ExitCode::from(1));
    }
    if let Some(e) = stats.last_error.lock().unwrap().as_ref() {
        if e.contains("rejected as invalid") {
            eprintln!("device-sim: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Keeps the first subscriber failure for the report.
fn record_subscriber_end(
    done: Result<anyhow::Result<()>, tokio::task::JoinError>,
    first_error: &mut Option<String>,
) {
    let err = match done {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => e.to_string(),
    };
    first_error.get_or_insert(err);
}
