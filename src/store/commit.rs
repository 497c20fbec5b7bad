//! A durable commit's readings, as the writer hands them to the store's
//! tail and to its listeners (fan-out, device book, bridge), and the pool
//! their buffers come back to.
//!
//! Why a pool: a commit's readings are one buffer of ~100 bytes a reading,
//! and under load a commit holds thousands of them. A buffer that big is
//! above glibc's mmap threshold (fixed at 128 KiB, [`crate::allocator`]), so
//! a fresh one is fresh pages from the kernel: in the flood, faulting them
//! in (and zeroing them) was half of the writer thread's time, and the
//! writer is what every ack waits behind. A commit's buffer goes back to
//! the pool when its last holder drops it (whichever thread that is, which
//! also pays for dropping its readings), emptied, and the writer builds a
//! later commit in it. The pool is bounded ([`POOL_MAX_BYTES`]), and the
//! writer empties it once it has waited a whole second with nothing to do
//! ([`Pool::clear`]; buffers of the last commits, returned after that, are
//! freed), so what it keeps is memory a busy writer was using anyway. A
//! daemon that keeps receiving, however slowly, keeps the pool: after a
//! burst, up to the bound in buffers the burst's commits were built in.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use crate::protocol::Reading;

/// Most bytes of buffer capacity the pool keeps. At the flood's 1.2 M
/// readings/s a commit holds a few thousand readings (a few hundred KiB)
/// and a dozen are alive at once (routing, the tail until sled holds them,
/// subscribers' queues): this keeps enough of them to build most commits
/// in a recycled buffer.
pub const POOL_MAX_BYTES: usize = 8 << 20;

/// One durable commit's readings, in id order.
#[derive(Debug)]
pub struct Commit {
    readings: Vec<Reading>,
    /// Where the buffer goes when the commit is dropped (`None`: freed).
    pool: Option<Arc<Pool>>,
}

impl Commit {
    /// A commit built in a buffer from `pool`, which gets it back.
    pub(super) fn pooled(readings: Vec<Reading>, pool: &Arc<Pool>) -> Commit {
        Commit {
            readings,
            pool: Some(pool.clone()),
        }
    }
}

/// A commit whose buffer is simply freed (tests, readings read back).
impl From<Vec<Reading>> for Commit {
    fn from(readings: Vec<Reading>) -> Commit {
        Commit {
            readings,
            pool: None,
        }
    }
}

impl FromIterator<Reading> for Commit {
    fn from_iter<I: IntoIterator<Item = Reading>>(readings: I) -> Commit {
        Commit::from(readings.into_iter().collect::<Vec<_>>())
    }
}

impl Deref for Commit {
    type Target = [Reading];

    fn deref(&self) -> &[Reading] {
        &self.readings
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.put(std::mem::take(&mut self.readings));
        }
    }
}

/// Empty reading buffers for the writer's next commits.
#[derive(Debug, Default)]
pub struct Pool {
    state: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    buffers: Vec<Vec<Reading>>,
    /// Bytes of capacity over `buffers`.
    bytes: usize,
    /// Cleared since the last take: commits have stopped, and buffers of
    /// the last ones, returned as their holders finish with them, are freed.
    idle: bool,
}

impl Pool {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Nothing under the lock can panic and leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty buffer with room for at least `readings`: a kept one when
    /// there is one (the most recently returned, whose pages are most
    /// likely still in the cache), else a new one.
    pub fn take(&self, readings: usize) -> Vec<Reading> {
        let kept = {
            let mut kept = self.kept();
            kept.idle = false;
            let buffer = kept.buffers.pop();
            if let Some(b) = &buffer {
                kept.bytes -= bytes_of(b);
            }
            buffer
        };
        match kept {
            Some(mut b) => {
                b.reserve(readings);
                b
            }
            None => Vec::with_capacity(readings),
        }
    }

    /// Keeps `buffer` (emptied here, outside the lock) unless that would
    /// pass [`POOL_MAX_BYTES`].
    fn put(&self, mut buffer: Vec<Reading>) {
        let bytes = bytes_of(&buffer);
        if bytes == 0 || bytes > POOL_MAX_BYTES {
            return;
        }
        buffer.clear();
        let mut kept = self.kept();
        if !kept.idle && kept.bytes + bytes <= POOL_MAX_BYTES {
            kept.bytes += bytes;
            kept.buffers.push(buffer);
        }
    }

    /// Frees every kept buffer, and every one returned until the next
    /// [`Pool::take`]: commits have stopped, and an idle daemon should not
    /// hold a busy one's memory.
    pub fn clear(&self) {
        let buffers = std::mem::replace(
            &mut *self.kept(),
            Kept {
                idle: true,
                ..Kept::default()
            },
        );
        drop(buffers);
    }

    /// Bytes of capacity kept.
    pub fn kept_bytes(&self) -> usize {
        self.kept().bytes
    }
}

fn bytes_of(buffer: &Vec<Reading>) -> usize {
    buffer.capacity() * std::mem::size_of::<Reading>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Value;

    fn reading(id: u64) -> Reading {
        Reading {
            id,
            device: "d".into(),
            sensor: "s".into(),
            ts: 0,
            value: Value::Int(1),
            unit: None,
            received: 0,
        }
    }

    #[test]
    fn a_dropped_commit_gives_its_buffer_back_empty() {
        let pool = Arc::new(Pool::default());
        let mut b = pool.take(100);
        let ptr = b.as_ptr();
        b.extend((1..=100).map(reading));
        let commit = Arc::new(Commit::pooled(b, &pool));
        let held = commit.clone();
        drop(commit);
        assert_eq!(pool.kept_bytes(), 0, "still held: nothing comes back");
        assert_eq!(held.len(), 100);
        drop(held);
        assert!(pool.kept_bytes() >= 100 * std::mem::size_of::<Reading>());
        let again = pool.take(50);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same buffer, reused");
        assert_eq!(pool.kept_bytes(), 0);
    }

    #[test]
    fn a_cleared_pool_keeps_nothing_until_the_next_commit() {
        let pool = Arc::new(Pool::default());
        let commit = Commit::pooled(pool.take(10), &pool);
        pool.clear();
        drop(commit);
        assert_eq!(pool.kept_bytes(), 0, "returned while idle: freed");
        let commit = Commit::pooled(pool.take(10), &pool);
        drop(commit);
        assert!(pool.kept_bytes() > 0, "kept again once commits resume");
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_bound() {
        let pool = Arc::new(Pool::default());
        let per = POOL_MAX_BYTES / std::mem::size_of::<Reading>() / 3;
        let commits: Vec<_> = (0..5)
            .map(|_| Commit::pooled(Vec::with_capacity(per), &pool))
            .collect();
        drop(commits);
        assert!(pool.kept_bytes() <= POOL_MAX_BYTES);
        assert!(pool.kept_bytes() >= 2 * per * std::mem::size_of::<Reading>());
        // A buffer bigger than the whole bound is freed, not kept.
        let big = POOL_MAX_BYTES / std::mem::size_of::<Reading>() + 1;
        pool.clear();
        drop(Commit::pooled(Vec::with_capacity(big), &pool));
        assert_eq!(pool.kept_bytes(), 0);
    }
}
