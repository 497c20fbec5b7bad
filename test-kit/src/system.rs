//! What tests need from the machine: ports for servers they start, the
//! clock for token claims, this process's memory.

/// Seconds since the Unix epoch, for `exp`/`nbf` claims.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A port that was free a moment ago, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port for a server (broker, daemon) that a test stops and starts again. It must not
/// come from the kernel's ephemeral range (as port 0 would): while the broker
/// is stopped, any other socket of this process (another test's daemon or
/// broker, a browser's outgoing connection) could be handed the same port, and the "restarted" broker would
/// then be someone else's. Ports below the ephemeral range, handed out once
/// per process from a counter and offset by the pid, cannot be taken that way.
pub fn restartable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// This process's resident set size in KiB (Linux).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}
