//! A damaged or rolled-back store (SPEC §7) is never served silently and
//! never a panic: the real binary refuses to start with exit code 3 and a
//! one-line reason naming `check-store` and `--accept-data-loss`; with that
//! flag it starts and new ids continue above the old high-water mark.
//! `check-store` reports the damage read-only.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sensorgate_test_kit::big_batches::{
    batch_for, config_for, last_id_of, reading_of, write_earlier_version_store,
};
use sensorgate_test_kit::*;
use serde_json::json;

/// Sends batches `from..=to` one by one, each acked.
async fn send_acked(base: &str, from: u64, to: u64) {
    let mut ws = connect_device(base, "d1").await;
    let welcome = recv_frame(&mut ws).await;
    assert_eq!(welcome["last_seq"], from - 1);
    for seq in from..=to {
        send(&mut ws, &batch_for(seq)).await;
        let ack = recv_frame(&mut ws).await;
        assert_eq!(
            (ack["type"].as_str(), ack["seq"].as_u64()),
            (Some("ack"), Some(seq))
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A killed daemon's store of 60 acked batches, and a copy of it taken
/// after the first 30 (a rollback to offer later).
struct Fixture {
    dir: tempfile::TempDir,
    store: PathBuf,
    earlier: PathBuf,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = config_for(dir.path(), port);
    let log = dir.path().join("daemon.log");
    let store = dir.path().join("store");
    let earlier = dir.path().join("earlier");
    let mut daemon = ChildDaemon::start(&config, port, &log).await;
    send_acked(&daemon.base(), 1, 30).await;
    let (code, _) = daemon.sigterm(Duration::from_secs(30), &log).await;
    assert_eq!(code, Some(0));
    copy_dir(&store, &earlier);
    let mut daemon = ChildDaemon::start(&config, port, &log).await;
    send_acked(&daemon.base(), 31, 60).await;
    // SIGKILL: no clean-shutdown snapshot, so the log's tail is live data
    // and cutting it loses acknowledged readings.
    daemon.kill();
    Fixture {
        dir,
        store,
        earlier,
    }
}

/// A fresh copy of the fixture's store in its own dir, for one damage.
fn scratch(f: &Fixture, name: &str) -> (PathBuf, PathBuf) {
    let dir = f.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    copy_dir(&f.store, &dir.join("store"));
    let config = config_for(&dir, free_port());
    (dir, config)
}

/// A copy of the damaged store in `dir`, under `name`, with its own config.
fn scratch_copy(f: &Fixture, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let copy = f.dir.path().join(name);
    std::fs::create_dir(&copy).unwrap();
    copy_dir(&dir.join("store"), &copy.join("store"));
    let config = config_for(&copy, free_port());
    (copy, config)
}

/// `sensorgate check-store` on `config`'s store: its exit code and report.
fn check_store(config: &Path) -> (Option<i32>, String) {
    let out = run_binary(&["check-store"], config);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), report)
}

/// Runs the binary to completion (it must not keep running).
fn run_binary(args: &[&str], config: &Path) -> Output {
    let mut child = sensorgate_cmd()
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "sensorgate {args:?} still running after 30 s on {}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the daemon made of a damaged store.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Exit 3 with one line naming the store and `check-store`.
    Refused,
    /// It started, and every acknowledged reading is there: the damage hit
    /// nothing live (sled's log has unused and superseded regions).
    ServedIntact,
    /// It started (start-up reads back only the newest readings), and the
    /// read that reached the damage answered an error naming
    /// `check-store`; everything served before it was whole.
    ServedDamageReported,
}

/// Starts the daemon on a damaged copy of the fixture: it must refuse
/// clearly or serve every acknowledged reading, never less, never a panic.
async fn start_on_damaged(config: &Path, damage: &str) -> Outcome {
    start_on_damaged_acked(config, damage, last_id_of(60)).await
}

/// [`start_on_damaged`] for a store whose acknowledged ids are `1..=acked`.
async fn start_on_damaged_acked(config: &Path, damage: &str, acked: u64) -> Outcome {
    let port = port_of(config);
    let mut child = Running(
        sensorgate_cmd()
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = format!("127.0.0.1:{port}");
    for _ in 0..300 {
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr)
                .unwrap();
            // The reason is one log line (one journal entry under systemd).
            let ours: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("check-store"))
                .collect();
            assert_eq!(status.code(), Some(3), "{damage}: {stderr}");
            assert_eq!(ours.len(), 1, "{damage}: one line of reason: {stderr}");
            assert!(
                ours[0].contains("storage.path") && ours[0].contains("check-store"),
                "{damage}: {}",
                ours[0]
            );
            assert!(!stderr.contains("panicked"), "{damage}: {stderr}");
            return Outcome::Refused;
        }
        if reqwest::get(format!("http://{base}/healthz")).await.is_ok() {
            let (ids, error) = stored_ids_or_error(&base).await;
            drop(child);
            // Served readings are never short: ids 1, 2, 3... up to the
            // last acknowledged one, or up to where a read reported damage.
            let whole = ids.iter().zip(1..).all(|(&id, n)| id == n);
            assert!(
                whole && (error.is_some() || ids.len() as u64 == acked),
                "{damage}: served {} of {acked} acknowledged readings, first gap after {:?}, then {error:?}",
                ids.len(),
                ids.iter().zip(1..).find(|(&id, n)| id != *n).map(|(_, n)| n - 1),
            );
            let Some(error) = error else {
                return Outcome::ServedIntact;
            };
            let detail = error["detail"].as_str().unwrap_or_default();
            assert!(
                error["error"] == "internal"
                    && detail.contains("damaged")
                    && detail.contains("check-store"),
                "{damage}: {error}"
            );
            return Outcome::ServedDamageReported;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{damage}: neither refused nor serving after 30 s");
}

/// A daemon killed when this is dropped, so that a failing assertion
/// leaves no daemon running behind the test.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ids of every stored reading, page by page, up to the first page
/// the daemon answered with an error (and that error).
async fn stored_ids_or_error(base: &str) -> (Vec<u64>, Option<serde_json::Value>) {
    stored_ids_or_error_from(base, 0).await
}

/// The ids of every stored reading above `since`, which must all read.
async fn stored_ids_or_error_since(base: &str, since: u64) -> Vec<u64> {
    let (ids, error) = stored_ids_or_error_from(base, since).await;
    assert!(error.is_none(), "{error:?}");
    ids
}

/// [`stored_ids_or_error`] above `since`.
async fn stored_ids_or_error_from(
    base: &str,
    mut since: u64,
) -> (Vec<u64>, Option<serde_json::Value>) {
    let mut ids = Vec::new();
    loop {
        match try_readings_page(base, "#", since, 10_000).await {
            Err(error) => return (ids, Some(error)),
            Ok((items, next)) if items.is_empty() && next == since => return (ids, None),
            Ok((items, next)) => {
                ids.extend(items.iter().map(|r| r["id"].as_u64().unwrap()));
                since = next;
            }
        }
    }
}

fn port_of(config: &Path) -> u16 {
    std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap()
}

fn truncate(path: &Path, keep: impl FnOnce(u64) -> u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(keep(len)).unwrap();
}

fn flip_bytes(path: &Path, at: &[f64]) {
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len();
    for frac in at {
        let i = ((len as f64 * frac) as usize).min(len - 1);
        bytes[i] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

/// Every damage is refused; `--accept-data-loss` then starts the daemon and
/// its next id is above everything ever acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_rolled_back_stores_are_refused_clearly_and_the_flag_continues_above_the_mark()
{
    let f = fixture().await;
    type Damage = (String, Box<dyn Fn(&Path)>);
    let mut damages: Vec<Damage> = vec![
        (
            "db truncated to 0".to_string(),
            Box::new(|s: &Path| truncate(&s.join("db"), |_| 0)),
        ),
        (
            "db truncated to 50%".to_string(),
            Box::new(|s: &Path| truncate(&s.join("db"), |l| l / 2)),
        ),
        (
            "db truncated to 90%".to_string(),
            Box::new(|s: &Path| truncate(&s.join("db"), |l| l * 9 / 10)),
        ),
        (
            "db minus 100 bytes".to_string(),
            Box::new(|s: &Path| truncate(&s.join("db"), |l| l - 100)),
        ),
        (
            "db minus its last 100 bytes of data".to_string(),
            Box::new(|s: &Path| {
                // sled's file may end in unused, zeroed log space.
                let bytes = std::fs::read(s.join("db")).unwrap();
                let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
                truncate(&s.join("db"), |_| end - 100)
            }),
        ),
        (
            // The same without the write-ahead log, which would otherwise
            // restore the commits it still holds.
            "db minus its last 100 bytes of data, log records zeroed".to_string(),
            Box::new(|s: &Path| {
                let bytes = std::fs::read(s.join("db")).unwrap();
                let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
                truncate(&s.join("db"), |_| end - 100);
                // Past the log's header and its two mark sectors.
                let log = s.join("sensorgate.wal");
                let mut bytes = std::fs::read(&log).unwrap();
                bytes[3 * 512..].fill(0);
                std::fs::write(&log, bytes).unwrap();
            }),
        ),
        (
            "db bytes flipped".to_string(),
            Box::new(|s: &Path| flip_bytes(&s.join("db"), &[0.3, 0.6, 0.9])),
        ),
    ];
    // One byte at a time across the file: wherever it lands (sled's layout
    // differs from run to run), the daemon and `check-store` must agree.
    for tenth in 0..10 {
        let at = (tenth as f64 + 0.5) / 10.0;
        damages.push((
            format!("db byte flipped at {at:.2}"),
            Box::new(move |s: &Path| flip_bytes(&s.join("db"), &[at])),
        ));
    }
    let mut refused = Vec::new();
    let mut outcomes = Vec::new();
    for (name, damage) in &damages {
        let dir_name = name.replace(' ', "_").replace('%', "pc");
        let (dir, config) = scratch(&f, &dir_name);
        damage(&dir.join("store"));
        // check-store judges the same files the daemon starts on: opening
        // a damaged sled changes them (its recovery drops a torn tail).
        let (check_dir, check_config) = scratch_copy(&f, &dir, &format!("{dir_name}_check"));
        let (pristine, _) = scratch_copy(&f, &dir, &format!("{dir_name}_pristine"));
        let outcome = start_on_damaged(&config, name).await;
        let (code, report) = check_store(&check_config);
        if (code == Some(0)) != (outcome == Outcome::ServedIntact) {
            // Kept for whoever reads a failure: the damaged files before
            // anything opened them (where a flipped byte lands differs
            // from run to run, so a run may not find the same case again).
            let kept =
                Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("damaged_store-{dir_name}"));
            let _ = std::fs::remove_dir_all(&kept);
            copy_dir(&pristine.join("store"), &kept);
            panic!(
                "{name}: check-store disagrees with the daemon ({outcome:?}), \
                 damaged store kept in {}: {report}",
                kept.display()
            );
        }
        drop(pristine);
        drop(check_dir);
        if outcome == Outcome::Refused {
            refused.push(name.as_str());
            continues_above_the_mark(&config, name).await;
        } else {
            // The daemon was killed on what it served: a damage sled
            // carries into its next recovery is still never served short
            // (start_on_damaged asserts that whatever it answers).
            start_on_damaged(&config, &format!("{name}, started again")).await;
        }
        outcomes.push((name, outcome));
    }
    eprintln!("outcomes: {outcomes:?}");
    for must in [
        "db truncated to 0",
        "db minus its last 100 bytes of data, log records zeroed",
    ] {
        assert!(
            refused.contains(&must),
            "{must} was not refused: {refused:?}"
        );
    }

    // A rollback: the whole store replaced by the copy taken at batch 30,
    // the high-water mark left as it was.
    let (dir, config) = scratch(&f, "rollback");
    let store = dir.join("store");
    let mark = std::fs::read(store.join("sensorgate.hwm")).unwrap();
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&f.earlier, &store);
    std::fs::write(store.join("sensorgate.hwm"), mark).unwrap();
    assert_eq!(
        start_on_damaged(&config, "rollback").await,
        Outcome::Refused
    );
    let (_, report) = check_store(&config);
    let (mark, kept) = (last_id_of(60), last_id_of(30));
    let missing = format!(
        "high-water mark: {mark} -- {} acknowledged readings are MISSING",
        mark - kept
    );
    assert!(report.contains(&missing), "{report}");
    continues_above_the_mark(&config, "rollback").await;

    // The mark itself: both copies spoilt is refused even with the flag
    // (nothing says which ids were handed out); a deleted mark is refused
    // too, and the flag then continues above the store's own content.
    damaged_then_deleted(&f, "mark", "sensorgate.hwm", |mark| {
        std::fs::write(mark, vec![0x5a; 532]).unwrap()
    })
    .await;
    // The write-ahead log likewise: zeroed (header and marks gone) is
    // refused even with the flag; deleted is refused, and the flag then
    // continues above the store's own content and the mark file.
    damaged_then_deleted(&f, "log", "sensorgate.wal", |log| {
        let len = std::fs::metadata(log).unwrap().len() as usize;
        std::fs::write(log, vec![0u8; len]).unwrap()
    })
    .await;

    // The undamaged store: check-store calls it healthy and counts it.
    let (_, config) = scratch(&f, "intact");
    let (code, report) = check_store(&config);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(&format!("readings:        {}", last_id_of(60))),
        "{report}"
    );
    assert!(report.contains("d1\tlast_seq 60"), "{report}");
}

