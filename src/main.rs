//! The `sensorgate` binary: parse the command line, load the configuration,
//! and hand over to [`sensorgate::Daemon`]. Exit codes: 0 clean, 1 runtime
//! failure, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use sensorgate::auth::{Authenticator, Role};
use sensorgate::config::{self, Config};

#[derive(Parser)]
#[command(
    name = "sensorgate",
    version,
    about = "IoT telemetry daemon: WebSocket ingest, durable storage, live fan-out, MQTT bridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (default /etc/sensorgate/sensorgate.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Mint a JWT from the configured secret.
    Token {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. "30d"; without it the token does not expire.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
        /// Topic filter a subscriber token may use (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    /// Write man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no configuration: the packaging script runs it on the build host.
    if let Some(Command::GenerateAssets { dir }) = &cli.command {
        return generate_assets(dir);
    }
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            report_config_error(&e);
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
        Command::CheckConfig => {
            print!("{}", config.render_redacted());
            ExitCode::SUCCESS
        }
        Command::GenerateAssets { .. } => unreachable!("handled before loading the config"),
        Command::Token {
            role,
            sub,
            ttl,
            topics,
        } => {
            if role == Role::Device && !sensorgate::protocol::is_valid_name(&sub) {
                eprintln!("sensorgate: --sub: device ids are 1-64 characters of [A-Za-z0-9_.:-]");
                return ExitCode::from(2);
            }
            for t in &topics {
                if let Err(e) = sensorgate::fanout::TopicFilter::parse(t) {
                    eprintln!("sensorgate: --topic: {e}");
                    return ExitCode::from(2);
                }
            }
            let topics = (!topics.is_empty()).then_some(topics);
            let auth = Authenticator::new(&config.auth.jwt_secret);
            println!("{}", auth.mint(role, &sub, ttl, topics));
            ExitCode::SUCCESS
        }
    }
}

/// One self-contained line per problem: under systemd every stderr line is
/// its own journal entry, so a header line would be a reason-less entry.
fn report_config_error(e: &config::ConfigError) {
    match e.problems() {
        [] => eprintln!("sensorgate: {e}"),
        problems => {
            for p in problems {
                eprintln!("sensorgate: invalid configuration: {p}");
            }
        }
    }
}

fn generate_assets(dir: &std::path::Path) -> ExitCode {
    match sensorgate::cli_docs::write(Cli::command(), dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sensorgate: generate-assets {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> ExitCode {
    sensorgate::telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sensorgate: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let daemon = match sensorgate::Daemon::start(Arc::new(config)).await {
            Ok(d) => d,
            Err(e) => {
                // One line, through the logger (the journal under systemd).
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        sensorgate::systemd::notify_ready();
        wait_for_signal().await;
        tracing::info!("shutting down");
        sensorgate::systemd::notify_stopping();
        daemon.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
