//! Configuration: the typed settings every other module reads, and how they
//! are loaded.
//!
//! Owns: the one place where defaults live ([`Config::with_secret`], mirrored in
//! `config/sensorgate.toml`), loading a TOML file plus `SENSORGATE__SECTION__KEY`
//! environment overrides through the `config` crate, and validation that
//! reports *every* problem at once, each naming its key (SPEC §8, §10).
//! Hands on: an immutable [`Config`], shared as `Arc<Config>`.
//! Never: reads the environment or files after start-up.

mod load;
mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use load::{load, load_from, ConfigError, ConfigSource, Problem};
pub use units::{format_duration, format_size, parse_duration, parse_size};

/// Default config file path (SPEC §8).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sensorgate/sensorgate.toml";

/// The whole daemon configuration, one struct per TOML section.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub ingest: IngestConfig,
    pub storage: StorageConfig,
    pub fanout: FanoutConfig,
    pub mqtt: MqttConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Empty means any origin. A request without `Origin` is always allowed.
    pub allowed_origins: Vec<String>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// `Debug` is written by hand below so that the secret never reaches a log.
#[derive(Clone, PartialEq)]
pub struct AuthConfig {
    /// The HS256 secret, already read from `auth.jwt_secret_file` when that
    /// was the source (trailing whitespace trimmed).
    pub jwt_secret: String,
    /// Where the secret came from, for `check-config`'s redacted output.
    pub jwt_secret_file: Option<PathBuf>,
    pub public_subscribers: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub readings_per_sec: u32,
    pub burst: u32,
    pub max_frame_bytes: usize,
    pub max_readings_per_frame: usize,
    pub max_consecutive_errors: u32,
    pub handshakes_per_ip: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    pub queue_capacity: usize,
    pub enqueue_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Each group commit is flushed before its acks go out.
    Batch,
    /// Flushed every `storage.flush_interval`; acks after that flush.
    Interval,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    pub flush_interval: Duration,
    pub retention: Duration,
    pub max_bytes: u64,
    /// Free space the filesystem of `storage.path` must keep: below it,
    /// batches are refused (`overloaded`) before sled is asked to write, so
    /// a full disk never reaches the store's own write path.
    pub min_free: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    DropOldest,
    Disconnect,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FanoutConfig {
    pub subscriber_queue: usize,
    pub slow_policy: SlowPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Json,
    Msgpack,
}

/// `Debug` is written by hand below so that the password never reaches a log.
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`; the bridge is off when unset.
    pub url: Option<String>,
    /// Defaults to `sensorgate-<hostname>-<listen port>`.
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Read from `password_file` at load time.
    pub password: Option<String>,
    pub topic_prefix: String,
    pub qos: u8,
    pub payload: Payload,
    pub max_backlog: u64,
    pub max_backoff: Duration,
    pub relay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Config {
    /// The built-in defaults of SPEC §10 with the given JWT secret. Tests and
    /// the loader start from here, so defaults live in exactly one place.
    pub fn with_secret(jwt_secret: impl Into<String>) -> Config {
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 8750)),
                tls_cert: None,
                tls_key: None,
                allowed_origins: Vec::new(),
                ping_interval: Duration::from_secs(20),
                idle_timeout: Duration::from_secs(60),
                shutdown_timeout: Duration::from_secs(10),
            },
            auth: AuthConfig {
                jwt_secret: jwt_secret.into(),
                jwt_secret_file: None,
                public_subscribers: false,
            },
            limits: LimitsConfig {
                readings_per_sec: 100,
                burst: 500,
                max_frame_bytes: 64 * 1024,
                max_readings_per_frame: 500,
                max_consecutive_errors: 20,
                handshakes_per_ip: 100,
            },
            ingest: IngestConfig {
                queue_capacity: 4096,
                enqueue_timeout: Duration::from_millis(100),
            },
            storage: StorageConfig {
                path: PathBuf::from("/var/lib/sensorgate"),
                sync: SyncMode::Batch,
                flush_interval: Duration::from_millis(50),
                retention: Duration::from_secs(7 * 24 * 3600),
                max_bytes: 10 * 1024 * 1024 * 1024,
                min_free: 64 * 1024 * 1024,
            },
            fanout: FanoutConfig {
                subscriber_queue: 10_000,
                slow_policy: SlowPolicy::DropOldest,
            },
            mqtt: MqttConfig {
                url: None,
                client_id: default_client_id(8750),
                username: None,
                password_file: None,
                password: None,
                topic_prefix: "sensorgate".to_string(),
                qos: 1,
                payload: Payload::Json,
                max_backlog: 1_000_000,
                max_backoff: Duration::from_secs(10),
                relay: false,
            },
            log: LogConfig {
                level: "info".to_string(),
                format: LogFormat::Text,
            },
        }
    }
}

/// `sensorgate-<hostname>-<listen port>` (SPEC §10).
pub fn default_client_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("sensorgate-{host}-{port}")
}

/// The TOML spelling of each enum value, shared by the loader and
/// [`Config::render_redacted`] so the two cannot drift apart.
macro_rules! keywords {
    ($($ty:ident { $($variant:ident => $name:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// Every value, in the order the config file documents them.
            pub(crate) const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The value as written in the config file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }
    )+};
}

keywords! {
    SyncMode { Batch => "batch", Interval => "interval" }
    SlowPolicy { DropOldest => "drop_oldest", Disconnect => "disconnect" }
    Payload { Json => "json", Msgpack => "msgpack" }
    LogFormat { Text => "text", Json => "json" }
}

/// `mqtt.url` taken apart; the loader has already checked that it parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttBroker {
    /// `mqtts://`: connect with TLS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The URL's port, or 1883 (`mqtt://`) / 8883 (`mqtts://`).
    pub port: u16,
}

