//! Power loss (SPEC §7): an ack means the reading survives a power cut.
//!
//! The real binary runs under `strace -f` while a device streams batches (some
//! of ~140 KB, cut into many segments); then it is SIGKILLed.
//! From the syscall log the test checks, for every ack written to the
//! device's socket, that its ids were durable before the ack: either a
//! write-ahead-log record covering them was written and the log
//! `fdatasync`ed after it (the log's name made durable by a directory
//! fsync), or a checkpoint's high-water-mark record covering them was
//! synced — and when a checkpoint syncs that record, every other store file
//! written before had been `fsync`/`fdatasync`ed after its last write, and
//! every new file's (and directory's) parent directory fsynced after the
//! creation.
//!
//! (The check is anchored on the durable point rather than on the ack itself
//! because sled may already be writing the *next* commit while an ack is on
//! its way: those writes are not what the ack promised.)
//!
//! Then it simulates what a power cut may leave: every store file is cut
//! back to its size at its last completed sync, the log's records written
//! after its last completed sync are zeroed, and names created but never
//! made durable by a directory fsync are removed. The daemon restarts on
//! that and every acknowledged reading must be there, exactly once, with ids
//! going on above them.
//!
//! Needs `strace` (installed by `scripts/test`); without it the test fails.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sensorgate_test_kit::big_batches::{batch_for, config_for, last_id_of, readings_in};
use sensorgate_test_kit::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Batches sent ahead of their acks.
const WINDOW: u64 = 8;
/// Batches acked before the kill: ~23,000 readings, ~5.7 MB of log
/// records. Enough for sled to free log segments and write over them (with
/// upstream sled's `sync_file_range` the cut then left a store sled opened
/// empty: third_party/sled/PATCHED.md), and for the write-ahead log to fill
/// its first half, go on in the second while a checkpoint runs beside the
/// writer, and come back.
const ACKS_BEFORE_KILL: u64 = 200;
/// Pause after each batch sent: the stream lasts over two seconds, so timed
/// checkpoints (one a second) run while batches arrive, too.
const PACE: Duration = Duration::from_millis(10);

const SYSCALLS: &str = "openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,\
write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,fsync,fdatasync,ftruncate,fallocate";

/// One syscall from the log, unfinished/resumed halves joined.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    args: String,
    ret: String,
    /// Line index where it started and where it returned.
    start: usize,
    end: usize,
}

/// Reads `strace -f -o` output into calls, in the order they started.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<&str, (String, String, usize)> = HashMap::new();
    for (idx, line) in text.lines().enumerate() {
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        }
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((pname, head, start)) = pending.remove(pid) else {
                continue;
            };
            assert_eq!(pname, name, "resumed call matches: {line}");
            let (args, ret) = split_ret(tail);
            calls.push(Call {
                name: name.to_string(),
                args: format!("{head}{args}"),
                ret,
                start,
                end: idx,
            });
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                pending.insert(pid, (name.to_string(), args.to_string(), idx));
            }
        } else if let Some((name, tail)) = rest.split_once('(') {
            let (args, ret) = split_ret(tail);
            calls.push(Call {
                name: name.to_string(),
                args,
                ret,
                start: idx,
                end: idx,
            });
        }
    }
    calls.sort_by_key(|c| c.start);
    calls
}

/// `args)   = ret` → (`args`, `ret`); strace pads before `=` to align.
fn split_ret(tail: &str) -> (String, String) {
    let Some(eq) = tail.rfind(" = ") else {
        return (tail.to_string(), String::new());
    };
    let args = tail[..eq].trim_end();
    let args = args.strip_suffix(')').unwrap_or(args);
    (args.to_string(), tail[eq + 3..].to_string())
}

/// The path strace's `-yy` printed for the first argument: `5</a/b>` →
/// `/a/b`, `7<TCP:[a:1->b:2]>` → `TCP:[a:1->b:2]`. Under `-xx` a path is
/// all `\xHH` escapes (so its first `>` closes it); a socket is plain text.
fn fd_path(args: &str) -> Option<String> {
    let open = args.find('<')? + 1;
    let rest = &args[open..];
    if rest.starts_with("TCP:[") {
        return Some(rest[..rest.find("]>")? + 1].to_string());
    }
    let len = rest.find('>')?;
    Some(String::from_utf8_lossy(&unhex(&rest[..len])).into_owned())
}

