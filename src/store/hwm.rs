//! The durable high-water mark: a small file beside sled's own, holding the
//! newest id that was ever acknowledged, fsynced after every commit.
//!
//! It exists to catch a store that comes back with less than it promised
//! (truncated, rolled back from a snapshot, damaged): sled alone would open
//! such a store happily and hand out the lost ids again. At start-up the
//! store's content is compared with this mark ([`super::Store::open`]).
//!
//! Format: two copies of one 20-byte record, at offsets 0 and 512 (two disk
//! sectors), rewritten in place together and synced once. A record is
//! `b"SGHWM001"`, the id as a big-endian u64, and a CRC-32 of the first 16
//! bytes. A torn or damaged sector spoils one copy at most; the reader takes
//! the highest valid copy, and only when none is valid is the mark damaged.
//! A new file is written whole under a temporary name, synced, and renamed
//! into place, so a crash never leaves an empty mark behind.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The file's name inside `storage.path`.
pub const FILE_NAME: &str = "sensorgate.hwm";
const MAGIC: &[u8; 8] = b"SGHWM001";
const LEN: usize = 20;
/// Offset of the second copy: its own sector.
const SECOND: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum HwmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: damaged high-water mark record ({detail})")]
    Damaged { path: PathBuf, detail: &'static str },
}

/// A mark written by [`HighWaterMark::raise`], not yet synced.
#[must_use = "the mark is durable only once synced"]
pub struct MarkSync {
    file: File,
    path: PathBuf,
}

impl MarkSync {
    pub fn sync(self) -> Result<(), HwmError> {
        self.file
            .sync_data()
            .map_err(|source| io(&self.path, source))
    }
}

/// The open high-water mark file. The writer notes every commit in it; a
/// checkpoint raises it.
pub struct HighWaterMark {
    file: File,
    path: PathBuf,
    /// The value last written, so an unchanged mark costs nothing.
    current: u64,
    /// `current` was written by [`HighWaterMark::note`] and not synced yet.
    unsynced: bool,
}

/// What is on disk before the store is opened.
pub fn read(dir: &Path) -> Result<Option<u64>, HwmError> {
    let path = dir.join(FILE_NAME);
    let mut buf = Vec::with_capacity(LEN);
    match File::open(&path) {
        Ok(mut f) => f
            .read_to_end(&mut buf)
            .map_err(|source| io(&path, source))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(&path, source)),
    };
    let copies = [
        &buf[..buf.len().min(LEN)],
        buf.get(SECOND as usize..).unwrap_or(&[]),
    ];
    let valid = copies.iter().filter_map(|c| decode(c).ok()).max();
    match valid {
        Some(id) => Ok(Some(id)),
        None => Err(HwmError::Damaged {
            path,
            detail: decode(copies[0]).err().unwrap_or("no valid copy"),
        }),
    }
}

fn decode(buf: &[u8]) -> Result<u64, &'static str> {
    if buf.len() != LEN {
        return Err("wrong length");
    }
    if &buf[..8] != MAGIC {
        return Err("bad magic");
    }
    let crc = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[..16]) != crc {
        return Err("checksum mismatch");
    }
    Ok(u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes")))
}

fn encode(id: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&id.to_be_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..].copy_from_slice(&crc.to_be_bytes());
    b
}

