//! The write-ahead log: where a group commit becomes durable.
//!
//! Why it exists: making a commit durable through sled costs sled's flush
//! (a write and a `sync_file_range`), an `fdatasync` of sled's growing log
//! (which also commits its new size to the filesystem journal), a `readdir`
//! of its directories and the high-water mark's own `fdatasync`: three
//! device round trips and some 300 µs of kernel time per commit. At the
//! commonest fleet shape, many devices each sending a small batch now and
//! then, every batch is its own commit, so that was the cost of every batch.
//!
//! The log is one file of fixed size ([`WAL_SIZE`]), written whole (zeros)
//! when it is created, so appending a record overwrites blocks the file
//! already owns: one `pwrite` and one `fdatasync` that has no metadata to
//! persist. sled still receives every commit (`apply_batch`, in memory) and
//! is made durable by checkpoints (sled's flush, its files' syncs, the
//! high-water mark), after which the log's records are no longer needed.
//!
//! The file holds two halves, each a chain of its own. Records go to one
//! half; when a checkpoint starts, the writer switches to the other half
//! ([`Wal::switch`]) and goes on logging while the checkpoint, on another
//! thread, makes what the first half holds durable in sled. It switches
//! back only once that checkpoint has returned, so a half is never written
//! over while sled may still need it. A checkpoint taken with nothing else
//! going on frees both halves ([`Wal::reset`]).
//!
//! Format: the first 512-byte sector is the file's header (`b"SGWALHDR"`,
//! the log's size, a CRC-32), written once when the file is created. The
//! next two sectors are two copies of the log's mark (`b"SGWALMRK"`, the
//! newest id ever logged, a CRC-32), rewritten together before each sync: a
//! sector torn by a power cut spoils one copy at most, and the mark still
//! says which ids were acknowledged when records are lost. Then
//! records, each starting on a sector boundary (padded with zeros): a 32-byte
//! record header — `b"SGWAL001"`, the commit's first id and next id
//! (big-endian u64), the payload length (u32) and a CRC-32 of the header's
//! first 28 bytes and the payload — then the payload: the commit's sled
//! entries, each a key length and value length (u32) followed by the key
//! and the value. Whole sectors mean appending never rewrites a sector that
//! holds an earlier, acknowledged record.
//!
//! Reading it back ([`Wal::open`]) takes records from the start of each
//! half while each is whole (magic, length, checksum) and continues the
//! previous one (its first id is the previous record's next id): those two
//! chains, in id order, are what a restart replays (from the first id sled
//! does not hold). A log written before the halves is one chain from the
//! first half's start, which may run on into the second half: it reads the
//! same way. What follows it is never-written zeros, a torn write
//! whose commit was not acknowledged (its `fdatasync` had not returned), or
//! records older than the last checkpoint. The mark and every whole record
//! in the file count towards [`Contents::newest_id`], so records that are
//! damaged or gone show as acknowledged commits missing. A damaged file
//! header or both mark copies damaged (a log zeroed or overwritten) is
//! refused: nothing then says what it held.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The file's name inside `storage.path`.
pub const FILE_NAME: &str = "sensorgate.wal";
/// Size of the log. A checkpoint is taken when a commit no longer fits; a
/// commit larger than the whole log is made durable by a checkpoint alone.
pub const WAL_SIZE: u64 = 8 << 20;
const MAGIC: &[u8; 8] = b"SGWAL001";
const FILE_MAGIC: &[u8; 8] = b"SGWALHDR";
const MARK_MAGIC: &[u8; 8] = b"SGWALMRK";
const HEADER: usize = 32;
/// Records start on sector boundaries.
const SECTOR: usize = 512;
/// The file header, then the two mark copies, then the records.
const RECORDS_AT: usize = 3 * SECTOR;
/// Where the second half's records start; the first half ends there.
const SECOND_HALF: u64 = WAL_SIZE / 2;
/// Room for records in a half (the second; the first is 1.5 KiB smaller).
pub const HALF_SIZE: u64 = WAL_SIZE - SECOND_HALF;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but is not a whole log: its header is damaged or it
    /// has the wrong size.
    #[error("{path}: damaged write-ahead log ({detail}); inspect with `sensorgate check-store`; deleting the file and starting with --accept-data-loss continues above the store's own content, which may reuse ids of lost readings")]
    Damaged { path: PathBuf, detail: String },
}

/// What a log file holds.
#[derive(Debug, Default)]
pub struct Contents {
    /// The commits of both halves' chains, in id order: what a restart
    /// replays from the first id sled does not hold.
    pub records: Vec<Record>,
    /// The newest id of any whole record in the file (chained or not) or
    /// of the mark.
    pub newest_id: Option<u64>,
    /// The mark: the newest id ever logged (0 for none).
    pub mark: u64,
}