/// The halves of the write-ahead log (0, 1) its records were written to,
/// in order, repeats collapsed. The file header and the mark (its first
/// three sectors) are not records.
fn wal_halves(calls: &[Call]) -> Vec<u8> {
    const WAL_SIZE: u64 = 8 << 20;
    let mut halves: Vec<u8> = Vec::new();
    for c in calls.iter().filter(|c| c.name == "pwrite64") {
        if !fd_path(&c.args).is_some_and(|p| p.ends_with("/sensorgate.wal")) {
            continue;
        }
        let Some(&offset) = numbers(&c.args).last() else {
            continue;
        };
        let half = u8::from(offset >= WAL_SIZE / 2);
        if offset >= 3 * 512 && halves.last() != Some(&half) {
            halves.push(half);
        }
    }
    halves
}

/// `\x41\x42` → `AB`.
fn unhex(s: &str) -> Vec<u8> {
    s.split("\\x")
        .filter(|h| h.len() >= 2)
        .filter_map(|h| u8::from_str_radix(&h[..2], 16).ok())
        .collect()
}

/// The `n`th quoted string of `args` as a path.
fn quoted_path(args: &str, n: usize) -> String {
    String::from_utf8_lossy(&unhex(args.split('"').nth(2 * n + 1).unwrap_or_default())).into_owned()
}

