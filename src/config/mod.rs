//! Configuration: the typed settings every other module reads, and how they
//! are loaded.
//!
//! Owns: one `#[derive(Deserialize, Serialize)]` struct per TOML section,
//! whose `Default` impl is the one place its built-in defaults live (SPEC §10,
//! spelled out again, with a line of documentation per key, in
//! `config/sensorgate.toml`); loading a TOML file plus
//! `SENSORGATE__SECTION__KEY` environment overrides ([`load()`]); validation
//! that reports *every* problem at once, each naming its key (SPEC §8); and
//! the redacted rendering `check-config` prints.
//! Hands on: an immutable [`Config`], shared as `Arc<Config>`.
//! Never: reads the environment or files after start-up, or shows a secret
//! ([`Secret`] writes `<redacted>` for itself, in `Debug` and when
//! serialized).
//!
//! A new key is its field here (with its default in the section's
//! `Default`) and its documented line in `config/sensorgate.toml`: loading,
//! environment overrides, the unknown-key message and `check-config` all
//! follow from the derive.

mod check;
mod de;
mod load;
mod units;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use units::{byte_size, human_duration, millis};

pub use load::{load, load_from, ConfigError, ConfigSource, Problem};
pub use units::{format_duration, format_size, parse_duration, parse_size, Secret};

/// Default config file path (SPEC §8).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sensorgate/sensorgate.toml";

