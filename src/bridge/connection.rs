//! The MQTT connection: client options (TLS included) and the task that polls
//! the rumqttc `EventLoop`, continuously, reconnecting with exponential
//! backoff and jitter.
//!
//! It reports what the outbox needs as [`ConnEvent`]s and owns the [`Gate`]:
//! publishes are only handed to the client while the gate is open for the
//! current connection. When a connection dies the gate closes and every
//! request the client still holds is discarded (we use a clean session and
//! resend from the outbox cursor instead), so nothing from an old
//! connection leaks into the next one, where it would be an unaccounted
//! duplicate and would break the write-order bookkeeping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BridgeError, BridgeStatus};
use crate::config::{MqttBroker, MqttConfig};

/// First reconnect delay; doubled per failed attempt up to `mqtt.max_backoff`.
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Keep-alive: how quickly a silently dead broker is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Largest incoming packet accepted (relayed readings are well under 1 KiB).
const MAX_PACKET: usize = 64 * 1024;

/// What the connection task tells the outbox, in the order it happened.
#[derive(Debug)]
pub enum ConnEvent {
    /// Connected; publishes may be handed to the client for this epoch.
    Connected(u64),
    /// The connection is gone; everything the client held is discarded.
    Disconnected,
    /// The client wrote its next publish (in request order) with this pkid.
    Written(u16),
    /// PUBACK for this pkid.
    Acked(u16),
}

/// Which connection (epoch) may take publishes now; `None` while down.
#[derive(Default)]
pub struct Gate(Mutex<Option<u64>>);

impl Gate {
    /// Runs `f` only while the gate is open for `epoch`, holding it open
    /// meanwhile. `f` must not block (use the client's `try_*` calls).
    pub fn with_open<T>(&self, epoch: u64, f: impl FnOnce() -> T) -> Option<T> {
        let g = self.0.lock().expect("gate lock");
        (*g == Some(epoch)).then(f)
    }

    fn set(&self, value: Option<u64>) {
        *self.0.lock().expect("gate lock") = value;
    }
}

/// rumqttc options for `cfg`; `inflight` bounds the unacknowledged publishes.
pub fn options(
    cfg: &MqttConfig,
    broker: &MqttBroker,
    inflight: u16,
) -> Result<MqttOptions, BridgeError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), broker.host.clone(), broker.port);
    o.set_clean_session(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_inflight(inflight)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    if broker.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config()?),
        )));
    }
    Ok(o)
}

/// TLS with the ring provider and the system's root certificates.
fn tls_config() -> Result<rustls::ClientConfig, BridgeError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        return Err(BridgeError::Tls(
            "no usable root certificates found on this system".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where incoming publishes go (the relay); called on the connection task,
/// must not block.
pub type OnPublish = Box<dyn Fn(&Publish) + Send>;

/// Polls `eventloop` until `stop`, reconnecting with backoff.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    gate: Arc<Gate>,
    events: mpsc::Sender<ConnEvent>,
    status: Arc<BridgeStatus>,
    max_backoff: Duration,
    subscribe: Option<(String, QoS)>,
    on_publish: Option<OnPublish>,
    stop: CancellationToken,
) {
    let mut epoch = 0u64;
    let mut failures = 0u32;
    loop {
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                failures = 0;
                epoch += 1;
                gate.set(Some(epoch));
                status.set_connected(true, None);
                tracing::info!(broker = %eventloop.mqtt_options.broker_address().0, "mqtt connected");
                if let Some((filter, qos)) = &subscribe {
                    if let Err(e) = client.try_subscribe(filter.clone(), *qos) {
                        tracing::warn!(error = %e, "mqtt relay subscribe failed");
                    }
                }
                ConnEvent::Connected(epoch)
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => ConnEvent::Written(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => ConnEvent::Acked(ack.pkid),
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if let Some(f) = &on_publish {
                    f(&p);
                }
                continue;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                gate.set(None);
                status.set_connected(false, None);
                break;
            }
            Ok(_) => continue,
            Err(e) => {
                // Close the gate first, then throw away whatever the client
                // still holds: the outbox resends from its cursor.
                {
                    let mut g = gate.0.lock().expect("gate lock");
                    *g = None;
                    eventloop.clean();
                    eventloop.pending.clear();
                }
                let was_up = status.connected();
                status.set_connected(false, Some(describe(&e)));
                if was_up {
                    tracing::warn!(error = %e, "mqtt connection lost");
                } else {
                    tracing::debug!(error = %e, "mqtt connect failed");
                }
                if events.send(ConnEvent::Disconnected).await.is_err() {
                    break;
                }
                let delay = backoff(failures, max_backoff);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    gate.set(None);
}

/// Exponential backoff with jitter: the n-th retry waits a random time in
/// `[d/2, d]` where `d = min(BASE * 2^n, max)`, so a fleet of instances does
/// not reconnect to a restarted broker in lockstep.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let d = BASE_BACKOFF
        .saturating_mul(1u32 << failures.min(16))
        .min(max.max(BASE_BACKOFF));
    let half = d / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) => format!("io: {io}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let max = Duration::from_secs(10);
        for _ in 0..50 {
            let first = backoff(0, max);
            assert!(first >= Duration::from_millis(50) && first <= BASE_BACKOFF);
            let late = backoff(30, max);
            assert!(late >= max / 2 && late <= max);
        }
        assert!(backoff(3, max) <= Duration::from_millis(800));
    }
}
