//! Which devices are connected: one live connection per device (SPEC §3).
//!
//! Registering a device that is already connected cancels the older
//! connection's `replaced` token; that connection closes with 4001. Also the
//! source for `/v1/devices`' connection state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Registry {
    next_conn: AtomicU64,
    live: Mutex<HashMap<Arc<str>, Live>>,
}

struct Live {
    conn: u64,
    replaced: CancellationToken,
}

/// Held by a connection for its lifetime; unregisters on drop (unless a newer
/// connection has taken the device over).
pub struct Registration {
    registry: Arc<Registry>,
    device: Arc<str>,
    conn: u64,
    /// Cancelled when a newer connection for the same device arrives.
    pub replaced: CancellationToken,
}

impl Registry {
    pub fn register(self: &Arc<Self>, device: Arc<str>) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let old = self.live.lock().expect("registry lock").insert(
            device.clone(),
            Live {
                conn,
                replaced: replaced.clone(),
            },
        );
        if let Some(old) = old {
            old.replaced.cancel();
        }
        crate::events::DevicesConnected(self.connected()).emit();
        Registration {
            registry: self.clone(),
            device,
            conn,
            replaced,
        }
    }

    /// The devices connected right now (for `/v1/devices`).
    pub fn connected_devices(&self) -> Vec<Arc<str>> {
        let live = self.live.lock().expect("registry lock");
        live.keys().cloned().collect()
    }

    pub fn connected(&self) -> usize {
        self.live.lock().expect("registry lock").len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.registry.live.lock().expect("registry lock");
        if live.get(&self.device).is_some_and(|l| l.conn == self.conn) {
            live.remove(&self.device);
        }
        let n = live.len();
        drop(live);
        crate::events::DevicesConnected(n).emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_registration_replaces_the_first() {
        let r = Arc::new(Registry::default());
        let a = r.register(Arc::from("d1"));
        let b = r.register(Arc::from("d1"));
        assert!(a.replaced.is_cancelled());
        assert!(!b.replaced.is_cancelled());
        drop(a); // the old connection ending must not unregister the new one
        assert_eq!(r.connected_devices(), vec![Arc::from("d1")]);
        drop(b);
        assert!(r.connected_devices().is_empty());
    }
}
