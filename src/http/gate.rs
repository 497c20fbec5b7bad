//! The cap on unfinished handshakes (SPEC §3, §8: every wait on a peer is
//! bounded), checked at `accept` before any TLS, HTTP parsing or token work.
//!
//! A connection is "unfinished" from `accept` until its first request's
//! headers have been parsed (TLS handshake included). A peer that opens
//! connections and sends nothing, or half a request, holds a descriptor
//! and a task for up to the handshake timeout; without a cap a few
//! thousand of them exhaust the open-files limit and `accept` fails for
//! everyone. [`Gate`] admits at most `per_ip` such connections per client
//! address and `total` overall; past either, the connection is answered
//! with a canned 429/503 and closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

/// Why a connection was refused at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This address already has `per_ip` unfinished handshakes.
    PerIp,
    /// `total` unfinished handshakes across all addresses.
    Total,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::PerIp => "pending_per_ip",
            Refused::Total => "pending_total",
        }
    }

    /// The whole HTTP response, written without reading the request.
    fn response(self) -> String {
        let (status, body) = match self {
            Refused::PerIp => (
                "429 Too Many Requests",
                r#"{"error":"rate_limited","detail":"too many unfinished handshakes from this address"}"#,
            ),
            Refused::Total => (
                "503 Service Unavailable",
                r#"{"error":"overloaded","detail":"too many unfinished handshakes"}"#,
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nconnection: close\r\nretry-after: 1\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    per_ip: usize,
    total: usize,
    /// Unfinished handshakes per address, and their sum. One short lock per
    /// accept and per first request; entries go when they reach zero.
    counts: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// One admitted, still unfinished handshake; dropping it (first request
/// parsed, or connection gone) frees its place.
pub struct Pending {
    gate: Arc<Inner>,
    ip: IpAddr,
}

impl Gate {
    pub fn new(per_ip: usize, total: usize) -> Self {
        Gate {
            inner: Arc::new(Inner {
                per_ip: per_ip.max(1),
                total: total.max(1),
                counts: Mutex::new((HashMap::new(), 0)),
            }),
        }
    }

    /// Admits one more unfinished handshake from `ip`, or says why not.
    pub fn enter(&self, ip: IpAddr) -> Result<Pending, Refused> {
        let mut guard = self.inner.counts.lock().expect("gate lock");
        let (per_ip, total) = &mut *guard;
        if *total >= self.inner.total {
            return Err(Refused::Total);
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.inner.per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        *total += 1;
        crate::events::PendingHandshakes(*total).emit();
        Ok(Pending {
            gate: self.inner.clone(),
            ip,
        })
    }

    /// Unfinished handshakes now (for tests and `/metrics`).
    pub fn pending(&self) -> usize {
        self.inner.counts.lock().expect("gate lock").1
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut guard = self.gate.counts.lock().expect("gate lock");
        let (per_ip, total) = &mut *guard;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        crate::events::PendingHandshakes(*total).emit();
    }
}

/// Answers a refused connection without reading from it, and drops it. A
/// fresh socket's send buffer is empty, so the non-blocking write takes the
/// whole (small) response or the peer gets a bare close: never a wait.
pub fn refuse(tcp: TcpStream, why: Refused) {
    crate::events::HandshakeRejected {
        reason: why.as_str(),
    }
    .emit();
    // A close with the request unread may reset the connection before the
    // peer reads this; acceptable for a refused peer.
    let _ = tcp.try_write(why.response().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_overall_and_frees_on_drop() {
        let gate = Gate::new(2, 3);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = gate.enter(a).unwrap();
        let _a2 = gate.enter(a).unwrap();
        assert_eq!(gate.enter(a).err(), Some(Refused::PerIp));
        let _b1 = gate.enter(b).unwrap();
        assert_eq!(gate.enter(b).err(), Some(Refused::Total));
        drop(a1);
        assert_eq!(gate.pending(), 2);
        assert!(gate.enter(a).is_ok());
    }

    #[test]
    fn canned_responses_have_the_right_content_length() {
        for why in [Refused::PerIp, Refused::Total] {
            let text = why.response();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len(), "{why:?}");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(v["error"].is_string());
        }
    }
}
