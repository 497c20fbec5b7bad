//! The NATS JetStream side of `load/load.sh`: the same workload as
//! device-sim's and mqtt_peer's, with sensorgate's promise: a publish counts
//! once its PubAck says the stream has stored it.
//!
//! Publishers: one connection per device, publishing to
//! `sensorgate.<device>.<sensor>` (one JSON reading per message) or, with
//! `--batch-payload`, `sensorgate.<device>.batch` (one message per batch),
//! on device-sim's schedule, with at most `--window` PubAcks outstanding
//! per publisher. With `--subscribe`, `--subscribers N` consumers (each its
//! own connection and its own ephemeral pull consumer on the stream,
//! delivering only new messages, explicit acks) count deliveries and record
//! now − send time (µs, carried in the payload). Prints one JSON line, the
//! same as mqtt_peer's.
//!
//! `--create-stream` creates the stream (`--stream`, subjects
//! `sensorgate.>`, file storage, oldest messages discarded past
//! `--max-bytes`) and exits; `--idle N` holds N silent connections as
//! mqtt_peer does.
//!
//!   nats_peer --port P --create-stream
//!   nats_peer --port P --devices 50 --rate 2000 --batch 50 --duration 10 \
//!       [--batch-payload] [--subscribe [--subscribers 10]] [--drain 5]
//!   nats_peer --port P --idle 5000 --duration 5
//!
//! Every loop is bounded by the deadline; only 127.0.0.1 is contacted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream, Context};
use clap::Parser;
use futures_util::StreamExt;
use sensorgate_load::peer::report::{self, Counters, Meter};
use sensorgate_load::peer::schedule::{self, Plan, Publish};
use sensorgate_load::peer::PeerArgs;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// JetStream load against a nats-server on 127.0.0.1.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    peer: PeerArgs,
    /// The stream the subjects `sensorgate.>` belong to.
    #[arg(long, default_value = "SENSORGATE")]
    stream: String,
    /// Create the stream and exit.
    #[arg(long)]
    create_stream: bool,
    /// With --create-stream: the stream's size limit in bytes (oldest
    /// messages are discarded past it, so a long run cannot fill the disk).
    #[arg(long, default_value_t = 4 << 30)]
    max_bytes: i64,
    /// Most PubAcks outstanding per publisher (mqtt_peer's window is the
    /// same, 1000).
    #[arg(long, default_value_t = 1000)]
    window: usize,
}

/// How long a PubAck or an API reply may take before it counts as an error.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(port: u16) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(format!("127.0.0.1:{port}"))
        .await
        .with_context(|| format!("connecting to nats-server on 127.0.0.1:{port}"))
}

fn context(client: async_nats::Client, window: usize) -> Context {
    jetstream::context::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .ack_timeout(ACK_TIMEOUT)
        .max_ack_inflight(window)
        .backpressure_on_inflight(true)
        .build(client)
}

