//! The process's allocator, tuned for a long-running daemon. Called once by
//! `main` before the runtime starts, and by the in-process test daemon so
//! that its memory tests measure what the binary does.

/// glibc raises its mmap threshold each time an mmapped block is freed (up
/// to 32 MiB), after which big short-lived buffers (group records for the
/// write-ahead log, sled's 512 KiB write buffers) are carved from the
/// arenas and fragment them: under a sustained flood the daemon's RSS crept
/// up ~0.4 MiB/s with its live heap flat. A fixed threshold (glibc's
/// default value, but with the adjustment turned off) hands every block from
/// 128 KiB up back to the kernel when it is freed. Elsewhere a no-op.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, under glibc's own
    // locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
