//! Man pages and shell completions for packaging: lives in the
//! `sensorgate-cli-docs` crate so device-sim can use it without the daemon;
//! re-exported here so `sensorgate::cli_docs::write` keeps working.

pub use sensorgate_cli_docs::write;
