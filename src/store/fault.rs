//! When sled fails: closing it without hanging on its lost wake-ups,
//! reopening it (with the write-ahead log replayed) once the cause is gone,
//! restarting the process in place when sled cannot be released, and the
//! watch that wakes a flush sled forgot.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::durability::FileSync;
use super::recovery::{check_mark, recover};
use super::{Store, StoreError};

impl Store {
    /// Drops sled after an I/O failure: a failed sled refuses every later
    /// operation, so the only way back is to open it again once every
    /// handle is gone ([`Store::reopen`]).
    pub(super) fn close(&self) {
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let db = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        // Dropping the last handle flushes (and, when sled has not seen an
        // error itself, `sync_all().unwrap()`s): that may panic, or sleep on
        // sled's lost wake-up. So it happens on a throwaway thread, after
        // flushes that wake each other have all returned.
        let wedged = self.wedged.clone();
        let dropped = std::thread::Builder::new()
            .name("sensorgate-store-close".into())
            .spawn(move || {
                if let Some(db) = db {
                    if flush_until_settled(&db) {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                            move || drop(db),
                        ));
                    } else {
                        tracing::error!("sled does not finish flushing after a failure; its lock stays held until the process restarts");
                        wedged.store(true, Ordering::Release);
                        std::mem::forget(db);
                    }
                }
            });
        match dropped {
            Ok(thread) => *self.lock_closing() = Some(thread),
            Err(e) => {
                tracing::warn!(error = %e, "could not start a thread to close the store")
            }
        }
    }

    /// True while a failed sled is still being closed (settled or wedged,
    /// the close is over when its thread ends): see `closing`.
    pub(super) fn is_closing(&self) -> bool {
        self.lock_closing()
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    fn lock_closing(&self) -> std::sync::MutexGuard<'_, Option<std::thread::JoinHandle<()>>> {
        self.closing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens sled again after [`Store::close`]. Returns the newest id the
    /// store holds, which may be above the writer's (a commit that reached
    /// the log although its flush reported failure).
    pub(super) fn reopen(&self) -> Result<u64, StoreError> {
        let rec = recover(&self.path)?;
        let mark = self.hwm.lock().unwrap_or_else(|e| e.into_inner()).get();
        check_mark(&self.path, rec.last_id, Some(mark).max(rec.log_mark))?;
        // The log's commits are in sled now: durable there before the log
        // is written over (the writer's own checkpoint moves the mark).
        rec.db.flush()?;
        let files = FileSync::open(&self.path).map_err(StoreError::Sync)?;
        let mut wal = rec.wal;
        wal.reset()?;
        *self.lock_wal() = wal;
        self.retained_bytes
            .store(rec.retained_bytes, Ordering::Relaxed);
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = Some(files);
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(rec.db);
        // The replay put every durable commit the tail held into sled.
        self.lock_tail().reset(rec.last_id);
        Ok(rec.last_id)
    }
}

impl Store {
    /// True when a sled closed after a failure can never be released in this
    /// process (see [`super::OpenOptions::restart_in_place`]).
    pub fn is_wedged(&self) -> bool {
        self.wedged.load(Ordering::Acquire)
    }

    pub(super) fn restart_in_place(&self) -> bool {
        self.restart_in_place
    }
}

/// Re-executes this process with its own arguments: every descriptor (the
/// wedged store's lock, the listener) is closed on exec, and the new image
/// opens the store afresh. Acknowledged readings are durable, so nothing
/// promised is lost; connections drop and devices resend. Returns only if
/// the exec failed.
pub(super) fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    args.next();
    std::process::Command::new(exe).args(args).exec()
}

/// Flushes a failed sled until no flush is left waiting: each flush runs on
/// a short-lived thread, and while the newest has not returned within a
/// second another one is started — a flush that finds sled's recorded
/// error wakes every waiter (see [`poke_stuck_flushes`]). False when flushes
/// still hang after 5 tries (a write sled abandoned: it will never complete
/// nor fail).
fn flush_until_settled(db: &sled::Db) -> bool {
    let mut flushes: Vec<std::thread::JoinHandle<()>> = Vec::new();
    for _ in 0..5 {
        match poke(db.clone()) {
            Some(h) => flushes.push(h),
            None => return false,
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            if flushes.iter().all(|h| h.is_finished()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    false
}

/// One `flush` on a short-lived thread of its own: if sled recorded an error
/// without waking its waiters, this call sees it and wakes them all. The
/// thread holds `db` until its flush returns. `None` if no thread started.
fn poke(db: sled::Db) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sensorgate-flush-poke".into())
        .spawn(move || {
            let _ = db.flush();
        })
        .ok()
}

/// How long a flush may take before [`poke_stuck_flushes`] steps in.
const STUCK_FLUSH: Duration = Duration::from_secs(1);

/// Watches for a flush that does not return. sled 0.34 has a path where a
/// failed background log write (ENOSPC, EIO) records the error without
/// waking the thread waiting in `flush`, which then sleeps forever (seen on a
/// full disk). Any later `flush` call notices the recorded error and wakes
/// every waiter, so while a flush is stuck this thread calls `flush` from a
/// short-lived thread of its own. Ends when the store is dropped.
pub(super) fn poke_stuck_flushes(store: Weak<Store>) {
    let spawned = std::thread::Builder::new()
        .name("sensorgate-flush-watch".into())
        .spawn(move || {
            // At most one poke in flight; a poke that itself blocks is a
            // slow disk, not a lost wake-up, and is left to finish.
            let mut in_flight: Option<std::thread::JoinHandle<()>> = None;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(store) = store.upgrade() else { return };
                let started = store.flush_started_ms.load(Ordering::Acquire);
                let now = store.epoch.elapsed().as_millis() as u64;
                let stuck =
                    started != 0 && now.saturating_sub(started) > STUCK_FLUSH.as_millis() as u64;
                if in_flight.as_ref().is_some_and(|p| !p.is_finished()) || !stuck {
                    continue;
                }
                let Ok(db) = store.sled() else { continue };
                drop(store);
                in_flight = poke(db);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the flush watch thread");
    }
}
