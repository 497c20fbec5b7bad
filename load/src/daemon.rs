//! Where the release `sensorgate` binary is, for drivers that run it as a
//! child process (so its RSS is the daemon's alone), and the configuration
//! of the drivers that run the daemon in-process.

use std::path::PathBuf;

use thiserror::Error;

/// Overrides where the daemon binary is looked for.
pub const BINARY_ENV: &str = "SENSORGATE_BIN";

#[derive(Debug, Error)]
pub enum BinaryError {
    #[error("cannot tell where this driver runs from: {0}")]
    OwnPath(std::io::Error),
    #[error(
        "no sensorgate binary at {0}: build it with `cargo build --release -p sensorgate` \
         (or set {BINARY_ENV})"
    )]
    Missing(PathBuf),
}

/// `$SENSORGATE_BIN`, else `sensorgate` beside this executable: Cargo puts
/// every binary of one profile in the same directory (`target/release/`).
pub fn sensorgate_binary() -> Result<PathBuf, BinaryError> {
    let path = match std::env::var_os(BINARY_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let me = std::env::current_exe().map_err(BinaryError::OwnPath)?;
            me.with_file_name("sensorgate")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(BinaryError::Missing(path))
    }
}

/// The JWT secret of [`unthrottled_config`]'s daemon.
pub const BENCH_SECRET: &str = "bench-secret";

/// The in-process drivers' daemon: 127.0.0.1 port 0, a store under `dir`,
/// and rate and handshake limits far above any load they offer, so what is
/// measured is the pipeline, not the limiter.
pub fn unthrottled_config(dir: &std::path::Path) -> sensorgate::config::Config {
    let mut config = sensorgate::config::Config::with_secret(BENCH_SECRET);
    config.server.listen = "127.0.0.1:0".parse().expect("a socket address");
    config.storage.path = dir.join("store");
    config.limits.readings_per_sec = 100_000_000;
    config.limits.burst = 100_000_000;
    config.limits.handshakes_per_ip = 1_000_000;
    config
}