/// One commit read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub first_id: u64,
    pub next_id: u64,
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The open log. Only the writer thread appends to it.
pub struct Wal {
    /// `None` until a missing or short log is made whole by [`Wal::reset`].
    file: Option<File>,
    dir: PathBuf,
    path: PathBuf,
    /// The half records go to (0 or 1).
    half: usize,
    /// Where the next record goes.
    pos: u64,
    /// Newest id appended; newest id a returned sync made durable; the
    /// value the mark sectors hold.
    logged: u64,
    synced: u64,
    marked: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

fn io(path: &Path, source: std::io::Error) -> WalError {
    WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Wal {
    /// Opens the log in `dir`, creating it (whole, synced, its name made
    /// durable) when missing, and returns it with the records it holds.
    /// Appends start at offset 0 only after [`Wal::reset`]: the caller
    /// first makes the returned records durable in sled.
    pub fn open(dir: &Path) -> Result<(Wal, Contents), WalError> {
        let path = dir.join(FILE_NAME);
        let contents = read(dir)?;
        let mark = contents.as_ref().map_or(0, |c| c.mark);
        let wal = Wal {
            file: if contents.is_some() {
                Some(open_rw(&path)?)
            } else {
                None
            },
            dir: dir.to_path_buf(),
            path,
            half: 0,
            pos: WAL_SIZE, // nothing fits until reset
            logged: mark,
            synced: mark,
            marked: mark,
            buf: Vec::new(),
        };
        Ok((wal, contents.unwrap_or_default()))
    }

    /// Writes one commit's record after the previous one (not yet synced:
    /// see [`Wal::sync`]). False, writing nothing, when it does not fit in
    /// what is left of the log: the caller takes a checkpoint instead.
    pub fn append<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        first_id: u64,
        next_id: u64,
        entries: &[(K, V)],
    ) -> Result<bool, WalError> {
        encode(&mut self.buf, first_id, next_id, entries);
        let Some(file) = &self.file else {
            return Ok(false);
        };
        if self.pos + self.buf.len() as u64 > half_end(self.half) {
            return Ok(false);
        }
        file.write_all_at(&self.buf, self.pos)
            .map_err(|e| io(&self.path, e))?;
        self.pos += self.buf.len() as u64;
        self.logged = self.logged.max(next_id - 1);
        Ok(true)
    }

    /// `fdatasync`: every record appended so far is durable when this
    /// returns. The mark written with it is what the *previous* sync made
    /// durable: a power cut during this sync may keep the mark's sectors
    /// and lose the new records', and the mark must never claim records
    /// that could be lost that way.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if self.synced != self.marked {
            file.write_all_at(&marks(self.synced), SECTOR as u64)
                .map_err(|e| io(&self.path, e))?;
            self.marked = self.synced;
        }
        file.sync_data().map_err(|e| io(&self.path, e))?;
        self.synced = self.logged;
        Ok(())
    }

    /// After a checkpoint made everything in the log durable in sled: the
    /// next record goes to the start of the first half. (The old records
    /// stay behind it and break the chain when read: their ids are below
    /// the new ones.) A missing or short log is written whole now, not when
    /// it was opened: what it held had to reach sled's durable files first.
    pub fn reset(&mut self) -> Result<(), WalError> {
        self.start_half(0)
    }

    /// A checkpoint of everything in this half has started: the next record
    /// goes to the start of the other half, which the caller knows is free
    /// (the checkpoint of what it held has returned).
    pub fn switch(&mut self) -> Result<(), WalError> {
        self.start_half(1 - self.half)
    }

    fn start_half(&mut self, half: usize) -> Result<(), WalError> {
        if self.file.is_none() {
            create(&self.dir, &self.path)?;
            self.file = Some(open_rw(&self.path)?);
        }
        self.half = half;
        self.pos = half_start(half);
        Ok(())
    }

    /// True once the file exists (after the first [`Wal::reset`]).
    pub fn exists(&self) -> bool {
        self.file.is_some()
    }

    /// Bytes of the current half in use.
    pub fn used(&self) -> u64 {
        self.pos.min(half_end(self.half)) - half_start(self.half)
    }
}

fn half_start(half: usize) -> u64 {
    [RECORDS_AT as u64, SECOND_HALF][half]
}

fn half_end(half: usize) -> u64 {
    [SECOND_HALF, WAL_SIZE][half]
}

