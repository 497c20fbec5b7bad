//! The daemon in-process: [`TestDaemon`] runs `sensorgate::Daemon` on
//! 127.0.0.1:0 with its sled store in a temp dir, and hands out tokens, URLs
//! and clients for it.

use std::sync::Arc;
use std::time::Duration;

use sensorgate::auth::{Authenticator, Role};
use sensorgate::config::Config;
use sensorgate::Daemon;
use serde_json::Value;

use crate::{connect_stream_with, recv_frame, stored_matching, Ws, SECRET};

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub config: Arc<Config>,
    pub dir: tempfile::TempDir,
}

/// A config for tests: loopback port 0, store in `dir`, limits generous
/// unless a test tightens them through `tweak`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::with_secret(SECRET);
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.storage.path = dir.join("store");
    c.limits.readings_per_sec = 1_000_000;
    c.limits.burst = 1_000_000;
    c.limits.handshakes_per_ip = 10_000;
    c
}

/// A test that ends without [`TestDaemon::stop`] drops the daemon with its
/// runtime; its writer thread then drains and checkpoints into the store's
/// directory after the test returned. Removing the directory under it fails
/// that checkpoint, and a failed sled's flushes hold sled 0.34's
/// process-wide lock, which stalls every other test's daemon in this binary.
/// So the directory is removed once the store is released (or after a
/// minute), on a thread of its own.
impl Drop for TestDaemon {
    fn drop(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        daemon.shutdown_token().cancel();
        let released = daemon.released();
        drop(daemon);
        self.dir.disable_cleanup(true);
        let path = self.dir.path().to_path_buf();
        leftover::add(&path);
        let _ = std::thread::Builder::new()
            .name("test-daemon-dir".into())
            .spawn(move || {
                let until = std::time::Instant::now() + Duration::from_secs(60);
                while !released.is_released() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // The last holder may still be dropping sled (its final flush).
                std::thread::sleep(Duration::from_millis(200));
                let _ = std::fs::remove_dir_all(&path);
                leftover::remove(&path);
            });
    }
}

/// Directories of dropped daemons not removed yet: whatever is left when the
/// test binary exits is removed then (the writers die with the process).
mod leftover {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};

    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static AT_EXIT: Once = Once::new();

    pub fn add(path: &Path) {
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain `extern "C" fn` with no arguments.
            unsafe { libc::atexit(remove_all) };
        });
        lock().push(path.to_path_buf());
    }

    pub fn remove(path: &Path) {
        lock().retain(|p| p != path);
    }

    fn lock() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
        DIRS.lock().unwrap_or_else(|e| e.into_inner())
    }

    extern "C" fn remove_all() {
        for path in lock().drain(..) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: Config) -> TestDaemon {
        // As the binary does, so memory measured in-process is the daemon's.
        sensorgate::allocator::fix_mmap_threshold();
        let config = Arc::new(config);
        let daemon = Daemon::start(config.clone()).await.expect("daemon starts");
        TestDaemon {
            daemon: Some(daemon),
            config,
            dir,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.daemon.as_ref().unwrap().local_addr()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn token(&self, role: Role, sub: &str) -> String {
        Authenticator::new(&self.config.auth.jwt_secret).mint(
            role,
            sub,
            Some(Duration::from_secs(3600)),
            None,
        )
    }

    /// Connects device `sub` and returns the socket and its welcome.
    pub async fn device(&self, sub: &str) -> (Ws, Value) {
        let mut ws = self
            .connect_ingest(&self.token(Role::Device, sub))
            .await
            .expect("device connects");
        let welcome = recv_frame(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    pub async fn connect_ingest(
        &self,
        token: &str,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        crate::ws::connect_ingest(&self.addr().to_string(), token).await
    }

    /// Stored readings via `GET /v1/readings` (all of them, following `next`).
    pub async fn stored(&self, topic: &str) -> Vec<Value> {
        stored_matching(&self.addr().to_string(), topic).await
    }

    /// The store's directory, to start another daemon on it; the daemon
    /// must have been stopped ([`TestDaemon::stop`]).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        assert!(
            self.daemon.is_none(),
            "stop the daemon before taking its directory"
        );
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    /// Stops the daemon and starts it again on the same port and store,
    /// so clients reconnect to the address they already have.
    pub async fn restart(&mut self) {
        let addr = self.addr();
        self.stop().await;
        let mut config = (*self.config).clone();
        config.server.listen = addr;
        self.config = Arc::new(config);
        let daemon = Daemon::start(self.config.clone())
            .await
            .expect("daemon restarts");
        self.daemon = Some(daemon);
    }

    /// `ws://host:port{path}` of this daemon.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// A JSON subscriber on `/v1/stream?{query}` with a subscriber token.
    pub async fn subscriber(&self, query: &str) -> Ws {
        let token = self.token(Role::Subscriber, "web");
        connect_stream_with(self.addr(), query, Some(&token), None, None)
            .await
            .expect("subscriber connects")
            .0
    }
}