/// The numeric arguments after the first one.
fn numbers(args: &str) -> Vec<u64> {
    args.split(", ")
        .skip(1)
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The first quoted string of `args`, decoded from strace's `-xx` escapes.
fn first_bytes(args: &str) -> Vec<u8> {
    let Some(start) = args.find('"') else {
        return Vec::new();
    };
    let body = &args[start + 1..];
    let end = body.find('"').unwrap_or(body.len());
    unhex(&body[..end])
}

/// The acks carried by the small binary frames a write to the device
/// starts with (acks that complete together leave in one write), and
/// whether the trace cut the last of them short (strace's `-s`).
fn ack_seqs(bytes: &[u8]) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 && rest[0] == 0x82 && rest[1] < 126 {
        let Some(payload) = rest.get(2..2 + rest[1] as usize) else {
            return (seqs, true);
        };
        let Ok(frame) = rmp_serde::from_slice::<Value>(payload) else {
            break;
        };
        if frame["type"] == "ack" && frame["duplicate"] != true {
            seqs.extend(frame["seq"].as_u64());
        }
        rest = &rest[2 + payload.len()..];
    }
    (seqs, false)
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// What the log says about the store's files, replayed in order.
#[derive(Default)]
struct Replay {
    store: String,
    hwm: String,
    wal: String,
    /// `->127.0.0.1:<device port>]`: how strace names the device's socket.
    device: String,
    size: HashMap<String, u64>,
    position: HashMap<String, u64>,
    last_write: HashMap<String, usize>,
    /// Per file: (start line of its last completed sync, its size then).
    synced: HashMap<String, (usize, u64)>,
    /// Size of each file when a sync in progress started, by its start line.
    sync_started: HashMap<usize, u64>,
    /// New names in the store: (path, line of creation).
    created: Vec<(String, usize)>,
    /// Per directory: start line of its last completed fsync.
    dir_synced: HashMap<String, usize>,
    /// The value in the high-water-mark record and the line it was written.
    hwm_written: Option<(u64, usize)>,
    /// Newest high-water mark whose record was synced after being written.
    durable: u64,
    /// Write-ahead-log records: (newest id, line written).
    wal_records: Vec<(u64, usize)>,
    /// Every write to the log: (offset, length, line written).
    wal_writes: Vec<(u64, u64, usize)>,
    /// Start line of the log's last completed sync.
    wal_synced: Option<usize>,
    acks_checked: u64,
    log_syncs: u64,
    violations: Vec<String>,
}

impl Replay {
    fn in_store(&self, path: &str) -> bool {
        path == self.store || path.starts_with(&format!("{}/", self.store))
    }

    /// Everything the high-water-mark record about to be written relies on.
    fn check_durable_point(&mut self, line: usize, value: u64) {
        for (file, &written) in &self.last_write {
            // The log's unsynced records are redundant once sled is synced.
            if *file == self.hwm || *file == self.wal {
                continue;
            }
            let synced = self.synced.get(file).map(|s| s.0);
            if synced.is_none_or(|s| s < written) {
                self.violations.push(format!(
                    "line {line}: mark {value} recorded while {file} (written at line {written}) was last synced at {synced:?}"
                ));
            }
        }
        for (path, created) in &self.created {
            let dir = parent(path);
            let synced = self.dir_synced.get(&dir).copied();
            if synced.is_none_or(|s| s < *created) {
                self.violations.push(format!(
                    "line {line}: mark {value} recorded while the new entry {path} (line {created}) was not made durable in {dir} (last dir sync {synced:?})"
                ));
            }
        }
    }

    fn on_start(&mut self, c: &Call) {
        let Some(path) = fd_path(&c.args) else { return };
        let path = path.as_str();
        let writes = ["write", "pwrite64", "writev", "sendto", "sendmsg"];
        if path.ends_with(&self.device) && writes.contains(&c.name.as_str()) {
            let (seqs, cut) = ack_seqs(&first_bytes(&c.args));
            if cut {
                self.violations.push(format!(
                    "line {}: a write of acks is cut short in the trace (raise strace's -s)",
                    c.start
                ));
            }
            for seq in seqs {
                self.acks_checked += 1;
                if last_id_of(seq) > self.durable {
                    self.violations.push(format!(
                        "line {}: ack for seq {seq} (ids up to {}) written while the durable mark was {}",
                        c.start,
                        last_id_of(seq),
                        self.durable
                    ));
                }
            }
        }
        if c.name == "fsync" || c.name == "fdatasync" {
            // A sync persists what was written before it started.
            let size = self.size.get(path).copied().unwrap_or(0);
            self.sync_started.insert(c.start, size);
            // A checkpoint: the mark is synced once sled's files are.
            if path == self.hwm {
                if let Some((value, _)) = self.hwm_written {
                    self.check_durable_point(c.start, value);
                }
            }
        }
    }

    fn on_end(&mut self, c: &Call) {
        let ok = !c.ret.starts_with('-');
        let returned: u64 = c
            .ret
            .split_whitespace()
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        match c.name.as_str() {
            "openat" | "open" | "creat" if ok => {
                let Some(path) = fd_path(&c.ret) else { return };
                if !self.in_store(&path) {
                    return;
                }
                self.position.insert(path.clone(), 0);
                if c.args.contains("O_CREAT") && !self.size.contains_key(&path) {
                    self.size.insert(path.clone(), 0);
                    self.created.push((path, c.end));
                }
            }
            "mkdir" | "mkdirat" if ok => {
                let dir = quoted_path(&c.args, 0);
                if self.in_store(&dir) || dir == self.store {
                    self.created.push((dir, c.end));
                }
            }
            "rename" | "renameat" | "renameat2" if ok => {
                let to = quoted_path(&c.args, 1);
                if self.in_store(&to) {
                    self.created.push((to, c.end));
                }
            }
            "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" if ok => {
                let Some(path) = fd_path(&c.args) else { return };
                if !self.in_store(&path) {
                    return;
                }
                let at = if c.name.starts_with('p') {
                    numbers(&c.args).last().copied().unwrap_or(0)
                } else {
                    let pos = self.position.entry(path.clone()).or_default();
                    let at = *pos;
                    *pos += returned;
                    at
                };
                let size = self.size.entry(path.clone()).or_default();
                *size = (*size).max(at + returned);
                self.last_write.insert(path.clone(), c.end);
                let bytes = first_bytes(&c.args);
                if path == self.hwm && bytes.len() >= 16 {
                    let value = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
                    self.hwm_written = Some((value, c.end));
                }
                if path == self.wal {
                    self.wal_writes.push((at, returned, c.end));
                    if bytes.len() >= 24 && bytes.starts_with(b"SGWAL001") {
                        let next = u64::from_be_bytes(bytes[16..24].try_into().unwrap());
                        self.wal_records.push((next - 1, c.end));
                    }
                }
            }
            "ftruncate" | "fallocate" if ok => {
                let Some(path) = fd_path(&c.args) else { return };
                let n = numbers(&c.args);
                let size = self.size.entry(path).or_default();
                match c.name.as_str() {
                    "ftruncate" => *size = n.first().copied().unwrap_or(*size),
                    _ if !c.args.contains("KEEP_SIZE") => {
                        *size = (*size).max(n.iter().rev().take(2).sum())
                    }
                    _ => {}
                }
            }
            "fsync" | "fdatasync" if ok => {
                let Some(path) = fd_path(&c.args) else { return };
                // Any directory: the store's parent holds the store's name.
                if Path::new(&path).is_dir() {
                    self.dir_synced.insert(path.clone(), c.start);
                    return;
                }
                if !self.in_store(&path) {
                    return;
                }
                if path.ends_with("/db") {
                    self.log_syncs += 1;
                }
                let size = self.sync_started.get(&c.start).copied().unwrap_or(0);
                self.synced.insert(path.clone(), (c.start, size));
                if path == self.hwm {
                    if let Some((value, written)) = self.hwm_written {
                        if written < c.start {
                            self.durable = self.durable.max(value);
                        }
                    }
                }
                if path == self.wal {
                    self.on_log_synced(c.start);
                }
            }
            _ => {}
        }
    }
}

impl Replay {
    /// A completed sync of the write-ahead log started at line `start`:
    /// every record written before makes its ids durable, if the log's
    /// name is.
    fn on_log_synced(&mut self, start: usize) {
        self.wal_synced = Some(start);
        let named = self
            .created
            .iter()
            .filter(|(p, _)| *p == self.wal)
            .all(|(_, made)| {
                self.dir_synced
                    .get(&parent(&self.wal))
                    .is_some_and(|&s| s > *made && s < start)
            });
        if !named {
            self.violations.push(format!(
                "line {start}: the log synced while its name was not durable"
            ));
            return;
        }
        if let Some(v) = self
            .wal_records
            .iter()
            .filter(|(_, written)| *written < start)
            .map(|(v, _)| *v)
            .max()
        {
            self.durable = self.durable.max(v);
        }
    }
}

/// Replays `calls` (start and end events in line order).
fn replay(calls: &[Call], store: &Path, device_port: u16) -> Replay {
    let mut r = Replay {
        store: store.display().to_string(),
        hwm: store.join("sensorgate.hwm").display().to_string(),
        wal: store.join("sensorgate.wal").display().to_string(),
        device: format!("->127.0.0.1:{device_port}]"),
        ..Replay::default()
    };
    let mut events: Vec<(usize, bool, usize)> = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        events.push((c.start, false, i));
        events.push((c.end, true, i));
    }
    events.sort();
    for (_, is_end, i) in events {
        if is_end {
            r.on_end(&calls[i]);
        } else {
            r.on_start(&calls[i]);
        }
    }
    r
}

