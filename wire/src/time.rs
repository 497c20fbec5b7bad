//! Wall-clock helpers: readings carry Unix milliseconds (SPEC §2).

use std::time::{SystemTime, UNIX_EPOCH};

/// This machine's clock now, in Unix milliseconds: the server's `received`,
/// a device's `ts`.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
