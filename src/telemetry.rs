//! Logs and metrics set-up. The metrics themselves (names, HELP, emission)
//! live in [`crate::events`]; names are all `sensorgate_*` (SPEC §5);
//! no metric carries a device label (unbounded cardinality).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::events;

/// The process-wide Prometheus recorder, installed on first use. Several
/// daemons in one process (tests) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), events::SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(events::COMMIT_SIZE_METRIC.into()),
                        events::COMMIT_SIZE_BUCKETS,
                    )
                })
                .expect("histogram buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours just
            // renders nothing, which is not worth refusing to start over.
            let _ = metrics::set_global_recorder(recorder);
            events::describe();
            events::register_hot();
            start_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Upkeeps run so far in this process (for the test that they run).
static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// How many times [`start_upkeep`]'s thread has folded the histograms.
#[doc(hidden)]
pub fn upkeeps() -> u64 {
    UPKEEPS.load(Ordering::Relaxed)
}

/// Folds the histograms' recorded samples into their buckets every
/// [`UPKEEP_EVERY`], on a thread of its own for the life of the process.
/// `build_recorder` starts no upkeep, and a sample is otherwise kept until
/// `/metrics` is next scraped, which on a box nobody scrapes is never:
/// at goal 3 that was some 5,000 samples a second, growing for good.
fn start_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("sensorgate-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
            UPKEEPS.fetch_add(1, Ordering::Relaxed);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms fold only when scraped");
    }
}

/// Initialises logging per `log.level` and `log.format`.
///
/// When stderr is the journal (a systemd service), events go to journald
/// natively instead: each field becomes a journal field
/// (`journalctl -u sensorgate ERROR=...`), the level becomes the entry's
/// priority (`journalctl -p warning`), and journald adds the timestamp, so
/// `log.format` does not apply there. Elsewhere, text or JSON lines go to
/// stderr, with ANSI colours only when stderr is a terminal.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    if crate::systemd::stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("sensorgate".into()))
                    .try_init();
                return;
            }
            Err(e) => eprintln!("sensorgate: journald unreachable ({e}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // On a failed write tracing-subscriber would report through
        // `eprintln!`, which panics when stderr is a file on a full disk:
        // the thread that logged (the store writer, refusing batches
        // because the disk is full) would die. A lost log line is better.
        .log_internal_errors(false);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
