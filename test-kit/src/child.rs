//! The daemon as a child process: its config file ([`write_config`],
//! [`add_keys`]), the built `sensorgate` binary ([`sensorgate_bin`]) and
//! [`ChildDaemon`], for what an in-process daemon cannot show (signals,
//! exit codes, a SIGKILL mid-write, the CLI).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::SECRET;

/// Writes `dir/sensorgate.toml` for a child daemon on `port` with its store
/// in `dir/store`, generous limits, and `extra` appended; returns its path.
pub fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
shutdown_timeout = "5s"

[auth]
jwt_secret = "{SECRET}"

[limits]
readings_per_sec = 1000000
burst = 1000000
handshakes_per_ip = 10000

[storage]
path = "{store}"

[log]
level = "warn"
{extra}
"#,
        store = dir.join("store").display(),
    );
    let path = dir.join("sensorgate.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Adds `keys` (TOML lines) to `[section]` of a config from [`write_config`]
/// (whose `extra` lands after its last section).
pub fn add_keys(config: &Path, section: &str, keys: &str) {
    let header = format!("[{section}]\n");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains(&header),
        "no {header} in {}",
        config.display()
    );
    std::fs::write(config, text.replace(&header, &format!("{header}{keys}"))).unwrap();
}

/// The `sensorgate` binary of this build.
///
/// A library cannot use `env!("CARGO_BIN_EXE_sensorgate")`: cargo defines
/// it only while compiling the integration tests of the package that owns
/// the binary. A recent cargo also sets it in the environment it runs those
/// tests in. Any other test (device-sim's, or the daemon's under an older
/// cargo) takes `target/<profile>/sensorgate`, which `cargo test
/// --workspace` builds along with every test. It is not built here: a
/// nested `cargo build -p sensorgate` resolves other dependency features
/// than a test build does, so it would build the daemon a second time.
///
/// # Panics
///
/// When that binary is missing or older than the daemon's sources (a run of
/// `cargo test -p device-sim` alone after an edit), naming the command that
/// builds it.
pub fn sensorgate_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("CARGO_BIN_EXE_sensorgate") {
        Some(bin) => PathBuf::from(bin),
        None => built_sensorgate(),
    })
}

/// `target/<profile>/sensorgate`, checked to exist and to be no older than
/// the sources it is built from.
fn built_sensorgate() -> PathBuf {
    let profile_dir = profile_dir();
    let bin = profile_dir.join("sensorgate");
    let build = match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => "cargo build -p sensorgate --bin sensorgate".to_string(),
        Some("release") => "cargo build --release -p sensorgate --bin sensorgate".to_string(),
        Some(p) => format!("cargo build --profile {p} -p sensorgate --bin sensorgate"),
    };
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        panic!("no {}: build it with `{build}`", bin.display());
    };
    if let Some(newer) = source_newer_than(built) {
        panic!(
            "{} is older than {}: rebuild it with `{build}`",
            bin.display(),
            newer.display()
        );
    }
    bin
}

/// A source of the daemon (`Cargo.toml`, `Cargo.lock`, `src/**`) modified
/// after `built`, if any: the binary would then be stale.
fn source_newer_than(built: std::time::SystemTime) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-kit/ is in the workspace root");
    let mut todo = vec![
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
        root.join("src"),
    ];
    while let Some(path) = todo.pop() {
        let Ok(meta) = path.metadata() else { continue };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            todo.extend(entries.map(|e| e.path()));
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(path);
        }
    }
    None
}

/// `target/<profile>`: test executables live in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()))
        .to_path_buf()
}

/// The target directory this test was built into, for files a test leaves
/// for people to look at (screenshots).
pub fn target_dir() -> PathBuf {
    let profile_dir = profile_dir();
    profile_dir.parent().unwrap_or(&profile_dir).to_path_buf()
}

/// The `sensorgate` binary with no `SENSORGATE__*` overrides inherited.
pub fn sensorgate_cmd() -> std::process::Command {
    without_overrides(std::process::Command::new(sensorgate_bin()))
}

/// `cmd` with no `SENSORGATE__*` variable inherited from the test's environment.
pub fn without_overrides(mut cmd: std::process::Command) -> std::process::Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SENSORGATE__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child daemon, SIGKILLed when dropped (a failing test leaves nothing
/// running).
pub struct ChildDaemon {
    pub child: std::process::Child,
    pub port: u16,
}

impl ChildDaemon {
    /// Starts `sensorgate run --config <config>` (output appended to
    /// `log`) and waits until `/healthz` answers.
    pub async fn start(config: &Path, port: u16, log: &Path) -> ChildDaemon {
        Self::start_wrapped(&[], config, port, log).await
    }

    /// [`ChildDaemon::start`] under a wrapper command (`strace ...`): runs
    /// `wrapper... sensorgate run --config <config>`. `child` is then the
    /// wrapper; [`ChildDaemon::daemon_pid`] finds sensorgate itself.
    pub async fn start_wrapped(
        wrapper: &[&str],
        config: &Path,
        port: u16,
        log: &Path,
    ) -> ChildDaemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = match wrapper.split_first() {
            None => sensorgate_cmd(),
            Some((program, args)) => {
                let mut c = without_overrides(std::process::Command::new(program));
                c.args(args).arg(sensorgate_bin());
                c
            }
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning sensorgate");
        let mut d = ChildDaemon { child, port };
        d.wait_healthy(log).await;
        d
    }

    /// The pid of the sensorgate process: the child itself, or the child's
    /// child under a wrapper.
    pub fn daemon_pid(&self, wrapped: bool) -> u32 {
        let pid = self.child.id();
        if !wrapped {
            return pid;
        }
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("reading the wrapper's children");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the wrapper has a child")
    }

    async fn wait_healthy(&mut self, log: &Path) {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sensorgate exited early ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let ok = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no /healthz within 30s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then waits (polling, at most `within`, else the test fails
    /// with the daemon's `log`) for the exit; returns its code and how long
    /// it took.
    pub async fn sigterm(&mut self, within: Duration, log: &Path) -> (Option<i32>, Duration) {
        let sent = std::time::Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), sent.elapsed());
            }
            assert!(
                sent.elapsed() < within,
                "still running {within:?} after SIGTERM: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}
