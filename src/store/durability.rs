//! Power-loss durability of the files sled writes.
//!
//! sled 0.34 makes its log "stable" with `sync_file_range`, which pushes data
//! pages towards the disk but persists neither the file's size and block
//! allocation (metadata) nor the disk's volatile write cache; it writes large
//! nodes to `blobs/` files with plain `write` + `close`, and never fsyncs a
//! directory. So after sled's flush returns, an acknowledged commit can still
//! vanish in a power cut. [`FileSync::sync`] closes that gap after every
//! flush, before any ack: `fdatasync` of the log file, `fsync` of every file
//! that appeared since the last call (blobs, snapshots, sled's `conf`), and
//! `fsync` of each directory that gained an entry.
//!
//! Finding new files costs one `readdir` of the store directory and of
//! `blobs/` per commit (a few entries each): cheaper and more robust than
//! guessing which values sled will put in a blob.

use std::collections::HashSet;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// sled's log file inside the store directory.
const LOG_FILE: &str = "db";
/// sled's directory of large values.
const BLOBS_DIR: &str = "blobs";

/// `fsync` of a directory: makes the names created in it durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Syncs one store directory's files; owned by whoever flushes (the writer).
pub struct FileSync {
    dir: PathBuf,
    log: File,
    /// Files already fsynced once; sled never rewrites them in place except
    /// the log, which is synced every time.
    known: HashSet<PathBuf>,
}

impl FileSync {
    /// Fsyncs every file in the store and its directories, so whatever sled
    /// wrote while opening (recovery, a new store's `conf`) is durable before
    /// the first welcome promises anything.
    pub fn open(dir: &Path) -> std::io::Result<FileSync> {
        let log = File::open(dir.join(LOG_FILE))?;
        let mut sync = FileSync {
            dir: dir.to_path_buf(),
            log,
            known: HashSet::new(),
        };
        for sub in sync.dirs().into_iter().filter(|d| d.is_dir()) {
            sync.sync_new_files(&sub)?;
            fsync_dir(&sub)?;
        }
        sync.log.sync_all()?;
        if let Some(parent) = dir.parent() {
            // A store created just now is itself a new directory entry.
            fsync_dir(parent)?;
        }
        Ok(sync)
    }

    /// Makes everything sled has written so far power-loss safe. Call after
    /// sled's own flush returned.
    pub fn sync(&mut self) -> std::io::Result<()> {
        // The log first. sled unlinks a superseded blob as soon as the new
        // version is "stable" by its own measure (`sync_file_range`); the
        // directory fsync below would make that unlink durable, so the log
        // holding the new version must be durable before it. A new blob the
        // log points at but a crash took away is a torn tail sled discards on
        // recovery, and nothing in it was acknowledged yet.
        self.log.sync_data()?;
        for sub in self.dirs() {
            if self.sync_new_files(&sub)? {
                fsync_dir(&sub)?;
            }
        }
        Ok(())
    }

    fn dirs(&self) -> [PathBuf; 2] {
        [self.dir.clone(), self.dir.join(BLOBS_DIR)]
    }

    /// Fsyncs the regular files in `sub` not seen before; forgets files that
    /// are gone (sled deletes old blobs and snapshots). True when any was new.
    fn sync_new_files(&mut self, sub: &Path) -> std::io::Result<bool> {
        let entries = match std::fs::read_dir(sub) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let path = entry.path();
            if !self.known.contains(&path) {
                match File::open(&path) {
                    Ok(f) => f.sync_all()?,
                    // Deleted between readdir and open: nothing to keep.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                any_new = true;
            }
            present.insert(path);
        }
        self.known
            .retain(|p| p.parent() != Some(sub) || present.contains(p));
        self.known.extend(present);
        Ok(any_new)
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(available(&st))
}

/// The store directory held open to ask its filesystem for free space,
/// which the writer does before every commit: `fstatvfs` on the open
/// directory skips the path walk `statvfs` does each time, which was most
/// of the call's cost in the writer's profile (BENCHMARKS.md, "The
/// writer's own work per commit, trimmed").
pub struct SpaceProbe {
    path: PathBuf,
    /// `None` when the directory could not be opened (which sled, whose
    /// files are in it, would not survive either): then asked by path.
    dir: Option<File>,
}

impl SpaceProbe {
    /// Opens `dir` (close-on-exec, like every file std opens: a restart in
    /// place does not inherit it), or logs why not and asks by path.
    pub fn open(dir: &Path) -> Self {
        let opened = File::open(dir)
            .map_err(|e| {
                tracing::warn!(error = %e, path = %dir.display(),
                    "cannot open the store directory; checking free space by path");
            })
            .ok();
        SpaceProbe {
            path: dir.to_path_buf(),
            dir: opened,
        }
    }

    /// [`free_bytes`] of the directory.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        use std::os::fd::AsRawFd;
        let Some(dir) = &self.dir else {
            return free_bytes(&self.path);
        };
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open for as long as `dir`, and `st` is a valid
        // out-pointer.
        if unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(available(&st))
    }
}

// The fields are narrower than u64 on some targets.
#[allow(clippy::unnecessary_cast)]
fn available(st: &libc::statvfs) -> u64 {
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_are_found_once_and_deleted_ones_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"log").unwrap();
        let mut s = FileSync::open(dir.path()).unwrap();
        let blobs = dir.path().join(BLOBS_DIR);
        std::fs::create_dir(&blobs).unwrap();
        assert!(!s.sync_new_files(&blobs).unwrap());
        std::fs::write(blobs.join("17"), b"blob").unwrap();
        assert!(s.sync_new_files(&blobs).unwrap(), "a new blob is synced");
        assert!(!s.sync_new_files(&blobs).unwrap(), "and only once");
        std::fs::remove_file(blobs.join("17")).unwrap();
        s.sync_new_files(&blobs).unwrap();
        assert!(s.known.iter().all(|p| p.parent() != Some(&blobs)));
        s.sync().unwrap();
    }

    #[test]
    fn free_bytes_reads_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
        let probe = SpaceProbe::open(dir.path());
        assert!(probe.dir.is_some(), "asked through the open directory");
        let (by_path, by_fd) = (free_bytes(dir.path()).unwrap(), probe.free_bytes().unwrap());
        // Both ask the same filesystem; other writers on it may move the
        // figure between the two calls, but not by a tenth of it.
        assert!(by_fd > 0);
        assert!(
            by_path.abs_diff(by_fd) <= by_path / 10,
            "{by_path} against {by_fd}"
        );
        // A directory that cannot be opened is asked by path, which fails
        // as `free_bytes` does.
        let missing = SpaceProbe::open(&dir.path().join("missing"));
        assert!(missing.dir.is_none());
        assert!(missing.free_bytes().is_err());
    }
}
