//! The binary under a (stand-in) service manager, spoken to over a real
//! notification socket as systemd does (SPEC §8, issue 10): READY=1 once
//! serving, WATCHDOG=1 while the writer answers, STOPPING=1 on SIGTERM;
//! logs for files and the journal; failing starts explained in one line.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sensorgate_test_kit::*;

/// A notification socket like systemd's: one datagram per `sd_notify`.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// Messages until one contains `want` (returned with all before it),
    /// or `None` after `within`.
    fn until(&self, want: &str, within: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == want);
                seen.push(msg);
                if done {
                    return Some(seen);
                }
            }
        }
        None
    }
}

#[tokio::test]
async fn notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let notify = NotifySocket::bind();
    let log = dir.path().join("log");
    // systemd names the watched process in WATCHDOG_PID; `exec` keeps the
    // shell's pid for the daemon.
    let base = sensorgate_cmd();
    let mut cmd = without_overrides(std::process::Command::new("sh"));
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\""])
        .arg(base.get_program())
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        // 300 ms: the daemon pings its writer every 150 ms.
        .env("WATCHDOG_USEC", "300000")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = KillOnDrop(cmd.spawn().unwrap());

    notify
        .until("READY=1", Duration::from_secs(30))
        .expect("READY=1");
    // Ready means serving: the port answers at once.
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for _ in 0..3 {
        notify
            .until("WATCHDOG=1", Duration::from_secs(10))
            .expect("WATCHDOG=1 keeps coming while the writer answers");
    }

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    notify
        .until("STOPPING=1", Duration::from_secs(10))
        .expect("STOPPING=1 on SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 15s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn without_a_watchdog_no_watchdog_pings_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let notify = NotifySocket::bind();
    let _child = KillOnDrop(
        sensorgate_cmd()
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env_remove("WATCHDOG_USEC")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    notify
        .until("READY=1", Duration::from_secs(30))
        .expect("READY=1");
    assert_eq!(notify.until("WATCHDOG=1", Duration::from_secs(2)), None);
}

#[tokio::test]
async fn logs_to_a_file_carry_no_ansi_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = info_level_config(dir.path(), port);
    let log = dir.path().join("log");
    let mut daemon = ChildDaemon::start(&config, port, &log).await;
    // /healthz can answer a moment before the line is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("sensorgate listening")
    {
        assert!(Instant::now() < deadline, "no listening line in the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "escape codes in {text:?}");
}

#[test]
fn stderr_named_by_journal_stream_is_taken_for_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = info_level_config(dir.path(), free_port());
    let log = dir.path().join("log");
    let stderr = std::fs::File::create(&log).unwrap();
    let meta = stderr.metadata().unwrap();
    let notify = NotifySocket::bind();
    let _child = KillOnDrop(
        sensorgate_cmd()
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    notify
        .until("READY=1", Duration::from_secs(30))
        .expect("READY=1");
    // Taken for the journal: either logged to journald (nothing here), or,
    // with no journald on this machine, said so and fell back to stderr.
    // Not taken for it, the listening line would be here and nothing else.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("journald unreachable") || !text.contains("sensorgate listening"),
        "{text}"
    );
}

#[test]
fn a_stale_journal_stream_falls_back_to_plain_stderr() {
    // Inherited from a service whose stderr was the journal, but this
    // process's stderr is a pipe: plain lines on stderr, no escapes.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), "");
    let blocker = dir.path().join("store");
    std::fs::write(&blocker, "not a directory").unwrap();
    let (code, stderr) = run_once(&config, &[("JOURNAL_STREAM", "1:1")]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("storage.path"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[tokio::test]
async fn a_locked_store_stops_start_up_with_one_line_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let _running = ChildDaemon::start(&config, port, &dir.path().join("log")).await;
    let second = dir.path().join("second.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!(":{port}\""), ":0\"");
    std::fs::write(&second, text).unwrap();
    let (code, stderr) = run_once(&second, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("storage.path"), "{stderr}");
    let store = dir.path().join("store");
    assert!(stderr.contains(&*store.to_string_lossy()), "{stderr}");
}

#[test]
fn every_config_problem_is_one_self_contained_line() {
    // Under systemd each stderr line is its own journal entry.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[auth]\njwt_secret_file = \"/nonexistent/jwt.secret\"\n[limits]\nburst = \"lots\"\n",
    )
    .unwrap();
    let (code, stderr) = run_once(&config, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("auth.jwt_secret_file") && l.contains("/nonexistent/jwt.secret")),
        "{stderr}"
    );
    assert!(lines.iter().any(|l| l.contains("limits.burst")), "{stderr}");
    for line in lines {
        assert!(
            line.starts_with("sensorgate: invalid configuration: "),
            "{line}"
        );
    }
}

/// `sensorgate run --config <config>` with `env`, to its end: the exit
/// code and stderr.
fn run_once(config: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = sensorgate_cmd()
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The test config of [`write_config`] at `log.level = "info"`, so the
/// daemon's start-up lines are written.
fn info_level_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let config = write_config(dir, port, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("level = \"warn\"", "level = \"info\"");
    std::fs::write(&config, &text).unwrap();
    config
}

/// SIGKILLs and reaps the child when the test ends, passing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