/// Writes a whole log of zeros (replacing a missing or short one): under a
/// temporary name, synced, renamed into place, directory synced. What the
/// old file held was read before.
fn create(dir: &Path, path: &Path) -> Result<(), WalError> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    // A page at a time, so that the page cache holds the file in single
    // pages: written in big pieces it gets large folios (ext4 on recent
    // kernels), and then every small `pwrite` of a record or the mark
    // walks all the blocks of its folio, 1.5 µs more per write here
    // (BENCHMARKS.md, "Large folios under the log's small writes").
    let zeros = vec![0u8; 4096];
    let written = File::create(&tmp)
        .and_then(|mut f| {
            for _ in 0..WAL_SIZE / zeros.len() as u64 {
                std::io::Write::write_all(&mut f, &zeros)?;
            }
            f.write_all_at(&file_header(), 0)?;
            f.write_all_at(&marks(0), SECTOR as u64)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| super::durability::fsync_dir(dir));
    written.map_err(|e| io(path, e))
}

/// Reads the log in `dir` without changing anything; `None` when there is
/// no log file.
pub fn read(dir: &Path) -> Result<Option<Contents>, WalError> {
    let path = dir.join(FILE_NAME);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path, e)),
    };
    let damaged = |detail: String| WalError::Damaged {
        path: path.clone(),
        detail,
    };
    let len = file.metadata().map_err(|e| io(&path, e))?.len();
    if len != WAL_SIZE {
        return Err(damaged(format!("{len} bytes, expected {WAL_SIZE}")));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| io(&path, e))?;
    if bytes[..SECTOR] != file_header() {
        return Err(damaged("its header is not a write-ahead log header".into()));
    }
    let mark = [SECTOR, 2 * SECTOR]
        .iter()
        .filter_map(|&at| decode_mark(&bytes[at..at + SECTOR]))
        .max()
        .ok_or_else(|| damaged("neither copy of its mark is valid".into()))?;
    let mut contents = decode_file(&bytes);
    contents.mark = mark;
    contents.newest_id = contents.newest_id.max(Some(mark).filter(|&m| m > 0));
    Ok(Some(contents))
}

/// Both copies of the mark, one sector each.
fn marks(id: u64) -> [u8; 2 * SECTOR] {
    let mut b = [0u8; 2 * SECTOR];
    for copy in b.chunks_mut(SECTOR) {
        copy[..8].copy_from_slice(MARK_MAGIC);
        copy[8..16].copy_from_slice(&id.to_be_bytes());
        let crc = crc32fast::hash(&copy[..16]);
        copy[16..20].copy_from_slice(&crc.to_be_bytes());
    }
    b
}

fn decode_mark(b: &[u8]) -> Option<u64> {
    let crc = u32::from_be_bytes(b[16..20].try_into().ok()?);
    (&b[..8] == MARK_MAGIC && crc32fast::hash(&b[..16]) == crc).then(|| be_u64(&b[8..16]))
}

fn file_header() -> [u8; SECTOR] {
    let mut h = [0u8; SECTOR];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..16].copy_from_slice(&WAL_SIZE.to_be_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_be_bytes());
    h
}

fn open_rw(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))
}

fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    buf: &mut Vec<u8>,
    first_id: u64,
    next_id: u64,
    entries: &[(K, V)],
) {
    buf.clear();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&first_id.to_be_bytes());
    buf.extend_from_slice(&next_id.to_be_bytes());
    buf.extend_from_slice(&[0u8; 8]); // length and checksum, below
    for (k, v) in entries {
        let (k, v) = (k.as_ref(), v.as_ref());
        buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
        buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        buf.extend_from_slice(k);
        buf.extend_from_slice(v);
    }
    let len = (buf.len() - HEADER) as u32;
    buf[24..28].copy_from_slice(&len.to_be_bytes());
    let crc = checksum(&buf[..28], &buf[HEADER..]);
    buf[28..32].copy_from_slice(&crc.to_be_bytes());
    buf.resize(padded(buf.len()), 0);
}