/// The whole daemon configuration, one struct per TOML section.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    #[serde(deserialize_with = "check::listen")]
    pub listen: SocketAddr,
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_cert: Option<PathBuf>,
    #[serde(serialize_with = "unset_as_empty")]
    pub tls_key: Option<PathBuf>,
    /// Empty means any origin. A request without `Origin` is always allowed.
    #[serde(deserialize_with = "check::origins")]
    pub allowed_origins: Vec<String>,
    #[serde(with = "human_duration")]
    pub ping_interval: Duration,
    #[serde(with = "human_duration")]
    pub idle_timeout: Duration,
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8750)),
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The secret has no default: the loader insists on one of the two keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// The HS256 secret, already read from `auth.jwt_secret_file` when that
    /// was the source (trailing whitespace trimmed).
    pub jwt_secret: Secret,
    /// Where the secret came from, for `check-config`'s redacted output.
    #[serde(serialize_with = "unset_as_empty")]
    pub jwt_secret_file: Option<PathBuf>,
    pub public_subscribers: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub readings_per_sec: u32,
    pub burst: u32,
    #[serde(with = "byte_size")]
    pub max_frame_bytes: usize,
    pub max_readings_per_frame: usize,
    pub max_consecutive_errors: u32,
    pub handshakes_per_ip: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            readings_per_sec: 100,
            burst: 500,
            max_frame_bytes: 64 * 1024,
            max_readings_per_frame: 500,
            max_consecutive_errors: 20,
            handshakes_per_ip: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    pub queue_capacity: usize,
    #[serde(rename = "enqueue_timeout_ms", with = "millis")]
    pub enqueue_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue_capacity: 4096,
            enqueue_timeout: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Each group commit is flushed before its acks go out.
    Batch,
    /// Flushed every `storage.flush_interval`; acks after that flush.
    Interval,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    #[serde(deserialize_with = "check::non_empty_path")]
    pub path: PathBuf,
    pub sync: SyncMode,
    #[serde(with = "human_duration")]
    pub flush_interval: Duration,
    #[serde(with = "human_duration")]
    pub retention: Duration,
    #[serde(with = "byte_size")]
    pub max_bytes: u64,
    /// Free space the filesystem of `storage.path` must keep: below it,
    /// batches are refused (`overloaded`) before sled is asked to write, so
    /// a full disk never reaches the store's own write path.
    #[serde(with = "byte_size")]
    pub min_free: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("/var/lib/sensorgate"),
            sync: SyncMode::Batch,
            flush_interval: Duration::from_millis(50),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 * 1024 * 1024 * 1024,
            min_free: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowPolicy {
    DropOldest,
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FanoutConfig {
    pub subscriber_queue: usize,
    pub slow_policy: SlowPolicy,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            subscriber_queue: 10_000,
            slow_policy: SlowPolicy::DropOldest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    Json,
    Msgpack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`; the bridge is off when unset.
    #[serde(
        deserialize_with = "check::mqtt_url",
        serialize_with = "unset_as_empty"
    )]
    pub url: Option<String>,
    /// Defaults to `sensorgate-<hostname>-<listen port>` (filled in by
    /// [`Config::derive_client_id`], as it depends on `server.listen`).
    pub client_id: String,
    #[serde(serialize_with = "unset_as_empty")]
    pub username: Option<String>,
    #[serde(serialize_with = "unset_as_empty")]
    pub password_file: Option<PathBuf>,
    /// Read from `password_file` at load time; not a key of its own.
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(deserialize_with = "check::topic_prefix")]
    pub topic_prefix: String,
    #[serde(deserialize_with = "check::qos")]
    pub qos: u8,
    pub payload: Payload,
    pub max_backlog: u64,
    #[serde(with = "human_duration")]
    pub max_backoff: Duration,
    pub relay: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            client_id: String::new(),
            username: None,
            password_file: None,
            password: None,
            topic_prefix: "sensorgate".to_string(),
            qos: 1,
            payload: Payload::Json,
            max_backlog: 1_000_000,
            max_backoff: Duration::from_secs(10),
            relay: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    #[serde(deserialize_with = "check::log_level")]
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// The built-in defaults of SPEC §10 with the given JWT secret. Tests and
    /// the loader start from the same section defaults, so defaults live in
    /// exactly one place.
    pub fn with_secret(jwt_secret: impl Into<String>) -> Config {
        let mut c = Config {
            server: ServerConfig::default(),
            auth: AuthConfig {
                jwt_secret: Secret::from(jwt_secret.into()),
                ..AuthConfig::default()
            },
            limits: LimitsConfig::default(),
            ingest: IngestConfig::default(),
            storage: StorageConfig::default(),
            fanout: FanoutConfig::default(),
            mqtt: MqttConfig::default(),
            log: LogConfig::default(),
        };
        c.derive_client_id();
        c
    }

    /// An unset `mqtt.client_id` follows the *effective* listen port, so two
    /// instances on one host get distinct client ids without configuring
    /// them.
    fn derive_client_id(&mut self) {
        if self.mqtt.client_id.trim().is_empty() {
            self.mqtt.client_id = default_client_id(self.server.listen.port());
        }
    }

    /// The effective configuration as TOML, every key of SPEC §10, with the
    /// JWT secret and the MQTT password left out or written as `<redacted>`:
    /// what `sensorgate check-config` prints. Unset optional keys are written
    /// as `""` (which the loader reads as unset), so the output loads back.
    pub fn render_redacted(&self) -> String {
        let mut shown = self.clone();
        if shown.auth.jwt_secret_file.is_some() {
            // The secret came from the file: `jwt_secret = ""` (unset) keeps
            // the output loadable, where `"<redacted>"` would be a second
            // source.
            shown.auth.jwt_secret = Secret::default();
        }
        let body = toml::to_string(&shown)
            .expect("every value fits TOML: the loader refuses integers above i64::MAX");
        format!(
            "# Effective sensorgate configuration; secrets are redacted.\n\
             # An empty string means the key is unset.\n\n{body}"
        )
    }
}

/// Writes an unset optional key as `""` rather than leaving it out, so
/// `check-config` lists every key; the loader reads `""` back as unset.
fn unset_as_empty<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => v.serialize(s),
        None => s.serialize_str(""),
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
            .and_then(|url| check::parse_mqtt_url(url).ok())
    }
}