fn io(path: &Path, source: std::io::Error) -> HwmError {
    HwmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl HighWaterMark {
    /// Opens (creating when missing) the mark in `dir` and makes `id` its
    /// durable value: the file, and for a new file its directory, are
    /// fsynced before this returns.
    pub fn create_or_open(dir: &Path, id: u64) -> Result<HighWaterMark, HwmError> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            create(dir, &path, id)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| io(&path, source))?;
        let mut mark = HighWaterMark {
            file,
            path,
            current: u64::MAX,
            unsynced: false,
        };
        mark.set(id)?;
        Ok(mark)
    }

    /// Records `id` as durable: rewrites the record and `fdatasync`s it.
    /// A no-op when `id` is already the recorded and synced value.
    pub fn set(&mut self, id: u64) -> Result<(), HwmError> {
        if id == self.current && !self.unsynced {
            return Ok(());
        }
        self.write(id)?;
        self.file
            .sync_data()
            .map_err(|source| io(&self.path, source))?;
        self.unsynced = false;
        Ok(())
    }

    /// [`HighWaterMark::set`] in two steps, for the applier's checkpoint:
    /// the writer notes every commit, and must not wait for this lock
    /// through a disk sync. Records `id` now (never less than what is
    /// recorded: the writer may have noted a newer id since the checkpoint
    /// started) and returns the sync that makes it durable, to be run once
    /// the lock is released. Whatever the file holds by then, this value or
    /// a newer note, becomes durable; both are true.
    pub fn raise(&mut self, id: u64) -> Result<MarkSync, HwmError> {
        let id = id.max(self.current);
        if id != self.current {
            self.write(id)?;
        }
        let file = self
            .file
            .try_clone()
            .map_err(|source| io(&self.path, source))?;
        Ok(MarkSync {
            file,
            path: self.path.clone(),
        })
    }

    /// Records `id`, already durable elsewhere (the write-ahead log), without
    /// a sync of its own: a store rolled back or restored without its mark
    /// is still caught, while a power cut may only leave an older mark, which
    /// the log's own mark covers. The next [`HighWaterMark::set`] syncs it.
    pub fn note(&mut self, id: u64) -> Result<(), HwmError> {
        if id != self.current {
            self.write(id)?;
            self.unsynced = true;
        }
        Ok(())
    }

    /// Both copies in one `pwrite` (the file is their two sectors).
    fn write(&mut self, id: u64) -> Result<(), HwmError> {
        self.file
            .write_all_at(&both_copies(id), 0)
            .map_err(|source| io(&self.path, source))?;
        self.current = id;
        Ok(())
    }

    pub fn get(&self) -> u64 {
        self.current
    }
}

/// Writes a new mark file whole: temporary name, fsync, rename, fsync of
/// the directory.
fn both_copies(id: u64) -> [u8; SECOND as usize + LEN] {
    let mut bytes = [0u8; SECOND as usize + LEN];
    bytes[..LEN].copy_from_slice(&encode(id));
    bytes[SECOND as usize..].copy_from_slice(&encode(id));
    bytes
}

fn create(dir: &Path, path: &Path, id: u64) -> Result<(), HwmError> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let bytes = both_copies(id);
    let written = File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path))
        .and_then(|()| super::durability::fsync_dir(dir));
    written.map_err(|source| io(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_caught() {
        let b = encode(1_037_301);
        assert_eq!(decode(&b), Ok(1_037_301));
        for i in 0..LEN {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert_eq!(decode(&b[..10]), Err("wrong length"));
    }

    #[test]
    fn a_checkpoint_raises_the_mark_but_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = HighWaterMark::create_or_open(dir.path(), 5).unwrap();
        m.raise(40).unwrap().sync().unwrap();
        assert_eq!((m.get(), read(dir.path()).unwrap()), (40, Some(40)));
        // The writer noted 60 while a checkpoint of 50 ran.
        m.note(60).unwrap();
        m.raise(50).unwrap().sync().unwrap();
        assert_eq!((m.get(), read(dir.path()).unwrap()), (60, Some(60)));
    }

    #[test]
    fn set_persists_and_read_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut m = HighWaterMark::create_or_open(dir.path(), 5).unwrap();
        m.set(77).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(77));
        // One spoilt copy: the other still tells.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(77));
        bytes[SECOND as usize + 9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(dir.path()), Err(HwmError::Damaged { .. })));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(read(dir.path()), Err(HwmError::Damaged { .. })));
    }
}