/// Cuts the store back to what a power cut at the kill may have left.
fn cut_back(r: &Replay) {
    let durable_name = |path: &str, created: usize| {
        r.dir_synced
            .get(&parent(path))
            .is_some_and(|&s| s > created)
    };
    for (path, created) in r.created.iter().rev() {
        if !durable_name(path, *created) && Path::new(path).exists() {
            if Path::new(path).is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    for (path, size) in &r.size {
        let synced = r.synced.get(path).map_or(0, |s| s.1);
        // The log is written whole when created and overwritten in place.
        if *path == r.wal {
            continue;
        }
        if Path::new(path).is_file() && *size > synced {
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(synced).unwrap();
        }
    }
}

/// Zeroes the log's records written after its last completed sync began
/// (a power cut may leave their sectors as they were). The mark sectors
/// are kept as written: they never claim more than the sync before made
/// durable, so either content is a possible outcome.
fn cut_back_log(r: &Replay) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&r.wal)
        .unwrap();
    for &(at, len, written) in &r.wal_writes {
        if at >= 3 * 512 && r.wal_synced.is_none_or(|s| written > s) {
            f.write_all_at(&vec![0u8; len as usize], at).unwrap();
        }
    }
}

/// Streams batches until `ACKS_BEFORE_KILL` are acked, sends a few more
/// and returns the highest acked seq (the socket dies with the kill).
async fn stream(ws: &mut Ws) -> u64 {
    let mut next = 1u64;
    let mut acked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < ACKS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "acked only {acked} batches in 120 s"
        );
        while next <= acked + WINDOW {
            send(ws, &batch_for(next)).await;
            next += 1;
            tokio::time::sleep(PACE).await;
        }
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                let f: Value = rmp_serde::from_slice(&b).unwrap();
                assert_eq!(f["type"], "ack", "{f}");
                acked = f["seq"].as_u64().unwrap();
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("device stream ended: {other:?}"),
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ack_follows_fsync_of_what_it_depends_on_and_survives_a_power_cut() {
    power_cut("").await;
}

/// The same in interval mode: acks wait for the periodic flush, and that
/// flush is the durable point they rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_interval_mode_too_every_ack_follows_fsync_and_survives_a_power_cut() {
    power_cut("sync = \"interval\"\nflush_interval = \"20ms\"\n").await;
}