/// One of the store's own bookkeeping files (`file`, named `what`): spoilt
/// by `damage`, the daemon refuses the store even with `--accept-data-loss`
/// (exit 3); deleted, it refuses it without the flag and continues above
/// the mark with it.
async fn damaged_then_deleted(f: &Fixture, what: &str, file: &str, damage: impl Fn(&Path)) {
    let (dir, config) = scratch(f, &format!("{what}_damaged"));
    let path = dir.join("store").join(file);
    damage(&path);
    assert_eq!(
        start_on_damaged(&config, &format!("{what} damaged")).await,
        Outcome::Refused
    );
    let out = run_binary(&["run", "--accept-data-loss"], &config);
    assert_eq!(out.status.code(), Some(3), "a damaged {what} with the flag");
    std::fs::remove_file(&path).unwrap();
    let deleted = format!("{what} deleted");
    assert_eq!(start_on_damaged(&config, &deleted).await, Outcome::Refused);
    continues_above_the_mark(&config, &deleted).await;
}

/// With `--accept-data-loss` the daemon starts on the damaged store and the
/// next reading's id is above the old high-water mark.
async fn continues_above_the_mark(config: &Path, damage: &str) {
    let port = port_of(config);
    let log = config.with_file_name("accept.log");
    let mut child = Running(
        sensorgate_cmd()
            .args(["run", "--accept-data-loss", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..300 {
        if reqwest::get(format!("http://{base}/healthz")).await.is_ok() {
            up = true;
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{damage}: --accept-data-loss exited: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "{damage}: no /healthz with --accept-data-loss");
    let mut ws = connect_device(&base, "d9").await;
    recv_frame(&mut ws).await;
    send(
        &mut ws,
        &json!({"seq": 1, "readings": [{"sensor": "s", "ts": 1, "value": 1}]}),
    )
    .await;
    assert_eq!(recv_frame(&mut ws).await["type"], "ack", "{damage}");
    // Read from the old mark up: below it, a read may still reach the
    // damage the flag accepted (and would say so).
    let mark = last_id_of(60);
    let (above, _) = readings_page(&base, "d9/#", mark, 10).await;
    assert_eq!(
        above.len(),
        1,
        "{damage}: the new reading is not above the old mark {mark}: {above:?}"
    );
}

fn blobs(store: &Path) -> Vec<PathBuf> {
    let mut b: Vec<PathBuf> = std::fs::read_dir(store.join("blobs"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    b.sort();
    b
}

/// A store written before segments were bounded to 6 KiB (an operator
/// upgrading the package): its big segments live in sled blob files. It is
/// served intact and grows in the new form; with its blobs lost it is
/// refused, and `check-store` agrees in every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_bounded_segments_is_served_and_its_lost_blobs_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    write_earlier_version_store(&pristine, 20);
    assert!(
        !blobs(&pristine).is_empty(),
        "the earlier layout keeps its big segments in blob files"
    );

    // Upgraded: every reading read back, new batches acked and stored after
    // them, a clean stop, a healthy store.
    let up = dir.path().join("upgraded");
    std::fs::create_dir(&up).unwrap();
    copy_dir(&pristine, &up.join("store"));
    let port = free_port();
    let config = config_for(&up, port);
    let log = up.join("daemon.log");
    let mut daemon = ChildDaemon::start(&config, port, &log).await;
    send_acked(&daemon.base(), 21, 25).await;
    let stored = stored_at(&daemon.base()).await;
    let ids: Vec<u64> = stored.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(
        ids == (1..=last_id_of(25)).collect::<Vec<_>>(),
        "read back {} ids, {:?}..{:?}; stored {}",
        ids.len(),
        ids.first(),
        ids.last(),
        last_id_of(25)
    );
    for r in &stored {
        let ts = r["ts"].as_u64().unwrap();
        let (_, _, want) = reading_of(ts / 1000, ts % 1000);
        assert_eq!(r["value"], json!(want), "reading {ts} read back intact");
    }
    let (code, _) = daemon.sigterm(Duration::from_secs(30), &log).await;
    assert_eq!(code, Some(0));
    let (code, report) = check_store(&config);
    assert_eq!(code, Some(0), "{report}");

    // Damaged: lost blobs are refused; flipped ones make sled roll its tree
    // back to before them (80 of the 2,320 readings left), which the
    // high-water mark catches.
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 2] = [
        ("every blob deleted", |s| {
            blobs(s)
                .iter()
                .for_each(|b| std::fs::remove_file(b).unwrap())
        }),
        ("every blob flipped", |s| {
            blobs(s).iter().for_each(|b| flip_bytes(b, &[0.5]))
        }),
    ];
    for (name, damage) in damages {
        let d = dir.path().join(name.replace(' ', "_"));
        std::fs::create_dir(&d).unwrap();
        copy_dir(&pristine, &d.join("store"));
        damage(&d.join("store"));
        let config = config_for(&d, free_port());
        let outcome = start_on_damaged_acked(&config, name, last_id_of(20)).await;
        assert_eq!(outcome, Outcome::Refused, "{name}");
        let (code, report) = check_store(&config);
        assert_ne!(
            code,
            Some(0),
            "{name}: check-store calls it healthy: {report}"
        );
    }
}

/// Damage older than what start-up reads back (the newest
/// `VERIFIED_AT_START` readings, so that starting does not take longer as
/// the store grows): the daemon starts, the read that reaches the damage
/// answers an error naming `check-store` rather than a short page, a read
/// past it is whole, and `check-store` reports it. The damage is the one
/// sled was seen to leave behind: a segment's key gone while the index
/// still lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_older_than_the_start_reads_is_reported_by_the_read_that_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let log = dir.path().join("daemon.log");
    let mut daemon = ChildDaemon::start(&config, port, &log).await;
    let per_batch = 500;
    let batches = sensorgate::store::VERIFIED_AT_START / per_batch + 10;
    let mut ws = connect_device(&daemon.base(), "d1").await;
    recv_frame(&mut ws).await;
    for seq in 1..=batches {
        send(&mut ws, &batch(Some(seq), "s", per_batch as usize)).await;
        assert_eq!(recv_frame(&mut ws).await["type"], "ack");
    }
    let total = batches * per_batch;
    let (code, _) = daemon.sigterm(Duration::from_secs(30), &log).await;
    assert_eq!(code, Some(0));

    // The second-oldest segment's key goes; its index entry stays.
    let db = sled::open(dir.path().join("store")).unwrap();
    let segments: Vec<u64> = db
        .scan_prefix(b"s/")
        .keys()
        .take(3)
        .map(|k| u64::from_be_bytes(k.unwrap()[2..].try_into().unwrap()))
        .collect();
    let (lost, after) = (segments[1], segments[2]);
    assert!(db
        .remove([&b"s/"[..], &lost.to_be_bytes()].concat())
        .unwrap()
        .is_some());
    db.flush().unwrap();
    drop(db);

    let daemon = ChildDaemon::start(&config, port, &log).await;
    let base = daemon.base();
    let error = match try_readings_page(&base, "#", 0, 10_000).await {
        Err(error) => error,
        Ok((items, next)) => panic!(
            "a read across lost segment {lost} answered {} readings, next {next}",
            items.len()
        ),
    };
    let detail = error["detail"].as_str().unwrap_or_default();
    assert!(
        error["error"] == "internal"
            && detail.contains("damaged")
            && detail.contains(&format!("segment {lost}"))
            && detail.contains("check-store"),
        "{error}"
    );
    let from_after = stored_ids_or_error_since(&base, after - 1).await;
    assert_eq!(from_after, (after..=total).collect::<Vec<_>>());
    drop(daemon);

    let (code, report) = check_store(&config);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("segment {lost} is indexed but missing")),
        "{report}"
    );
}

/// sled at `path`, closed a moment ago in this process: a dropped
/// `sled::Db` lets go of its file lock only once its I/O threads have, so
/// the open is retried (for at most 10 s) while the lock is still held.
fn reopen_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.unwrap(),
        }
    }
}

/// A store a newer sensorgate wrote, in a format this build does not know
/// (an upgrade rolled back), is refused by name, not called damaged:
/// `run` exits 3 with or without `--accept-data-loss`, `check-store` fails
/// with the same words, and nothing is set aside or rewritten.
#[tokio::test]
async fn a_store_a_newer_sensorgate_wrote_is_refused_by_name_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), free_port());
    let store = dir.path().join("store");
    drop(sensorgate::store::Store::open(&store).unwrap());
    // The marker as a newer build would leave it (`m/format`, big-endian).
    let newer = (sensorgate::store::FORMAT + 1).to_be_bytes();
    let db = reopen_sled(&store);
    db.insert("m/format", &newer[..]).unwrap();
    db.flush().unwrap();
    drop(db);
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let runs: [(&[&str], i32); 3] = [
        (&["run"], 3),
        (&["run", "--accept-data-loss"], 3),
        (&["check-store"], 1),
    ];
    for (args, code) in runs {
        let out = run_binary(args, &config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains("written by a newer sensorgate") && !stderr.contains("damaged"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(listing(), before, "nothing set aside");
    let db = sled::open(&store).unwrap();
    assert_eq!(db.get("m/format").unwrap().as_deref(), Some(&newer[..]));
}
