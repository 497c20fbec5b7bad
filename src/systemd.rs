//! What the daemon tells systemd, and what it asks of it: readiness
//! (`READY=1` once the store is open and the listener bound), `STOPPING=1`,
//! the watchdog, and whether stderr is the journal (so logs go there as
//! structured entries). Outside systemd (`NOTIFY_SOCKET` unset) every call
//! here is a no-op.
//!
//! The watchdog is a liveness check, not a timer: `WATCHDOG=1` is sent only
//! after the writer thread has answered a ping through the ingest queue, from
//! a task on the runtime. A wedged writer (a flush that never returns, a
//! panic) or a wedged runtime (a worker blocked) both stop the pings, and
//! systemd restarts the service after `WatchdogSec=`.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::writer::WriteRequest;

/// `READY=1`: the store is open and the listener bound.
pub fn notify_ready() {
    notify(NotifyState::Ready);
}

/// `STOPPING=1`: shutdown has begun.
pub fn notify_stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// How often to prove liveness: half of systemd's `WatchdogSec=` (as
/// `sd_watchdog_enabled(3)` advises), or `None` without a watchdog.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Asks the writer thread to answer through the ingest queue; true if it
/// did within `bound`. Queued behind the batches already waiting, so an
/// answer also proves the queue drains.
pub async fn ping_writer(queue: &mpsc::Sender<WriteRequest>, bound: Duration) -> bool {
    let (reply, answered) = oneshot::channel();
    let asked = async {
        queue.send(WriteRequest::Ping { reply }).await.ok()?;
        answered.await.ok()
    };
    matches!(tokio::time::timeout(bound, asked).await, Ok(Some(())))
}

/// Every `period`, `ping()`s and calls `alive()` only if the ping came back
/// true. Ends when `shutdown` is cancelled (dropping `ping`, and with it any
/// queue handle it holds, so the writer can drain).
pub async fn watchdog<P, F>(
    period: Duration,
    mut ping: P,
    mut alive: impl FnMut(),
    shutdown: CancellationToken,
) where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answered = tokio::select! {
            _ = shutdown.cancelled() => return,
            answered = ping() => answered,
        };
        if answered {
            alive();
        } else {
            tracing::warn!(
                ?period,
                "the writer did not answer the watchdog ping; not telling systemd we are alive"
            );
        }
    }
}

/// `WATCHDOG=1`.
pub fn notify_watchdog() {
    notify(NotifyState::Watchdog);
}

/// True when stderr is connected to the journal: systemd sets
/// `JOURNAL_STREAM=<dev>:<inode>` for a service whose output goes there, and
/// the variable is inherited by children whose stderr may point elsewhere,
/// so the device and inode must match stderr's own.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&stream.to_string_lossy()) else {
        return false;
    };
    stderr_identity().is_some_and(|id| id == (dev, ino))
}

fn parse_journal_stream(s: &str) -> Option<(u64, u64)> {
    let (dev, ino) = s.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Device and inode of stderr (an `fstat` on fd 2, through a duplicate so
/// that closing it leaves stderr open).
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Runs the watchdog for about twenty periods with `ping`; how many
    /// times it said alive.
    async fn alive_count<F>(ping: impl FnMut() -> F + Send + 'static) -> usize
    where
        F: Future<Output = bool> + Send + 'static,
    {
        let count = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let c = count.clone();
        let task = tokio::spawn(watchdog(
            Duration::from_millis(50),
            ping,
            move || {
                c.fetch_add(1, Ordering::SeqCst);
            },
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        shutdown.cancel();
        task.await.unwrap();
        count.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn watchdog_notifies_while_pings_are_answered() {
        // About 20; at least 2 however loaded the machine is.
        assert!(alive_count(|| async { true }).await >= 2);
    }

    #[tokio::test]
    async fn watchdog_stays_silent_when_pings_go_unanswered() {
        assert_eq!(alive_count(|| async { false }).await, 0);
    }

    #[tokio::test]
    async fn a_writer_that_never_reads_its_queue_fails_the_ping() {
        let (tx, _rx) = mpsc::channel(4);
        assert!(!ping_writer(&tx, Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn a_writer_that_dropped_its_queue_fails_the_ping() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        assert!(!ping_writer(&tx, Duration::from_millis(100)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_real_writer_answers_the_ping() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = crate::config::Config::with_secret("test").storage;
        storage.path = dir.path().to_path_buf();
        let store = crate::store::Store::open(&storage.path).unwrap();
        let (writer, thread) = crate::store::writer::spawn(store, &storage, 16, Vec::new());
        assert!(ping_writer(writer.sender(), Duration::from_secs(10)).await);
        drop(writer);
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("a:1"), None);
    }
}