/// `len` rounded up to whole sectors.
fn padded(len: usize) -> usize {
    len.div_ceil(SECTOR) * SECTOR
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> usize {
    u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize
}

/// The chains of whole, continuing records from the start of each half, in
/// id order, and the newest id of any whole record on a sector boundary.
fn decode_file(bytes: &[u8]) -> Contents {
    let mut records = chain(bytes, half_start(0) as usize);
    records.extend(chain(bytes, half_start(1) as usize));
    // A chain that ran on into the second half (a log written before the
    // halves, or a first half filled to its end) is read twice there.
    records.sort_by_key(|r| (r.first_id, r.next_id));
    records.dedup_by_key(|r| (r.first_id, r.next_id));
    let newest_id = (RECORDS_AT / SECTOR..bytes.len() / SECTOR)
        .filter(|i| bytes[i * SECTOR..].starts_with(MAGIC))
        .filter_map(|i| decode_record(&bytes[i * SECTOR..]))
        .map(|(r, _)| r.next_id - 1)
        .max();
    Contents {
        records,
        newest_id,
        mark: 0,
    }
}

/// The whole records from `at` on, while each continues the one before.
fn chain(bytes: &[u8], mut at: usize) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    while let Some((record, len)) = decode_record(&bytes[at..]) {
        let continues = records.last().is_none_or(|p| p.next_id == record.first_id);
        if !continues {
            break;
        }
        records.push(record);
        at += padded(len);
    }
    records
}

