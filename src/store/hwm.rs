//! The durable high-water mark: a small file beside sled's own, holding the
//! newest id that was ever acknowledged, fsynced after every commit.
//!
//! It exists to catch a store that comes back with less than it promised
//! (truncated, rolled back from a snapshot, damaged): sled alone would open
//! such a store happily and hand out the lost ids again. At start-up the
//! store's content is compared with this mark ([`super::Store::open`]).
//!
//! Format (20 bytes, rewritten in place): `b"SGHWM001"`, the id as a
//! big-endian u64, and a CRC-32 of the first 16 bytes. In-place rewrites of
//! one sector are atomic on the disks we target; the CRC turns a torn or
//! damaged write into a clear error rather than a wrong number.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The file's name inside `storage.path`.
pub const FILE_NAME: &str = "sensorgate.hwm";
const MAGIC: &[u8; 8] = b"SGHWM001";
const LEN: usize = 20;

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

/// The open high-water mark file. Only the writer thread updates it.
pub struct HighWaterMark {
    file: File,
    path: PathBuf,
    /// The value last made durable, so an unchanged mark costs no sync.
    current: u64,
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
    decode(&buf)
        .map(Some)
        .map_err(|detail| HwmError::Damaged { path, detail })
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
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| io(&path, source))?;
        if !existed {
            // The name first: a record written into a file whose name a
            // power cut can take away would protect nothing.
            super::durability::fsync_dir(dir).map_err(|source| io(dir, source))?;
        }
        let mut mark = HighWaterMark {
            file,
            path,
            current: u64::MAX,
        };
        mark.set(id)?;
        Ok(mark)
    }

    /// Records `id` as durable: rewrites the record and `fdatasync`s it.
    /// A no-op when `id` is already the recorded value.
    pub fn set(&mut self, id: u64) -> Result<(), HwmError> {
        if id == self.current {
            return Ok(());
        }
        self.file
            .write_all_at(&encode(id), 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| io(&self.path, source))?;
        self.current = id;
        Ok(())
    }

    pub fn get(&self) -> u64 {
        self.current
    }
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
    fn set_persists_and_read_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut m = HighWaterMark::create_or_open(dir.path(), 5).unwrap();
        m.set(77).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(77));
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        assert!(matches!(read(dir.path()), Err(HwmError::Damaged { .. })));
    }
}
