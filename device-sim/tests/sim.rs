//! device-sim against the real daemon: sensorgate started in-process on
//! 127.0.0.1:0 with a temp store, or as the built binary where a test
//! SIGKILLs it (both from sensorgate-test-kit, as the daemon's own tests
//! do), the built `device-sim` binary run with `--json`, and its report
//! checked against what the daemon actually stored.

use std::time::Duration;

use sensorgate_test_kit::*;
use serde_json::Value;

struct Run {
    code: i32,
    report: Value,
    stderr: String,
}

/// Runs the device-sim binary with `args`; parses the `--json` report.
async fn sim(args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("device-sim finishes within 60s")
    .expect("device-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

fn assert_nothing_lost(run: &Run) {
    let r = &run.report;
    assert_eq!(run.code, 0, "exit code; stderr: {}\n{r}", run.stderr);
    assert_eq!(r["lost_batches"], 0, "{r}");
    assert_eq!(r["sent_readings"], r["acked_readings"], "{r}");
    for k in ["p50", "p99", "p999", "max"] {
        assert!(r["latency_us"][k].as_u64().is_some(), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_run_acks_exactly_what_the_daemon_stored() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "4",
        "--rate",
        "200",
        "--batch",
        "10",
        "--duration",
        "2s",
        "--json",
    ])
    .await;
    assert_nothing_lost(&run);
    let acked = run.report["acked_readings"].as_u64().unwrap();
    assert!(acked >= 4 * 200, "{}", run.report);
    assert_eq!(d.stored("#").await.len() as u64, acked, "{}", run.report);
    assert_eq!(run.report["rejected"], serde_json::json!({}));
    assert!(run.report["readings_per_sec"].as_f64().unwrap() > 0.0);
    assert!(run.report["duration_s"].as_f64().unwrap() >= 2.0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_continues_from_the_welcome_last_seq() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let args = [
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "2",
        "--rate",
        "100",
        "--batch",
        "5",
        "--duration",
        "1s",
        "--json",
        "--interval",
        "poisson",
    ];
    let first = sim(&args).await;
    assert_nothing_lost(&first);
    let second = sim(&args).await;
    assert_nothing_lost(&second);
    let total = first.report["acked_readings"].as_u64().unwrap()
        + second.report["acked_readings"].as_u64().unwrap();
    assert_eq!(d.stored("#").await.len() as u64, total);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_mid_run_loses_nothing() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let run = tokio::spawn(async move {
        sim(&[
            "--url",
            &url,
            "--secret",
            SECRET,
            "--devices",
            "4",
            "--rate",
            "200",
            "--batch",
            "10",
            "--duration",
            "3s",
            "--drain",
            "10s",
            "--json",
        ])
        .await
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    d.restart().await;
    let run = run.await.unwrap();
    assert_nothing_lost(&run);
    let r = &run.report;
    assert!(r["reconnects"].as_u64().unwrap() >= 4, "{r}");
    assert_eq!(
        d.stored("#").await.len() as u64,
        r["acked_readings"].as_u64().unwrap(),
        "{r}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_sigkill_mid_run_loses_no_acked_reading() {
    let dir = tempfile::tempdir().unwrap();
    // The restarted daemon must come back on the same port.
    let port = restartable_port();
    let config = write_config(dir.path(), port, "");
    let log = dir.path().join("sensorgate.log");
    let mut child = ChildDaemon::start(&config, port, &log).await;
    let base = child.base();
    let url = format!("ws://{base}/v1/ingest");
    let run = tokio::spawn(async move {
        sim(&[
            "--url",
            &url,
            "--secret",
            SECRET,
            "--devices",
            "4",
            "--rate",
            "200",
            "--batch",
            "10",
            "--duration",
            "3s",
            "--drain",
            "15s",
            "--json",
        ])
        .await
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    child.kill();
    let _child = ChildDaemon::start(&config, port, &log).await;
    let run = run.await.unwrap();
    assert_nothing_lost(&run);
    let r = &run.report;
    assert!(r["reconnects"].as_u64().unwrap() >= 4, "{r}");
    // Every reading the simulator counted as acked is stored, and none
    // twice: exactly-once storage across the resends.
    let stored = stored_at(&base).await.len() as u64;
    assert_eq!(stored, r["acked_readings"].as_u64().unwrap(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_rate_limited_and_every_batch_is_still_acked() {
    let mut d = TestDaemon::start_with(|c| {
        c.limits.readings_per_sec = 500;
        c.limits.burst = 500;
    })
    .await;
    let url = d.ws("/v1/ingest");
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "2",
        "--batch",
        "50",
        "--duration",
        "2s",
        "--scenario",
        "flood",
        "--json",
    ])
    .await;
    assert_nothing_lost(&run);
    let r = &run.report;
    assert!(r["rejected"]["rate_limited"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["unsent_readings"], 0, "{r}");
    // About 500/s per device (plus the burst): the retries were honoured.
    let acked = r["acked_readings"].as_u64().unwrap();
    assert!(acked >= 2 * 500, "{r}");
    assert_eq!(d.stored("#").await.len() as u64, acked, "{r}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_connects_every_device_and_loses_nothing() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "5",
        "--rate",
        "100",
        "--batch",
        "5",
        "--duration",
        "2s",
        "--scenario",
        "ramp",
        "--json",
    ])
    .await;
    assert_nothing_lost(&run);
    assert_eq!(run.report["devices_connected"], 5, "{}", run.report);
    assert_eq!(
        d.stored("#").await.len() as u64,
        run.report["acked_readings"].as_u64().unwrap()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_reconnects_and_loses_nothing() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "6",
        "--rate",
        "300",
        "--batch",
        "10",
        "--duration",
        "2s",
        "--scenario",
        "churn",
        "--json",
    ])
    .await;
    assert_nothing_lost(&run);
    assert!(
        run.report["reconnects"].as_u64().unwrap() > 0,
        "{}",
        run.report
    );
    assert_eq!(
        d.stored("#").await.len() as u64,
        run.report["acked_readings"].as_u64().unwrap()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_rejected_and_the_daemon_keeps_serving() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "3",
        "--rate",
        "100",
        "--batch",
        "5",
        "--duration",
        "2s",
        "--scenario",
        "garbage",
        "--json",
    ])
    .await;
    assert_nothing_lost(&run);
    let r = &run.report;
    assert!(r["rejected"]["invalid"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["rejected"]["unsupported_frame"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["reconnects"], 0, "no 1008 close: {r}");
    let health = reqwest::get(d.http("/healthz")).await.unwrap().status();
    assert_eq!(health, 200);
    // The garbage stored nothing: only the good batches are there.
    assert_eq!(
        d.stored("#").await.len() as u64,
        r["acked_readings"].as_u64().unwrap()
    );
    let good = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "1",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--device-prefix",
        "good-",
        "--json",
    ])
    .await;
    assert_nothing_lost(&good);
    assert!(good.report["acked_readings"].as_u64().unwrap() > 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_connection_gets_every_reading_and_latency_is_reported() {
    every_subscriber_gets_every_reading("json").await;
}

/// The same over the `sensorgate.msgpack` subprotocol: binary frames are
/// parsed and counted like text ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_subscribers_get_every_reading_too() {
    every_subscriber_gets_every_reading("msgpack").await;
}

async fn every_subscriber_gets_every_reading(format: &str) {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let stream = d.ws("/v1/stream");
    let run = sim(&[
        "--subscriber-format",
        format,
        "--url",
        &url,
        "--secret",
        SECRET,
        "--devices",
        "2",
        "--rate",
        "100",
        "--batch",
        "5",
        "--duration",
        "1s",
        "--subscribe",
        &stream,
        "--subscribers",
        "3",
        "--json",
    ])
    .await;
    assert_nothing_lost(&run);
    let r = &run.report;
    let acked = r["acked_readings"].as_u64().unwrap();
    assert!(acked > 0, "{r}");
    assert_eq!(r["latency_source"], "subscriber", "{r}");
    assert!(r["subscriber"].get("error").is_none(), "{r}");
    assert_eq!(r["subscriber"]["connections"], 3, "{r}");
    // Three connections, each with every acked reading exactly once.
    assert_eq!(r["subscriber"]["readings"], acked * 3, "{r}");
    assert_eq!(r["subscriber"]["lagged"], 0, "{r}");
    assert_eq!(r["subscriber"]["latency_us"]["count"], acked * 3, "{r}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_connect_exits_non_zero() {
    let mut d = TestDaemon::start().await;
    let url = d.ws("/v1/ingest");
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        "not-the-secret",
        "--devices",
        "2",
        "--duration",
        "1s",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert_eq!(run.report["devices_connected"], 0);
    d.stop().await;

    // Nothing listening at all.
    let url = format!("ws://127.0.0.1:{}/v1/ingest", free_port());
    let run = sim(&[
        "--url",
        &url,
        "--secret",
        SECRET,
        "--duration",
        "300ms",
        "--drain",
        "300ms",
    ])
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
}

#[tokio::test]
async fn one_token_for_many_devices_is_a_usage_error() {
    let run = sim(&[
        "--url",
        "ws://127.0.0.1:1/v1/ingest",
        "--token",
        "t",
        "--devices",
        "3",
    ])
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("one connection per device"),
        "{}",
        run.stderr
    );
}

#[test]
fn generate_assets_writes_the_man_page_and_completions() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .arg("--generate-assets")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    let man = read("man/device-sim.1");
    for opt in [
        "\\-\\-url",
        "\\-\\-devices",
        "\\-\\-rate",
        "\\-\\-subscribe",
    ] {
        assert!(man.contains(opt), "{opt} missing from:\n{man}");
    }
    assert!(!man.contains("generate"), "{man}");
    assert!(read("bash/device-sim").contains("--devices"));
    assert!(read("zsh/_device-sim").contains("#compdef device-sim"));
}