/// One record at the start of `b` and its length, `None` when there is no
/// whole record there.
fn decode_record(b: &[u8]) -> Option<(Record, usize)> {
    if b.len() < HEADER || &b[..8] != MAGIC {
        return None;
    }
    let (first_id, next_id) = (be_u64(&b[8..16]), be_u64(&b[16..24]));
    let len = be_u32(&b[24..28]);
    let payload = b.get(HEADER..HEADER + len)?;
    if checksum(&b[..28], payload) != u32::from_be_bytes(b[28..32].try_into().ok()?)
        || first_id >= next_id
    {
        return None;
    }
    let mut entries = Vec::new();
    let mut p = payload;
    while !p.is_empty() {
        let (k, v) = (be_u32(p.get(..4)?), be_u32(p.get(4..8)?));
        let key = p.get(8..8 + k)?.to_vec();
        let value = p.get(8 + k..8 + k + v)?.to_vec();
        entries.push((key, value));
        p = &p[8 + k + v..];
    }
    Some((
        Record {
            first_id,
            next_id,
            entries,
        },
        HEADER + len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(w: &mut Wal, first: u64, next: u64) -> bool {
        let key = format!("s/{first}");
        let next_bytes = next.to_be_bytes();
        let entries: [(&[u8], &[u8]); 2] =
            [(key.as_bytes(), b"readings"), (b"m/next_id", &next_bytes)];
        w.append(first, next, &entries).unwrap()
    }

    fn ids(records: &[Record]) -> Vec<(u64, u64)> {
        records.iter().map(|r| (r.first_id, r.next_id)).collect()
    }

    /// A new log in a new directory, ready for appends.
    fn new_log() -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        w.reset().unwrap();
        (dir, w)
    }

    fn reopened(dir: &Path) -> Contents {
        Wal::open(dir).unwrap().1
    }

    #[test]
    fn records_come_back_in_order_with_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, none) = Wal::open(dir.path()).unwrap();
        assert!(none.records.is_empty() && none.newest_id.is_none());
        assert!(
            !dir.path().join(FILE_NAME).exists(),
            "created only by reset"
        );
        assert!(!append(&mut w, 1, 5), "nothing fits before the first reset");
        w.reset().unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            WAL_SIZE
        );
        assert!(append(&mut w, 1, 5));
        assert_eq!(w.used(), SECTOR as u64, "a record takes whole sectors");
        assert!(append(&mut w, 5, 9));
        w.sync().unwrap();
        drop(w);
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(1, 5), (5, 9)]);
        assert_eq!(c.newest_id, Some(8));
        assert_eq!(
            c.records[1].entries[0],
            (b"s/5".to_vec(), b"readings".to_vec())
        );
        assert_eq!(c.records[1].entries[1].1, 9u64.to_be_bytes());
    }

    #[test]
    fn after_a_reset_older_records_end_the_chain() {
        let (dir, mut w) = new_log();
        for i in 0..10 {
            assert!(append(&mut w, 1 + i * 4, 5 + i * 4));
        }
        w.reset().unwrap();
        assert!(append(&mut w, 41, 45));
        drop(w);
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(41, 45)]);
        assert_eq!(c.newest_id, Some(44));
    }

    #[test]
    fn a_damaged_record_ends_the_chain_and_later_records_still_count() {
        let (dir, mut w) = new_log();
        assert!(append(&mut w, 1, 5));
        let second = RECORDS_AT as u64 + w.used();
        assert!(append(&mut w, 5, 9));
        assert!(append(&mut w, 9, 12));
        drop(w);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second as usize + HEADER + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(1, 5)]);
        assert_eq!(c.newest_id, Some(11), "the record after the damage is seen");
    }

    #[test]
    fn a_torn_last_record_is_not_a_commit() {
        let (dir, mut w) = new_log();
        assert!(append(&mut w, 1, 5));
        let big = vec![3u8; 3 * SECTOR];
        let at = RECORDS_AT + w.used() as usize;
        assert!(w.append(5, 6, &[(b"k", &big)]).unwrap());
        drop(w);
        // Only the record's first sector reached the disk.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at + SECTOR..at + 4 * SECTOR].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(1, 5)]);
        assert_eq!(c.newest_id, Some(4));
    }

    #[test]
    fn a_zeroed_or_short_log_is_damaged() {
        let (dir, mut w) = new_log();
        assert!(append(&mut w, 1, 5));
        drop(w);
        let path = dir.path().join(FILE_NAME);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, vec![0u8; whole.len()]).unwrap();
        assert!(matches!(read(dir.path()), Err(WalError::Damaged { .. })));
        std::fs::write(&path, &whole[..4096]).unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("4096 bytes"), "{e}");
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().newest_id, Some(4));
    }

    #[test]
    fn the_mark_remembers_synced_commits_whose_records_are_gone() {
        let (dir, mut w) = new_log();
        assert!(append(&mut w, 1, 5));
        w.sync().unwrap();
        w.reset().unwrap(); // a checkpoint: the mark stays
        assert!(append(&mut w, 5, 9));
        w.sync().unwrap();
        let path = dir.path().join(FILE_NAME);
        let lagging = read(dir.path()).unwrap().unwrap();
        assert_eq!(
            lagging.mark, 4,
            "a sync marks what the one before made durable"
        );
        w.sync().unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORDS_AT..].fill(0);
        bytes[SECTOR + 9] ^= 1; // one copy of the mark spoilt
        std::fs::write(&path, &bytes).unwrap();
        let c = read(dir.path()).unwrap().unwrap();
        assert!(c.records.is_empty());
        assert_eq!((c.mark, c.newest_id), (8, Some(8)));
        bytes[2 * SECTOR + 9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("neither copy of its mark"), "{e}");
    }

    #[test]
    fn a_commit_larger_than_what_is_left_does_not_fit() {
        let (dir, mut w) = new_log();
        let big = vec![7u8; (HALF_SIZE / 2) as usize];
        assert!(w.append(1, 2, &[(b"k", &big)]).unwrap());
        let used = w.used();
        assert!(!w.append(2, 3, &[(b"k", &big)]).unwrap());
        assert_eq!(w.used(), used, "nothing written");
        assert_eq!(used, padded(HALF_SIZE as usize / 2 + HEADER + 9) as u64);
        // The other half has room for it, and the first half is kept.
        w.switch().unwrap();
        assert_eq!(w.used(), 0);
        assert!(w.append(2, 3, &[(b"k", &big)]).unwrap());
        drop(w);
        assert_eq!(ids(&reopened(dir.path()).records), [(1, 2), (2, 3)]);
    }

    #[test]
    fn both_halves_are_read_back_as_one_chain_in_id_order() {
        let (dir, mut w) = new_log();
        assert!(append(&mut w, 1, 5));
        assert!(append(&mut w, 5, 9));
        w.switch().unwrap(); // a checkpoint of 1..8 runs meanwhile
        assert!(append(&mut w, 9, 12));
        w.sync().unwrap();
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(1, 5), (5, 9), (9, 12)]);
        assert_eq!(c.newest_id, Some(11));

        // That checkpoint returned: the first half is written over, and
        // what it held before ends its chain.
        w.switch().unwrap();
        assert!(append(&mut w, 12, 20));
        drop(w);
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(9, 12), (12, 20)]);
        assert_eq!(c.newest_id, Some(19));
    }

    #[test]
    fn a_log_written_before_the_halves_reads_as_it_did() {
        // One chain from the first half's start, running on past the middle
        // of the file, with a record starting right at the middle.
        let (dir, mut w) = new_log();
        let filler = vec![1u8; SECOND_HALF as usize - RECORDS_AT - HEADER - 9];
        assert!(w.append(1, 2, &[(b"k", &filler)]).unwrap());
        assert_eq!(RECORDS_AT as u64 + w.used(), SECOND_HALF);
        drop(w);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = SECOND_HALF as usize;
        for (first, next) in [(2, 5), (5, 9)] {
            let mut record = Vec::new();
            encode(&mut record, first, next, &[(b"k", b"v")]);
            bytes[at..at + record.len()].copy_from_slice(&record);
            at += record.len();
        }
        std::fs::write(&path, &bytes).unwrap();
        let c = reopened(dir.path());
        assert_eq!(ids(&c.records), [(1, 2), (2, 5), (5, 9)], "read once");
    }
}
