//! A real Mosquitto broker on a free 127.0.0.1 port, as a child process that
//! tests stop and restart on the same port, and a real MQTT subscriber.
//!
//! The broker keeps persistent sessions across restarts (`persistence true`
//! in a temp dir, saved on SIGTERM), so a test subscriber with
//! `clean_session = false` misses nothing while it reconnects after a broker
//! restart, whoever reconnects first.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::{mpsc, watch};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        let port = crate::restartable_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 0\n\
             log_dest file {}\n",
            dir.path().display(),
            dir.path().join("mosquitto.log").display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.run().await;
        m
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// Starts the broker and waits (at most 10 s) until it accepts.
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.conf())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the broker with SIGTERM (it saves its sessions) and waits.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A message as the subscriber got it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
}

/// A QoS 1 subscriber with a persistent session that reconnects by itself.
pub struct Subscriber {
    rx: mpsc::UnboundedReceiver<Msg>,
    subscribed: watch::Receiver<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn connect(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, subscribed) = watch::channel(0u32);
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        sub_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let mut s = Subscriber {
            rx,
            subscribed,
            task,
        };
        s.wait_subscribed(1).await;
        s
    }

    /// Waits (at most 10 s) until `n` subscriptions were acknowledged.
    pub async fn wait_subscribed(&mut self, n: u32) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.subscribed.wait_for(|&got| got >= n),
        )
        .await
        .expect("subscribed within 10s")
        .unwrap();
    }

    /// Messages until `distinct` different reading ids have arrived or
    /// `within` has passed, then whatever else comes in `settle`.
    pub async fn collect(
        &mut self,
        distinct: usize,
        within: Duration,
        settle: Duration,
    ) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut ids = HashSet::new();
        let deadline = tokio::time::Instant::now() + within;
        while ids.len() < distinct {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    ids.insert(id_of(&m));
                    out.push(m);
                }
                _ => return out,
            }
        }
        while let Ok(Some(m)) = tokio::time::timeout(settle, self.rx.recv()).await {
            out.push(m);
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `id` of a published reading, JSON or MessagePack.
pub fn id_of(m: &Msg) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&m.payload)
        .or_else(|_| rmp_serde::from_slice(&m.payload))
        .expect("a reading payload");
    v["id"].as_u64().expect("id")
}