/// Streams under strace, kills, checks the trace, cuts the store back to
/// what was synced and checks every ack survived; `storage` is added to the
/// daemon's `[storage]` section.
async fn power_cut(storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let port = free_port();
    let config = config_for(dir.path(), port);
    add_keys(&config, "storage", storage);
    let trace = dir.path().join("trace.txt");
    let log = dir.path().join("daemon.log");
    let trace_arg = trace.display().to_string();
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-yy",
        "-xx",
        // Room for a window of acks in one write (~20 bytes each).
        "-s",
        "512",
        "-e",
        "signal=none",
        "-e",
        &format!("trace={SYSCALLS}"),
        "-o",
        &trace_arg,
    ];
    let mut daemon = ChildDaemon::start_wrapped(&wrapper, &config, port, &log).await;
    let sensorgate_pid = daemon.daemon_pid(true);

    let mut ws = connect_device(&daemon.base(), "d1").await;
    let device_port = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!("plain ws"),
    };
    let welcome = recv_frame(&mut ws).await;
    assert_eq!(welcome["last_seq"], 0);
    let acked = stream(&mut ws).await;
    // Kill mid-stream: one more window is on its way.
    for seq in acked + WINDOW + 1..=acked + 2 * WINDOW {
        send(&mut ws, &batch_for(seq)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sensorgate_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut late_acked = acked;
    let acked = loop {
        // Acks that made it out before the kill count like the others.
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                let f: Value = rmp_serde::from_slice(&b).unwrap();
                if f["type"] == "ack" {
                    let seq = f["seq"].as_u64().unwrap();
                    assert!(seq > acked);
                    late_acked = late_acked.max(seq);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break late_acked,
        }
    };
    let _ = daemon.child.wait();

    // Kept for whoever reads a failure.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(if storage.is_empty() {
        "power_loss-trace.txt"
    } else {
        "power_loss-interval-trace.txt"
    });
    std::fs::copy(&trace, &kept).unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    let calls = parse_trace(&text);
    let r = replay(&calls, &store, device_port);
    assert!(
        r.violations.is_empty(),
        "{} violations (trace in {}), first ones:\n{}",
        r.violations.len(),
        kept.display(),
        r.violations
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        r.acks_checked >= ACKS_BEFORE_KILL,
        "only {} acks found in the trace",
        r.acks_checked
    );
    assert!(r.log_syncs > 0, "sled's log file was never synced");
    let blobs: Vec<&String> = r
        .created
        .iter()
        .map(|c| &c.0)
        .filter(|p| p.contains("/blobs/"))
        .collect();
    // Segments of at most 6 KiB keep every sled node under the size sled
    // writes as a blob file, which its cache could never evict
    // (`store::codec::segment::SEGMENT_MAX_BYTES`): the big batches make none.
    assert!(
        blobs.is_empty(),
        "the big batches went through blob files: {blobs:?}"
    );

    // Checkpoints ran beside the writer: its log records went to the
    // second half of the log and back to the first.
    let halves = wal_halves(&calls);
    assert!(
        halves.windows(3).any(|w| w == [0, 1, 0]),
        "the log's records did not go to its second half and back: {halves:?}"
    );

    // The power cut: only what was synced is left.
    cut_back(&r);
    cut_back_log(&r);
    drop(daemon);
    let port = free_port();
    let config = config_for(dir.path(), port);
    add_keys(&config, "storage", storage);
    let daemon = ChildDaemon::start(&config, port, &log).await;
    let stored = stored_at(&daemon.base()).await;
    let mut by_ts: BTreeMap<i64, u64> = BTreeMap::new();
    for item in &stored {
        let ts = item["ts"].as_i64().unwrap();
        assert!(
            by_ts.insert(ts, item["id"].as_u64().unwrap()).is_none(),
            "reading ts={ts} stored twice"
        );
    }
    for seq in 1..=acked {
        for i in 0..readings_in(seq) {
            let ts = (seq * 1000 + i) as i64;
            assert!(
                by_ts.contains_key(&ts),
                "acked batch {seq} lost reading {i} in the power cut (acked up to {acked})"
            );
        }
    }
    // Ids go on above everything seen, and the device resumes from its seq.
    let max_id = by_ts.values().copied().max().unwrap();
    let mut ws = connect_device(&daemon.base(), "d1").await;
    let welcome = recv_frame(&mut ws).await;
    let last_seq = welcome["last_seq"].as_u64().unwrap();
    assert!(
        last_seq >= acked,
        "welcome last_seq {last_seq} < acked {acked}"
    );
    send(&mut ws, &batch_for(last_seq + 1)).await;
    let ack = recv_frame(&mut ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let stored = stored_at(&daemon.base()).await;
    let newest = stored
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(newest > max_id);
    assert_eq!(PathBuf::from(&r.store), store);
}