async fn create_stream(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let js = context(connect(cli.peer.port).await?, 16);
    let mut s = js
        .get_or_create_stream(stream::Config {
            name: cli.stream.clone(),
            subjects: vec!["sensorgate.>".into()],
            storage: stream::StorageType::File,
            max_bytes: cli.max_bytes,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let info = s.info().await.context("reading the stream's info")?;
    Ok(serde_json::json!({
        "stream": info.config.name,
        "subjects": info.config.subjects,
        "storage": format!("{:?}", info.config.storage),
        "max_bytes": info.config.max_bytes,
    }))
}

/// A publisher's JetStream context. Each publish hands its PubAck future to
/// the publisher's ack task through a channel of `window` places: when the
/// window is full the publisher waits, as an MQTT client does at its
/// inflight limit.
struct NatsPublisher {
    js: Context,
    acks: mpsc::Sender<(jetstream::context::PublishAckFuture, u64)>,
}

impl Publish for NatsPublisher {
    const SEPARATOR: char = '.';

    async fn publish(&mut self, topic: &str, payload: Vec<u8>, readings: u64) -> bool {
        match self.js.publish(topic.to_string(), payload.into()).await {
            Ok(ack) => self.acks.send((ack, readings)).await.is_ok(),
            Err(_) => false,
        }
    }
}

/// Awaits one publisher's PubAcks in publish order; a PubAck means stored.
async fn count_acks(
    mut acks: mpsc::Receiver<(jetstream::context::PublishAckFuture, u64)>,
    c: Arc<Counters>,
) {
    while let Some((ack, readings)) = acks.recv().await {
        match ack.await {
            Ok(_) => c.acked(readings),
            Err(_) => c.error(),
        }
    }
}

/// One consumer: its own connection and ephemeral pull consumer (new
/// messages only, explicit acks). Ready once the consumer exists, so no
/// message published afterwards is missed.
async fn consume(
    port: u16,
    stream_name: String,
    meter: Meter,
    ready: tokio::sync::oneshot::Sender<()>,
    c: Arc<Counters>,
) -> anyhow::Result<()> {
    let js = context(connect(port).await?, 1024);
    let stream = js
        .get_stream(&stream_name)
        .await
        .context("finding the stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("creating a consumer")?;
    let mut messages = consumer.messages().await.context("pulling")?;
    let _ = ready.send(());
    while let Some(m) = messages.next().await {
        match m {
            Ok(m) => {
                meter.on_message(&m.payload);
                if m.ack().await.is_err() {
                    c.error();
                }
            }
            Err(_) => c.error(),
        }
    }
    Ok(())
}

async fn load(cli: &Cli) -> anyhow::Result<serde_json::Value> {
    let args = &cli.peer;
    let c = Arc::new(Counters::default());
    let mut tasks = JoinSet::new();
    // The consumers first, so they see every publish.
    let (port, stream) = (args.port, cli.stream.clone());
    let meters = schedule::start_subscribers(
        args.subscriber_count(),
        &c,
        &mut tasks,
        |_, meter, ready| {
            let (stream, c) = (stream.clone(), c.clone());
            async move {
                if let Err(e) = consume(port, stream, meter, ready, c.clone()).await {
                    eprintln!("nats_peer: consumer: {e:#}");
                    c.error();
                }
            }
        },
    )
    .await?;

    let start = Instant::now();
    let plan = Plan::new(args);
    let mut publishers = JoinSet::new();
    for n in 1..=args.devices {
        let js = context(connect(args.port).await?, cli.window + 16);
        let (tx, rx) = mpsc::channel(cli.window);
        tasks.spawn(count_acks(rx, c.clone()));
        let conn = NatsPublisher { js, acks: tx };
        publishers.spawn(schedule::publish_on_schedule(plan, n, conn, c.clone()));
    }
    let conns = publishers.join_all().await;
    schedule::wait_drained(&c, args.subscriber_count(), args.drain()).await;
    let elapsed = start.elapsed().as_secs_f64();
    tasks.abort_all();
    drop(conns);
    Ok(report::report(args, &c, &meters, elapsed))
}

async fn idle(args: &PeerArgs) {
    let errors = AtomicU64::new(0);
    let mut clients = Vec::with_capacity(args.idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..args.idle {
        if Instant::now() >= deadline {
            break;
        }
        match connect(args.port).await {
            Ok(c) => clients.push(c),
            Err(_) => {
                errors.fetch_add(1, Relaxed);
            }
        }
        // Paced, so the server's accept queue never overflows.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "{}",
        report::idle_report(clients.len() as u64, errors.load(Relaxed))
    );
    tokio::time::sleep(args.duration()).await;
    drop(clients);
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.peer.check()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let out = if cli.create_stream {
            create_stream(&cli).await?
        } else if cli.peer.idle > 0 {
            idle(&cli.peer).await;
            return Ok(());
        } else {
            load(&cli).await?
        };
        println!("{out}");
        Ok(())
    })
}