impl MqttConfig {
    /// The broker to connect to, or `None` when the bridge is off.
    pub fn broker(&self) -> Option<MqttBroker> {
        // `load` validated the URL; a hand-built config with a bad one is
        // treated as "bridge off" rather than a panic.
        self.url
            .as_deref()
            .and_then(|url| load::parse_mqtt_url(url).ok())
    }
}

const REDACTED: &str = "<redacted>";

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &REDACTED)
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field("public_subscribers", &self.public_subscribers)
            .finish()
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("topic_prefix", &self.topic_prefix)
            .field("qos", &self.qos)
            .field("payload", &self.payload)
            .field("max_backlog", &self.max_backlog)
            .field("max_backoff", &self.max_backoff)
            .field("relay", &self.relay)
            .finish()
    }
}

impl Config {
    /// The effective configuration as TOML, every key of SPEC §10, with the
    /// JWT secret and the MQTT password replaced by `<redacted>`: what
    /// `sensorgate check-config` prints. Unset optional keys are written as
    /// `""` (which the loader reads as unset), so the output loads back.
    pub fn render_redacted(&self) -> String {
        let mut t = TomlWriter::default();
        t.comment("Effective sensorgate configuration; secrets are redacted.");
        t.comment("An empty string means the key is unset.");

        let s = &self.server;
        t.section("server");
        t.string("listen", &s.listen.to_string());
        t.opt_path("tls_cert", s.tls_cert.as_deref());
        t.opt_path("tls_key", s.tls_key.as_deref());
        let origins: Vec<String> = s.allowed_origins.iter().map(|o| quote(o)).collect();
        t.raw("allowed_origins", format!("[{}]", origins.join(", ")));
        t.duration("ping_interval", s.ping_interval);
        t.duration("idle_timeout", s.idle_timeout);
        t.duration("shutdown_timeout", s.shutdown_timeout);

        let a = &self.auth;
        t.section("auth");
        match &a.jwt_secret_file {
            Some(file) => {
                t.comment(&format!(
                    "jwt_secret = {}  (read from jwt_secret_file)",
                    quote(REDACTED)
                ));
                t.opt_path("jwt_secret_file", Some(file));
            }
            None => {
                t.string("jwt_secret", REDACTED);
                t.opt_path("jwt_secret_file", None);
            }
        }
        t.raw("public_subscribers", a.public_subscribers.to_string());

        let l = &self.limits;
        t.section("limits");
        t.raw("readings_per_sec", l.readings_per_sec.to_string());
        t.raw("burst", l.burst.to_string());
        t.string("max_frame_bytes", &format_size(l.max_frame_bytes as u64));
        t.raw(
            "max_readings_per_frame",
            l.max_readings_per_frame.to_string(),
        );
        t.raw(
            "max_consecutive_errors",
            l.max_consecutive_errors.to_string(),
        );
        t.raw("handshakes_per_ip", l.handshakes_per_ip.to_string());

        t.section("ingest");
        t.raw("queue_capacity", self.ingest.queue_capacity.to_string());
        t.raw(
            "enqueue_timeout_ms",
            self.ingest.enqueue_timeout.as_millis().to_string(),
        );

        let st = &self.storage;
        t.section("storage");
        t.opt_path("path", Some(&st.path));
        t.string("sync", st.sync.as_str());
        t.duration("flush_interval", st.flush_interval);
        t.duration("retention", st.retention);
        t.string("max_bytes", &format_size(st.max_bytes));
        t.string("min_free", &format_size(st.min_free));

        t.section("fanout");
        t.raw("subscriber_queue", self.fanout.subscriber_queue.to_string());
        t.string("slow_policy", self.fanout.slow_policy.as_str());

        let m = &self.mqtt;
        t.section("mqtt");
        t.opt_string("url", m.url.as_deref());
        t.string("client_id", &m.client_id);
        t.opt_string("username", m.username.as_deref());
        t.opt_path("password_file", m.password_file.as_deref());
        if m.password.is_some() {
            t.comment(&format!(
                "password = {}  (read from password_file)",
                quote(REDACTED)
            ));
        }
        t.string("topic_prefix", &m.topic_prefix);
        t.raw("qos", m.qos.to_string());
        t.string("payload", m.payload.as_str());
        t.raw("max_backlog", m.max_backlog.to_string());
        t.duration("max_backoff", m.max_backoff);
        t.raw("relay", m.relay.to_string());

        t.section("log");
        t.string("level", &self.log.level);
        t.string("format", self.log.format.as_str());
        t.0
    }
}

/// Just enough of a TOML writer for [`Config::render_redacted`].
#[derive(Default)]
struct TomlWriter(String);

impl TomlWriter {
    fn section(&mut self, name: &str) {
        self.0.push_str(&format!("\n[{name}]\n"));
    }

    fn comment(&mut self, text: &str) {
        self.0.push_str(&format!("# {text}\n"));
    }

    fn raw(&mut self, key: &str, value: String) {
        self.0.push_str(&format!("{key} = {value}\n"));
    }

    fn string(&mut self, key: &str, value: &str) {
        self.raw(key, quote(value));
    }

    fn duration(&mut self, key: &str, value: Duration) {
        self.string(key, &format_duration(value));
    }

    fn opt_string(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(v) => self.string(key, v),
            None => self.raw(key, "\"\"  # unset".to_string()),
        }
    }

    fn opt_path(&mut self, key: &str, value: Option<&Path>) {
        let value = value.map(|p| p.to_string_lossy());
        self.opt_string(key, value.as_deref());
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
