//! The `sensorgate` binary: parse the command line, load the configuration,
//! and hand over to [`sensorgate::Daemon`]. Exit codes: 0 clean, 1 runtime
//! failure, 2 bad configuration or usage, 3 a store that is damaged or
//! behind its durable high-water mark (see `check-store`, `--accept-data-loss`).

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
    /// Start even though the store holds fewer readings than it once
    /// acknowledged (damaged or rolled back); new ids continue above the
    /// recorded high-water mark so none is reused. Look first: `check-store`.
    #[arg(long, global = true)]
    accept_data_loss: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Inspect the store (daemon stopped): counts, id range, gaps, per-device
    /// last seq, high-water mark against content. Exit 0 when healthy.
    CheckStore,
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
    let open = sensorgate::store::OpenOptions {
        accept_data_loss: cli.accept_data_loss,
        restart_in_place: true,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config, open),
        Command::CheckStore => check_store(&config),
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

fn check_store(config: &Config) -> ExitCode {
    let path = &config.storage.path;
    if !path.join("db").exists() {
        eprintln!(
            "sensorgate: storage.path {}: no store there",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    match sensorgate::store::check::check(path) {
        Ok(report) => {
            print!("store:           {}\n{report}", path.display());
            if report.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sensorgate: {e}");
            ExitCode::FAILURE
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

/// Exit code for a store refused at start-up: distinct from other failures
/// so that a supervisor (or an operator's script) can tell "needs a human".
const EXIT_STORE_REFUSED: u8 = 3;

/// How long the runtime may take, once the daemon has drained (or was
/// abandoned at its deadline), to stop its tasks before the process exits
/// regardless.
const RUNTIME_EXIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Past the shutdown deadline, how long `main` waits for the daemon's own
/// drain to return before giving up on it.
const DRAIN_SLACK: std::time::Duration = std::time::Duration::from_millis(200);

fn run(config: Config, open: sensorgate::store::OpenOptions) -> ExitCode {
    sensorgate::telemetry::init_logging(&config.log);
    // Raised first (connections need it), reported once the daemon is up, so
    // a failing start leaves only its one line of reason.
    let nofile = sensorgate::http::serve::raise_open_files_limit();
    sensorgate::allocator::fix_mmap_threshold();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sensorgate: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let daemon = match sensorgate::Daemon::start_with(Arc::new(config), open).await {
            Ok(d) => d,
            Err(e) => {
                // One line, through the logger (the journal under systemd).
                tracing::error!("{e}");
                return match e {
                    sensorgate::StartError::Store(s) if s.needs_operator() => {
                        ExitCode::from(EXIT_STORE_REFUSED)
                    }
                    _ => ExitCode::FAILURE,
                };
            }
        };
        report_open_files_limit(nofile);
        sensorgate::systemd::notify_ready();
        wait_for_signal().await;
        tracing::info!("shutting down");
        sensorgate::systemd::notify_stopping();
        let token = daemon.shutdown_token();
        token.cancel();
        let deadline = daemon.deadline();
        if tokio::time::timeout_at(deadline + DRAIN_SLACK, daemon.shutdown())
            .await
            .is_err()
        {
            tracing::error!("shutdown did not finish by server.shutdown_timeout; exiting anyway");
        }
        ExitCode::SUCCESS
    });
    // Dropping the runtime would wait for every blocking task (a writer
    // join or a store read stuck in sled, say); they are abandoned instead.
    runtime.shutdown_timeout(RUNTIME_EXIT);
    code
}

/// Every connection is a descriptor: say what the open-files limit is
/// after raising the soft limit to the hard one.
fn report_open_files_limit(raised: std::io::Result<((u64, u64), u64)>) {
    match raised {
        Ok(((soft, hard), now)) => {
            tracing::info!(before = soft, hard, now, "open-files limit (RLIMIT_NOFILE)")
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
