//! The `sensorgate` binary (SPEC §8): `--version`, `check-config`, `token`,
//! exit code 2 on bad configuration, and a clean exit 0 on SIGTERM/SIGINT
//! with devices closed by 1001.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sensorgate::auth::{Authenticator, Role};
use sensorgate_test_kit::*;
use serde_json::json;

fn run(args: &[&str], config: Option<&Path>) -> Output {
    let mut cmd = sensorgate_cmd();
    cmd.args(args);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.output().expect("running sensorgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config file with exactly `toml` in it.
fn raw_config(dir: &Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("raw.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs `args` on `toml` and expects exit code 2 with every one of `keys`
/// named on stderr.
fn rejects_config(toml: &str, args: &[&str], keys: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_config(dir.path(), toml);
    let o = run(args, Some(&path));
    assert_eq!(
        o.status.code(),
        Some(2),
        "{args:?} on {toml}: {}",
        stderr(&o)
    );
    for key in keys {
        assert!(
            stderr(&o).contains(key),
            "stderr names {key}: {}",
            stderr(&o)
        );
    }
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

#[test]
fn version_prints_the_package_version() {
    let o = run(&["--version"], None);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("sensorgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_prints_the_effective_config_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 18_750, "[fanout]\nsubscriber_queue = 1234\n");
    let o = run(&["check-config"], Some(&config));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains(SECRET), "the secret leaked:\n{out}");
    for line in [
        "[server]",
        "listen = \"127.0.0.1:18750\"",
        "subscriber_queue = 1234",
        "burst = 1000000",
        // Defaults for keys the file leaves out.
        "max_readings_per_frame = 500",
        "max_consecutive_errors = 20",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("jwt_secret"), "{out}");
}

#[test]
fn check_config_applies_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 18_751, "");
    let o = sensorgate_cmd()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("SENSORGATE__LIMITS__BURST", "800")
        .env("SENSORGATE__SERVER__IDLE_TIMEOUT", "90s")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("burst = 800"), "{out}");
    assert!(out.contains("90s"), "{out}");
}

#[test]
fn secret_from_a_file_is_trimmed_and_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt.secret");
    std::fs::write(&secret_file, "file-secret-xyz\n\n").unwrap();
    let toml = format!(
        "[auth]\njwt_secret_file = \"{}\"\n[storage]\npath = \"{}\"\n",
        secret_file.display(),
        dir.path().join("store").display()
    );
    let path = raw_config(dir.path(), &toml);
    let o = run(&["check-config"], Some(&path));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("file-secret-xyz"), "{}", stdout(&o));
    let o = run(&["token", "--role", "device", "--sub", "d1"], Some(&path));
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    Authenticator::new("file-secret-xyz")
        .verify(&token, Role::Device)
        .expect("trailing whitespace is trimmed from the secret file");
}

#[test]
fn unknown_key_exits_2_and_names_the_key() {
    let base = "[auth]\njwt_secret = \"s\"\n";
    for cmd in [
        &["check-config"][..],
        &["run"],
        &["token", "--role", "device", "--sub", "d1"],
    ] {
        rejects_config(
            &format!("{base}[server]\nlisen = \"127.0.0.1:0\"\n"),
            cmd,
            &["server.lisen"],
        );
    }
    rejects_config(
        &format!("{base}[bogus]\nx = 1\n"),
        &["check-config"],
        &["bogus"],
    );
    // Every problem at once, each by its key.
    rejects_config(
        &format!("{base}[limits]\nburst = \"lots\"\nfoo = 1\n[server]\nidle_timeout = \"soon\"\n"),
        &["check-config"],
        &["limits.burst", "limits.foo", "server.idle_timeout"],
    );
}

#[test]
fn missing_secret_exits_2_and_names_the_key() {
    rejects_config(
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        &["check-config"],
        &["jwt_secret"],
    );
}

#[test]
fn missing_explicit_config_file_exits_2() {
    let o = run(
        &["check-config"],
        Some(Path::new("/nonexistent/sensorgate.toml")),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/sensorgate.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn token_prints_a_jwt_the_authenticator_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 18_752, "");
    let o = run(&["token", "--role", "device", "--sub", "d1"], Some(&config));
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let auth = Authenticator::new(SECRET);
    let id = auth
        .verify(&token, Role::Device)
        .expect("a valid device token");
    assert_eq!(id.sub, "d1");
    // Signed with the configured secret, not some other one.
    assert!(Authenticator::new("other")
        .verify(&token, Role::Device)
        .is_err());

    let o = run(
        &[
            "token",
            "--role",
            "subscriber",
            "--sub",
            "web",
            "--ttl",
            "1h",
            "--topic",
            "d1/#",
        ],
        Some(&config),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let id = auth.verify(&token, Role::Subscriber).unwrap();
    assert_eq!(id.topics, Some(vec!["d1/#".to_string()]));
    // --ttl sets exp about an hour ahead.
    let claims: serde_json::Value = jsonwebtoken::decode(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .unwrap()
    .claims;
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp.abs_diff(unix_secs() + 3600) < 60, "{claims}");
}

#[test]
fn token_refuses_a_bad_device_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 18_753, "");
    let o = run(
        &["token", "--role", "device", "--sub", "a/b"],
        Some(&config),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
}

/// Starts the binary, connects a device with one acked batch, sends
/// `signal`; the device gets 1001, the process exits 0, and the acked
/// batch is there after a restart.
async fn signal_closes_devices_with_1001_and_exits_0(signal: Signal) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let log = dir.path().join("sensorgate.log");
    let mut daemon = ChildDaemon::start(&config, port, &log).await;
    let mut ws = connect_device(&daemon.base(), "d1").await;
    assert_eq!(recv_frame(&mut ws).await["type"], "welcome");
    send(&mut ws, &batch(Some(1), "t", 5)).await;
    assert_eq!(recv_frame(&mut ws).await, json!({"type": "ack", "seq": 1}));

    kill(Pid::from_raw(daemon.child.id() as i32), signal).unwrap();
    assert_eq!(recv_close(&mut ws).await, Some(1001.into()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 15s of {signal}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{signal}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(daemon);

    let daemon = ChildDaemon::start(&config, port, &log).await;
    assert_eq!(stored_at(&daemon.base()).await.len(), 5);
    let mut ws = connect_device(&daemon.base(), "d1").await;
    assert_eq!(recv_frame(&mut ws).await["last_seq"], 1);
}

#[tokio::test]
async fn sigterm_closes_devices_with_1001_and_exits_0() {
    signal_closes_devices_with_1001_and_exits_0(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_closes_devices_with_1001_and_exits_0() {
    signal_closes_devices_with_1001_and_exits_0(Signal::SIGINT).await;
}

#[test]
fn generate_assets_writes_man_pages_and_completions_from_the_clap_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["generate-assets", &dir.path().to_string_lossy()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    assert!(read("man/sensorgate.1").contains("check\\-config"));
    // One page per subcommand, options as clap defines them.
    let token = read("man/sensorgate-token.1");
    for opt in ["\\-\\-role", "\\-\\-sub", "\\-\\-ttl", "\\-\\-topic"] {
        assert!(token.contains(opt), "{opt} missing from:\n{token}");
    }
    assert!(read("bash/sensorgate").contains("check-config"));
    assert!(read("zsh/_sensorgate").contains("#compdef sensorgate"));
    // The packaging-only subcommand stays out of what users read.
    assert!(!dir.path().join("man/sensorgate-generate-assets.1").exists());
    assert!(!read("man/sensorgate.1").contains("generate"));
}
