//! Logs and metrics set-up. Metric names are all `sensorgate_*` (SPEC §5);
//! no metric carries a device label (unbounded cardinality).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The process-wide Prometheus recorder, installed on first use. Several
/// daemons in one process (tests) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours just
            // renders nothing, which is not worth refusing to start over.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Initialises logging to stderr per `log.level` and `log.format`.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
