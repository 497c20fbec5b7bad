//! Loading and validating configuration (SPEC §8, §10).
//!
//! Owns: reading the TOML file, layering `SENSORGATE__SECTION__KEY`
//! environment overrides on top (through the `config` crate), and turning the
//! untyped result into a [`Config`] while collecting *every* problem, each
//! named by its full key (`limits.burst: ...`).
//! Hands on: a [`Config`] that has passed all checks, or a [`ConfigError`]
//! listing everything wrong, for `main` to print before exiting with code 2.
//! Never: touches the process environment in tests ([`ConfigSource`] carries
//! an injected environment instead), or prints a secret.
//!
//! Why not `#[derive(Deserialize)]` with `deny_unknown_fields`: serde stops at
//! the first error and its messages do not name the section, so the untyped
//! tree is walked here with a small typed extractor ([`Section`]).
//!
//! Environment values arrive as strings and are converted by that extractor
//! (`"100"` is a fine integer, `"true"` a fine bool). The `config` crate's own
//! `try_parsing` is deliberately off: it would turn a secret or client id such
//! as `"0123"` into the integer 123 before we could see it. An empty variable
//! (`SENSORGATE__AUTH__JWT_SECRET_FILE=`) unsets an optional key, so a
//! container can replace the shipped `jwt_secret_file` with an inline secret.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat, Source, Value, ValueKind};

use super::units::{parse_duration, parse_size};
use super::{
    default_client_id, Config, LogFormat, MqttBroker, Payload, SlowPolicy, SyncMode,
    DEFAULT_CONFIG_PATH,
};

/// Environment variables with this prefix (then `__SECTION__KEY`) override
/// the file.
const ENV_PREFIX: &str = "SENSORGATE";
const ENV_SEPARATOR: &str = "__";

/// Where configuration comes from. [`load`] uses the file and the real
/// process environment; tests build one with [`ConfigSource::inline`] and
/// [`ConfigSource::with_env`] so they never touch the process environment.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The TOML file. `None` means [`DEFAULT_CONFIG_PATH`], which may be
    /// absent (then defaults plus environment apply); a path given
    /// explicitly must exist.
    pub path: Option<PathBuf>,
    /// Inline TOML, used instead of reading `path` when set.
    pub toml: Option<String>,
    /// The environment to read `SENSORGATE__*` overrides from. `None` means
    /// the process environment; `Some` replaces it entirely.
    pub env: Option<HashMap<String, String>>,
}

impl ConfigSource {
    /// A file (or the default path) plus the process environment: what the
    /// daemon uses.
    pub fn file(path: Option<&Path>) -> ConfigSource {
        ConfigSource {
            path: path.map(Path::to_path_buf),
            toml: None,
            env: None,
        }
    }

    /// Inline TOML and an empty environment.
    pub fn inline(toml: impl Into<String>) -> ConfigSource {
        ConfigSource {
            path: None,
            toml: Some(toml.into()),
            env: Some(HashMap::new()),
        }
    }

    /// Adds one variable to the injected environment (which then replaces
    /// the process environment), e.g. `("SENSORGATE__LIMITS__BURST", "800")`.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> ConfigSource {
        self.env
            .get_or_insert_with(HashMap::new)
            .insert(name.into(), value.into());
        self
    }
}

/// One thing wrong with the configuration, named by its full key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `section.key`, or just `section` for a section-level problem.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why the configuration could not be loaded. Every variant means "exit 2".
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named explicitly (or present at the default path)
    /// could not be read.
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid TOML; nothing else was checked.
    #[error("configuration file {origin} is not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    /// The environment overrides could not be collected (e.g. non-UTF-8).
    #[error("cannot read SENSORGATE__* environment overrides: {0}")]
    Environment(String),
    /// Values are missing, unknown or out of range: all of them, one per line.
    #[error("invalid configuration:{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems of an [`ConfigError::Invalid`]; empty for the
    /// other variants.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// Loads the configuration from `path` (default [`DEFAULT_CONFIG_PATH`]) and
/// the process environment, and validates it.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_from(ConfigSource::file(path))
}

/// Loads and validates configuration from an explicit [`ConfigSource`].
pub fn load_from(source: ConfigSource) -> Result<Config, ConfigError> {
    let (text, origin) = read_toml(&source)?;
    let env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(source.env.map(|vars| vars.into_iter().collect()));
    let merged = config::Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(|merged| merged.collect())
        .map_err(|e| match e {
            config::ConfigError::FileParse { cause, .. } => ConfigError::Syntax {
                origin: origin.clone(),
                message: cause.to_string(),
            },
            other => ConfigError::Environment(other.to_string()),
        })?;
    from_tree(merged.into_iter().collect())
}

/// The TOML text and a name for it in error messages.
fn read_toml(source: &ConfigSource) -> Result<(String, String), ConfigError> {
    if let Some(text) = &source.toml {
        return Ok((text.clone(), "(inline)".to_string()));
    }
    let (path, explicit) = match &source.path {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((text, path.display().to_string())),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            Ok((String::new(), path.display().to_string()))
        }
        Err(error) => Err(ConfigError::Read { path, error }),
    }
}

/// Walks the merged tree section by section into a [`Config`].
fn from_tree(mut root: HashMap<String, Value>) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let mut c = Config::with_secret(String::new());

    let mut s = problems.section(&mut root, "server");
    s.set("listen", &mut c.server.listen, socket_addr);
    s.set_opt("tls_cert", &mut c.server.tls_cert, path);
    s.set_opt("tls_key", &mut c.server.tls_key, path);
    s.set("allowed_origins", &mut c.server.allowed_origins, origins);
    s.set("ping_interval", &mut c.server.ping_interval, duration);
    s.set("idle_timeout", &mut c.server.idle_timeout, duration);
    s.set("shutdown_timeout", &mut c.server.shutdown_timeout, duration);
    s.finish();

    let mut s = problems.section(&mut root, "auth");
    let jwt_secret = s.take("jwt_secret", secret);
    let jwt_secret_file = s.take_opt("jwt_secret_file", path);
    s.set(
        "public_subscribers",
        &mut c.auth.public_subscribers,
        boolean,
    );
    s.finish();
    resolve_secret(&mut problems, &mut c, jwt_secret, jwt_secret_file);

    let mut s = problems.section(&mut root, "limits");
    s.set("readings_per_sec", &mut c.limits.readings_per_sec, uint);
    s.set("burst", &mut c.limits.burst, uint);
    s.set("max_frame_bytes", &mut c.limits.max_frame_bytes, size);
    s.set(
        "max_readings_per_frame",
        &mut c.limits.max_readings_per_frame,
        uint,
    );
    s.set(
        "max_consecutive_errors",
        &mut c.limits.max_consecutive_errors,
        uint,
    );
    s.set("handshakes_per_ip", &mut c.limits.handshakes_per_ip, uint);
    s.finish();

    let mut s = problems.section(&mut root, "ingest");
    s.set("queue_capacity", &mut c.ingest.queue_capacity, uint);
    s.set("enqueue_timeout_ms", &mut c.ingest.enqueue_timeout, |v| {
        uint(v).map(Duration::from_millis)
    });
    s.finish();

    let mut s = problems.section(&mut root, "storage");
    s.set("path", &mut c.storage.path, path);
    s.set("sync", &mut c.storage.sync, |v| {
        choice(v, SyncMode::ALL, SyncMode::as_str)
    });
    s.set("flush_interval", &mut c.storage.flush_interval, duration);
    s.set("retention", &mut c.storage.retention, duration);
    s.set("max_bytes", &mut c.storage.max_bytes, size);
    s.set("min_free", &mut c.storage.min_free, size);
    s.finish();

    let mut s = problems.section(&mut root, "fanout");
    s.set("subscriber_queue", &mut c.fanout.subscriber_queue, uint);
    s.set("slow_policy", &mut c.fanout.slow_policy, |v| {
        choice(v, SlowPolicy::ALL, SlowPolicy::as_str)
    });
    s.finish();

    let mut s = problems.section(&mut root, "mqtt");
    s.set_opt("url", &mut c.mqtt.url, |v| {
        let url = string(v)?;
        parse_mqtt_url(&url).map(|_| url)
    });
    let mut client_id = None;
    s.set_opt("client_id", &mut client_id, string);
    s.set_opt("username", &mut c.mqtt.username, string);
    s.set_opt("password_file", &mut c.mqtt.password_file, path);
    s.set("topic_prefix", &mut c.mqtt.topic_prefix, topic_prefix);
    s.set("qos", &mut c.mqtt.qos, |v| match uint(v)? {
        q @ (0 | 1) => Ok(q),
        q => Err(format!("must be 0 or 1, got {q}")),
    });
    s.set("payload", &mut c.mqtt.payload, |v| {
        choice(v, Payload::ALL, Payload::as_str)
    });
    s.set("max_backlog", &mut c.mqtt.max_backlog, uint);
    s.set("max_backoff", &mut c.mqtt.max_backoff, duration);
    s.set("relay", &mut c.mqtt.relay, boolean);
    s.finish();
    // The default follows the *effective* listen port, so two instances on
    // one host get distinct client ids without configuring them.
    c.mqtt.client_id = client_id.unwrap_or_else(|| default_client_id(c.server.listen.port()));
    if let Some(file) = &c.mqtt.password_file {
        match std::fs::read_to_string(file) {
            Ok(text) => c.mqtt.password = Some(text.trim_end().to_string()),
            Err(e) => problems.push(
                "mqtt.password_file",
                format!("cannot read {}: {e}", file.display()),
            ),
        }
    }

    let mut s = problems.section(&mut root, "log");
    s.set("level", &mut c.log.level, log_level);
    s.set("format", &mut c.log.format, |v| {
        choice(v, LogFormat::ALL, LogFormat::as_str)
    });
    s.finish();

    let mut unknown: Vec<_> = root.into_iter().collect();
    unknown.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in unknown {
        let what = match value.kind {
            ValueKind::Table(_) => "unknown section",
            _ => "unknown key (every key belongs to a section, e.g. [limits])",
        };
        problems.push(
            key,
            format!("{what}; known sections: {}", SECTIONS.join(", ")),
        );
    }

    cross_check(&mut problems, &c);
    if problems.list.is_empty() {
        Ok(c)
    } else {
        Err(ConfigError::Invalid(problems.list))
    }
}

const SECTIONS: &[&str] = &[
    "server", "auth", "limits", "ingest", "storage", "fanout", "mqtt", "log",
];

/// Exactly one of `auth.jwt_secret` / `auth.jwt_secret_file`; the file is
/// read now (trailing whitespace trimmed), so nothing reads it later.
fn resolve_secret(
    problems: &mut Problems,
    c: &mut Config,
    secret: Field<String>,
    file: Field<PathBuf>,
) {
    let (secret, file) = match (secret, file) {
        (Field::Invalid, _) | (_, Field::Invalid) => return,
        (secret, file) => (secret.into_option(), file.into_option()),
    };
    match (secret, file) {
        // An empty inline secret next to a file is the environment unsetting
        // the inline one; the file wins.
        (Some(secret), Some(_)) if !secret.is_empty() => problems.push(
            "auth.jwt_secret",
            "set only one of auth.jwt_secret and auth.jwt_secret_file (both are set)",
        ),
        (_, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(text) if text.trim().is_empty() => problems.push(
                "auth.jwt_secret_file",
                format!("{} is empty", file.display()),
            ),
            Ok(text) => {
                c.auth.jwt_secret = text.trim_end().to_string();
                c.auth.jwt_secret_file = Some(file);
            }
            Err(e) => problems.push(
                "auth.jwt_secret_file",
                format!("cannot read {}: {e}", file.display()),
            ),
        },
        (Some(secret), None) if secret.trim().is_empty() => {
            problems.push("auth.jwt_secret", "must not be empty")
        }
        (Some(secret), None) => c.auth.jwt_secret = secret.trim_end().to_string(),
        (None, None) => problems.push(
            "auth.jwt_secret",
            "missing: set auth.jwt_secret or auth.jwt_secret_file",
        ),
    }
}

/// Rules that involve more than one key or forbid zero. A key that already
/// failed to parse is skipped, so one typo yields one message.
fn cross_check(problems: &mut Problems, c: &Config) {
    let l = &c.limits;
    let counts: [(&str, u64); 10] = [
        ("limits.readings_per_sec", l.readings_per_sec.into()),
        ("limits.burst", l.burst.into()),
        ("limits.max_frame_bytes", l.max_frame_bytes as u64),
        (
            "limits.max_readings_per_frame",
            l.max_readings_per_frame as u64,
        ),
        (
            "limits.max_consecutive_errors",
            l.max_consecutive_errors.into(),
        ),
        ("limits.handshakes_per_ip", l.handshakes_per_ip.into()),
        ("ingest.queue_capacity", c.ingest.queue_capacity as u64),
        ("fanout.subscriber_queue", c.fanout.subscriber_queue as u64),
        ("mqtt.max_backlog", c.mqtt.max_backlog),
        ("storage.max_bytes", c.storage.max_bytes),
    ];
    for (key, n) in counts {
        if n == 0 && problems.ok(key) {
            problems.push(key, "must be greater than 0");
        }
    }
    let durations = [
        ("server.ping_interval", c.server.ping_interval),
        ("server.idle_timeout", c.server.idle_timeout),
        ("storage.flush_interval", c.storage.flush_interval),
        ("storage.retention", c.storage.retention),
        ("mqtt.max_backoff", c.mqtt.max_backoff),
    ];
    for (key, d) in durations {
        if d.is_zero() && problems.ok(key) {
            problems.push(key, "must be greater than 0s");
        }
    }

    // SPEC §3: a batch passes only if the bucket holds all of its readings.
    if l.burst > 0
        && (l.burst as usize) < l.max_readings_per_frame
        && problems.ok("limits.burst")
        && problems.ok("limits.max_readings_per_frame")
    {
        problems.push(
            "limits.burst",
            format!(
                "must be at least limits.max_readings_per_frame ({}), got {}",
                l.max_readings_per_frame, l.burst
            ),
        );
    }

    // Pongs count as activity, so a quiet but healthy connection survives
    // only if it is pinged before it is considered idle.
    let s = &c.server;
    if !s.ping_interval.is_zero()
        && s.idle_timeout <= s.ping_interval
        && problems.ok("server.idle_timeout")
        && problems.ok("server.ping_interval")
    {
        problems.push(
            "server.idle_timeout",
            format!(
                "must be longer than server.ping_interval ({}), got {}",
                super::units::format_duration(s.ping_interval),
                super::units::format_duration(s.idle_timeout)
            ),
        );
    }

    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) if problems.ok("server.tls_key") => {
            problems.push("server.tls_key", "must be set when server.tls_cert is set")
        }
        (None, Some(_)) if problems.ok("server.tls_cert") => {
            problems.push("server.tls_cert", "must be set when server.tls_key is set")
        }
        _ => {}
    }
}

/// Collected problems, in the order found.
#[derive(Default)]
struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// No problem has been reported for `key` yet.
    fn ok(&self, key: &str) -> bool {
        !self.list.iter().any(|p| p.key == key)
    }

    /// Takes section `name` out of `root` (an absent section is empty).
    fn section<'p>(
        &'p mut self,
        root: &mut HashMap<String, Value>,
        name: &'static str,
    ) -> Section<'p> {
        let table = match root.remove(name).map(|v| v.kind) {
            None => HashMap::new(),
            Some(ValueKind::Table(table)) => table.into_iter().collect(),
            Some(other) => {
                self.push(
                    name,
                    format!("expected a section ([{name}]), got {}", describe(&other)),
                );
                HashMap::new()
            }
        };
        Section {
            name,
            table,
            known: Vec::new(),
            problems: self,
        }
    }
}

/// The outcome of reading one key.
enum Field<T> {
    Absent,
    Valid(T),
    /// Already reported.
    Invalid,
}

impl<T> Field<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Field::Valid(v) => Some(v),
            Field::Absent | Field::Invalid => None,
        }
    }
}

/// One section being read: each key is taken out as it is read, so whatever
/// is left at [`Section::finish`] is unknown.
struct Section<'p> {
    name: &'static str,
    table: HashMap<String, Value>,
    known: Vec<&'static str>,
    problems: &'p mut Problems,
}

impl Section<'_> {
    fn take<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(ValueKind) -> Result<T, String>,
    ) -> Field<T> {
        self.known.push(key);
        let Some(value) = self.table.remove(key) else {
            return Field::Absent;
        };
        match parse(value.kind) {
            Ok(v) => Field::Valid(v),
            Err(message) => {
                self.problems.push(format!("{}.{key}", self.name), message);
                Field::Invalid
            }
        }
    }

    /// Overwrites `target` (which holds the default) when the key is present
    /// and valid.
    fn set<T>(
        &mut self,
        key: &'static str,
        target: &mut T,
        parse: impl FnOnce(ValueKind) -> Result<T, String>,
    ) {
        if let Field::Valid(v) = self.take(key, parse) {
            *target = v;
        }
    }

    /// Like [`Section::take`] for an optional key: an empty string (how an
    /// environment variable unsets a key) reads as absent.
    fn take_opt<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(ValueKind) -> Result<T, String>,
    ) -> Field<T> {
        let field = self.take(key, |v| match v {
            ValueKind::String(s) if s.trim().is_empty() => Ok(None),
            v => parse(v).map(Some),
        });
        match field {
            Field::Valid(Some(v)) => Field::Valid(v),
            Field::Valid(None) | Field::Absent => Field::Absent,
            Field::Invalid => Field::Invalid,
        }
    }

    /// Like [`Section::set`] for an optional key; an empty string unsets it.
    fn set_opt<T>(
        &mut self,
        key: &'static str,
        target: &mut Option<T>,
        parse: impl FnOnce(ValueKind) -> Result<T, String>,
    ) {
        match self.take_opt(key, parse) {
            Field::Valid(v) => *target = Some(v),
            Field::Absent => *target = None,
            Field::Invalid => {}
        }
    }

    fn finish(self) {
        let mut unknown: Vec<_> = self.table.into_keys().collect();
        unknown.sort();
        for key in unknown {
            self.problems.push(
                format!("{}.{key}", self.name),
                format!("unknown key; [{}] has {}", self.name, self.known.join(", ")),
            );
        }
    }
}

/// How a value is shown in messages: strings quoted, the rest as TOML would.
fn describe(v: &ValueKind) -> String {
    match v {
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Table(_) => "a table".to_string(),
        ValueKind::Array(_) => "a list".to_string(),
        ValueKind::Nil => "nothing".to_string(),
        other => other.to_string(),
    }
}

fn string(v: ValueKind) -> Result<String, String> {
    match v {
        ValueKind::String(s) => Ok(s),
        other => Err(format!("expected a string, got {}", describe(&other))),
    }
}

/// Like [`string`], but a wrong value is not echoed: it may be the secret.
fn secret(v: ValueKind) -> Result<String, String> {
    match v {
        ValueKind::String(s) => Ok(s),
        _ => Err("expected a string (value not shown)".to_string()),
    }
}

/// A non-negative integer, from TOML or from an environment string.
fn uint<T: TryFrom<u64>>(v: ValueKind) -> Result<T, String> {
    let n: i128 = match &v {
        ValueKind::I64(n) => (*n).into(),
        ValueKind::U64(n) => (*n).into(),
        ValueKind::I128(n) => *n,
        ValueKind::U128(n) => i128::try_from(*n).unwrap_or(i128::MAX),
        ValueKind::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("expected an integer, got {}", describe(&v)))?,
        other => return Err(format!("expected an integer, got {}", describe(other))),
    };
    if n < 0 {
        return Err(format!("must not be negative, got {n}"));
    }
    u64::try_from(n)
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("too large, got {n}"))
}

fn boolean(v: ValueKind) -> Result<bool, String> {
    match &v {
        ValueKind::Boolean(b) => Ok(*b),
        ValueKind::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        ValueKind::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("expected true or false, got {}", describe(other))),
    }
}

fn duration(v: ValueKind) -> Result<Duration, String> {
    match v {
        ValueKind::String(s) => parse_duration(&s),
        other => Err(format!(
            "expected a duration string like \"20s\" or \"7d\", got {} (a bare number has no unit)",
            describe(&other)
        )),
    }
}

/// A size string (`"64KiB"`) or a plain number of bytes.
fn size<T: TryFrom<u64>>(v: ValueKind) -> Result<T, String> {
    let bytes = match v {
        ValueKind::String(s) => parse_size(&s)?,
        other => uint::<u64>(other)
            .map_err(|e| format!("{e} (expected a size like \"64KiB\" or a number of bytes)"))?,
    };
    T::try_from(bytes).map_err(|_| format!("too large, got {bytes} bytes"))
}

fn path(v: ValueKind) -> Result<PathBuf, String> {
    let s = string(v)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(PathBuf::from(s))
}

fn socket_addr(v: ValueKind) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.trim().parse().map_err(|_| {
        format!("expected an IP address and port like \"0.0.0.0:8750\" or \"[::]:8750\", got {s:?}")
    })
}

/// One of an enum's values, by its config-file name.
fn choice<T: Copy>(v: ValueKind, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    let s = string(v)?;
    all.iter()
        .copied()
        .find(|value| name(*value) == s.trim())
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|v| format!("{:?}", name(*v))).collect();
            format!("expected one of {}, got {s:?}", names.join(", "))
        })
}

/// A list of strings; from the environment, one comma-separated string.
fn string_list(v: ValueKind) -> Result<Vec<String>, String> {
    match v {
        ValueKind::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| string(item.kind).map_err(|e| format!("item {}: {e}", i + 1)))
            .collect(),
        ValueKind::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()),
        other => Err(format!(
            "expected a list of strings, got {}",
            describe(&other)
        )),
    }
}

/// Origins as browsers send them: `scheme://host[:port]`, no path. A
/// trailing slash would silently never match, so it is refused.
fn origins(v: ValueKind) -> Result<Vec<String>, String> {
    let list = string_list(v)?;
    for origin in &list {
        let host = origin.split_once("://").map(|(_, rest)| rest);
        if !matches!(host, Some(h) if !h.is_empty() && !h.contains('/')) {
            return Err(format!(
                "expected origins like \"https://dash.example.com\" (scheme and host, no path or trailing slash), got {origin:?}"
            ));
        }
    }
    Ok(list)
}

fn topic_prefix(v: ValueKind) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() || s.contains(['+', '#', '\0']) || s.ends_with('/') {
        return Err(format!(
            "expected a non-empty MQTT topic without wildcards (+, #) or a trailing '/', got {s:?}"
        ));
    }
    Ok(s)
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A level name, or an `EnvFilter` directive list such as
/// `"info,sensorgate=debug"`. A bare word that is not a level is refused:
/// `EnvFilter` would read `"verbose"` as a target name and log almost nothing.
fn log_level(v: ValueKind) -> Result<String, String> {
    let s = string(v)?;
    let s = s.trim();
    if LOG_LEVELS.contains(&s.to_ascii_lowercase().as_str()) {
        return Ok(s.to_ascii_lowercase());
    }
    let hint = format!(
        "expected one of {} or a filter like \"info,sensorgate=debug\", got {s:?}",
        LOG_LEVELS.join(", ")
    );
    if !s.contains(['=', ',']) {
        return Err(hint);
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{hint} ({e})"))
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (ports default to
/// 1883 and 8883). Credentials belong in `mqtt.username` and
/// `mqtt.password_file`, not in the URL, so they never reach a log line.
pub(crate) fn parse_mqtt_url(url: &str) -> Result<MqttBroker, String> {
    // A URL carrying credentials is not echoed: errors end up in logs.
    let shown = if url.contains(['@', '?']) {
        "a URL with credentials or options (not shown)".to_string()
    } else {
        format!("{url:?}")
    };
    let bad = |why: &str| {
        format!("{why}; expected mqtt://host[:port] or mqtts://host[:port], got {shown}")
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(bad("unsupported scheme"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(bad(
            "credentials in the URL are not allowed (use mqtt.username and mqtt.password_file)",
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(bad("a path or query is not allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("bad port")),
        },
    };
    Ok(MqttBroker {
        tls,
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SECRET: &str = "unit-test-secret-5f2c9a";

    fn inline(toml: &str) -> Result<Config, ConfigError> {
        load_from(ConfigSource::inline(toml))
    }

    fn with_secret(toml: &str) -> String {
        format!("[auth]\njwt_secret = \"{SECRET}\"\n{toml}")
    }

    /// The problems of a load that must fail, as `key: message` lines.
    fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
        let err = result.expect_err("configuration should be rejected");
        assert!(!err.problems().is_empty(), "unexpected error kind: {err}");
        err.problems().iter().map(ToString::to_string).collect()
    }

    fn has(problems: &[String], prefix: &str) -> bool {
        problems.iter().any(|p| p.starts_with(prefix))
    }

    fn temp_file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn manifest_file(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn defaults_are_those_of_with_secret() {
        let c = inline(&with_secret("")).unwrap();
        assert_eq!(c, Config::with_secret(SECRET));
    }

    #[test]
    fn env_override_wins_over_file() {
        let toml = with_secret("[limits]\nburst = 600\n[storage]\npath = \"/srv/sg\"\n");
        let c = load_from(
            ConfigSource::inline(toml)
                .with_env("SENSORGATE__LIMITS__BURST", "800")
                .with_env("SENSORGATE__STORAGE__PATH", "/tmp/x")
                .with_env("UNRELATED", "ignored")
                .with_env("SENSORGATE_SINGLE_UNDERSCORE", "ignored"),
        )
        .unwrap();
        assert_eq!(c.limits.burst, 800);
        assert_eq!(c.storage.path, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn env_strings_convert_to_every_type() {
        let c = load_from(
            ConfigSource::inline("")
                .with_env("SENSORGATE__AUTH__JWT_SECRET", "0123")
                .with_env("SENSORGATE__AUTH__PUBLIC_SUBSCRIBERS", "true")
                .with_env("SENSORGATE__LIMITS__MAX_FRAME_BYTES", "1MiB")
                .with_env("SENSORGATE__INGEST__ENQUEUE_TIMEOUT_MS", "250")
                .with_env("SENSORGATE__SERVER__LISTEN", "127.0.0.1:9000")
                .with_env(
                    "SENSORGATE__SERVER__ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                )
                .with_env("SENSORGATE__STORAGE__RETENTION", "30d")
                .with_env("SENSORGATE__FANOUT__SLOW_POLICY", "disconnect"),
        )
        .unwrap();
        // Not turned into the integer 123: try_parsing is off on purpose.
        assert_eq!(c.auth.jwt_secret, "0123");
        assert!(c.auth.public_subscribers);
        assert_eq!(c.limits.max_frame_bytes, 1 << 20);
        assert_eq!(c.ingest.enqueue_timeout, Duration::from_millis(250));
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(
            c.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.storage.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.fanout.slow_policy, SlowPolicy::Disconnect);
    }

    #[test]
    fn unknown_key_is_named() {
        let p = problems(inline(&with_secret("[limits]\nbursts = 5\n")));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(has(&p, "limits.bursts: unknown key"), "{p:?}");
        assert!(p[0].contains("burst"), "lists the known keys: {p:?}");
    }

    #[test]
    fn unknown_section_is_named() {
        let p = problems(inline(&with_secret("[limitz]\nburst = 5\n")));
        assert!(has(&p, "limitz: unknown section"), "{p:?}");
        let p = problems(inline(&format!("stray = 1\n{}", with_secret(""))));
        assert!(has(&p, "stray: unknown key"), "{p:?}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let src =
            ConfigSource::inline(with_secret("")).with_env("SENSORGATE__LIMITS__BRUST", "800");
        let p = problems(load_from(src));
        assert!(has(&p, "limits.brust: unknown key"), "{p:?}");
    }

    #[test]
    fn several_errors_are_reported_at_once() {
        let toml = "\
[server]
ping_interval = 20
[limits]
burst = \"lots\"
typo = 1
[storage]
sync = \"sometimes\"
max_bytes = \"10 gigs\"
[mqtt]
qos = 2
";
        let err = inline(toml).unwrap_err();
        let p: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        for key in [
            "server.ping_interval: expected a duration",
            "limits.burst: expected an integer",
            "limits.typo: unknown key",
            "storage.sync: expected one of \"batch\", \"interval\", got \"sometimes\"",
            "storage.max_bytes: unknown size unit",
            "mqtt.qos: must be 0 or 1, got 2",
            "auth.jwt_secret: missing: set auth.jwt_secret or auth.jwt_secret_file",
        ] {
            assert!(has(&p, key), "missing {key:?} in {p:?}");
        }
        // One line per problem, under a header.
        let text = err.to_string();
        assert!(text.starts_with("invalid configuration:\n  "), "{text}");
        assert_eq!(text.lines().count(), p.len() + 1, "{text}");
    }

    #[test]
    fn burst_below_max_readings_per_frame_is_rejected() {
        let p = problems(inline(&with_secret("[limits]\nburst = 10\n")));
        assert_eq!(
            p,
            ["limits.burst: must be at least limits.max_readings_per_frame (500), got 10"]
        );
        let ok = inline(&with_secret(
            "[limits]\nburst = 10\nmax_readings_per_frame = 10\n",
        ));
        assert!(ok.is_ok());
    }

    #[test]
    fn a_bad_value_is_not_reported_twice() {
        // burst fails to parse; the burst >= max_readings_per_frame check
        // must not then complain about the default it fell back to.
        let p = problems(inline(&with_secret(
            "[limits]\nburst = -1\nmax_readings_per_frame = 900\n",
        )));
        assert_eq!(p, ["limits.burst: must not be negative, got -1"]);
    }

    #[test]
    fn zero_counts_and_durations_are_rejected() {
        let p = problems(inline(&with_secret(
            "[limits]\nreadings_per_sec = 0\nhandshakes_per_ip = 0\n\
             [ingest]\nqueue_capacity = 0\nenqueue_timeout_ms = 0\n\
             [fanout]\nsubscriber_queue = 0\n[mqtt]\nmax_backlog = 0\n\
             [storage]\nflush_interval = \"0s\"\n",
        )));
        for key in [
            "limits.readings_per_sec",
            "limits.handshakes_per_ip",
            "ingest.queue_capacity",
            "fanout.subscriber_queue",
            "mqtt.max_backlog",
            "storage.flush_interval",
        ] {
            assert!(
                has(&p, &format!("{key}: must be greater than 0")),
                "{key}: {p:?}"
            );
        }
        // A zero enqueue timeout is meaningful: fail fast when full.
        assert!(!has(&p, "ingest.enqueue_timeout_ms"), "{p:?}");
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let p = problems(inline(&with_secret(
            "[server]\nping_interval = \"30s\"\nidle_timeout = \"30s\"\n",
        )));
        assert_eq!(
            p,
            ["server.idle_timeout: must be longer than server.ping_interval (30s), got 30s"]
        );
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let p = problems(inline(&with_secret("[server]\ntls_cert = \"/c.pem\"\n")));
        assert_eq!(
            p,
            ["server.tls_key: must be set when server.tls_cert is set"]
        );
        let c = inline(&with_secret(
            "[server]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
        ))
        .unwrap();
        assert_eq!(c.server.tls_key, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn sizes_accept_strings_and_integers() {
        let c = inline(&with_secret(
            "[limits]\nmax_frame_bytes = 1000\n[storage]\nmax_bytes = \"1MB\"\n",
        ))
        .unwrap();
        assert_eq!(c.limits.max_frame_bytes, 1000);
        assert_eq!(c.storage.max_bytes, 1_000_000);
        let p = problems(inline(&with_secret("[limits]\nmax_frame_bytes = 1.5\n")));
        assert!(
            has(&p, "limits.max_frame_bytes: expected an integer"),
            "{p:?}"
        );
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        let f = temp_file("s3cr3t-from-file \n\n");
        let toml = format!("[auth]\njwt_secret_file = {:?}\n", f.path());
        let c = inline(&toml).unwrap();
        assert_eq!(c.auth.jwt_secret, "s3cr3t-from-file");
        assert_eq!(c.auth.jwt_secret_file.as_deref(), Some(f.path()));
    }

    #[test]
    fn secret_problems_name_the_key() {
        let p = problems(inline(""));
        assert_eq!(
            p,
            ["auth.jwt_secret: missing: set auth.jwt_secret or auth.jwt_secret_file"]
        );

        let p = problems(inline("[auth]\njwt_secret = \"  \"\n"));
        assert_eq!(p, ["auth.jwt_secret: must not be empty"]);

        let p = problems(inline("[auth]\njwt_secret = 918273645\n"));
        assert_eq!(p, ["auth.jwt_secret: expected a string (value not shown)"]);

        let empty = temp_file(" \n");
        let p = problems(inline(&format!(
            "[auth]\njwt_secret_file = {:?}\n",
            empty.path()
        )));
        assert!(
            has(&p, "auth.jwt_secret_file: ") && p[0].ends_with("is empty"),
            "{p:?}"
        );

        let p = problems(inline(
            "[auth]\njwt_secret_file = \"/nonexistent/sensorgate/jwt.secret\"\n",
        ));
        assert!(
            has(
                &p,
                "auth.jwt_secret_file: cannot read /nonexistent/sensorgate/jwt.secret"
            ),
            "{p:?}"
        );

        let p = problems(inline(&format!(
            "[auth]\njwt_secret = \"{SECRET}\"\njwt_secret_file = \"/x\"\n"
        )));
        assert!(has(&p, "auth.jwt_secret: set only one of"), "{p:?}");
        assert!(!p[0].contains(SECRET), "{p:?}");
    }

    #[test]
    fn empty_env_value_unsets_the_secret_file() {
        let toml = "[auth]\njwt_secret_file = \"/nonexistent/jwt.secret\"\n";
        let c = load_from(
            ConfigSource::inline(toml)
                .with_env("SENSORGATE__AUTH__JWT_SECRET_FILE", "")
                .with_env("SENSORGATE__AUTH__JWT_SECRET", SECRET),
        )
        .unwrap();
        assert_eq!(c.auth.jwt_secret, SECRET);
        assert_eq!(c.auth.jwt_secret_file, None);
    }

    #[test]
    fn mqtt_settings_are_checked() {
        for bad in [
            "http://broker:1883",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://broker:0",
            "mqtt://broker:x",
            "mqtt://user:pw@broker",
            "mqtt://broker/path",
            "broker:1883",
        ] {
            let p = problems(inline(&with_secret(&format!("[mqtt]\nurl = {bad:?}\n"))));
            assert!(has(&p, "mqtt.url: "), "{bad}: {p:?}");
            assert!(!p[0].contains(":pw@"), "credentials echoed: {p:?}");
        }
        let p = problems(inline(&with_secret("[mqtt]\ntopic_prefix = \"a/#\"\n")));
        assert!(has(&p, "mqtt.topic_prefix: "), "{p:?}");

        let pw = temp_file("hunter2\n");
        let c = inline(&with_secret(&format!(
            "[server]\nlisten = \"127.0.0.1:9100\"\n\
             [mqtt]\nurl = \"mqtts://broker.example\"\nusername = \"sg\"\n\
             password_file = {:?}\nqos = 0\npayload = \"msgpack\"\n",
            pw.path()
        )))
        .unwrap();
        assert_eq!(c.mqtt.password.as_deref(), Some("hunter2"));
        assert_eq!(c.mqtt.client_id, default_client_id(9100));
        assert_eq!(c.mqtt.qos, 0);
        assert_eq!(c.mqtt.payload, Payload::Msgpack);
        let broker = c.mqtt.broker().unwrap();
        assert_eq!(
            (broker.tls, broker.host.as_str(), broker.port),
            (true, "broker.example", 8883)
        );

        let p = problems(inline(&with_secret(
            "[mqtt]\npassword_file = \"/nonexistent/mqtt.pw\"\n",
        )));
        assert!(
            has(&p, "mqtt.password_file: cannot read /nonexistent/mqtt.pw"),
            "{p:?}"
        );
    }

    #[test]
    fn mqtt_url_forms() {
        let b = parse_mqtt_url("mqtt://10.0.0.5:1884").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (false, "10.0.0.5", 1884));
        let b = parse_mqtt_url("mqtt://[::1]/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 1883));
    }

    #[test]
    fn log_level_accepts_levels_and_directives() {
        for ok in [
            "trace",
            "DEBUG",
            "info",
            "warn",
            "error",
            "info,sensorgate=debug",
        ] {
            assert!(
                inline(&with_secret(&format!("[log]\nlevel = {ok:?}\n"))).is_ok(),
                "{ok}"
            );
        }
        let p = problems(inline(&with_secret("[log]\nlevel = \"verbose\"\n")));
        assert!(has(&p, "log.level: expected one of"), "{p:?}");
        let p = problems(inline(&with_secret("[log]\nformat = \"xml\"\n")));
        assert!(
            has(&p, "log.format: expected one of \"text\", \"json\""),
            "{p:?}"
        );
    }

    #[test]
    fn a_section_that_is_not_a_table_is_named() {
        let p = problems(inline(&format!("limits = 5\n{}", with_secret(""))));
        assert!(has(&p, "limits: expected a section"), "{p:?}");
    }

    #[test]
    fn explicit_missing_file_names_the_path() {
        let err = load(Some(Path::new("/nonexistent/sensorgate.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/sensorgate.toml"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_the_file() {
        let f = temp_file("[server\nlisten = ");
        let src = ConfigSource {
            path: Some(f.path().to_path_buf()),
            toml: None,
            env: Some(HashMap::new()),
        };
        let err = load_from(src).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(
            err.to_string().contains(&f.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn redacted_rendering_never_contains_secrets() {
        let pw = temp_file("mqtt-password-77c1\n");
        let c = inline(&with_secret(&format!(
            "[mqtt]\nurl = \"mqtt://broker\"\npassword_file = {:?}\n",
            pw.path()
        )))
        .unwrap();
        let text = c.render_redacted();
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("mqtt-password-77c1"), "{text}");
        assert!(text.contains("jwt_secret = \"<redacted>\""), "{text}");
        assert!(!format!("{c:?}").contains(SECRET), "Debug leaks the secret");
        assert!(!format!("{c:?}").contains("mqtt-password-77c1"));
    }

    #[test]
    fn redacted_rendering_lists_every_key_and_loads_back() {
        let mut c = inline(&with_secret(
            "[server]\nallowed_origins = [\"https://a.example\"]\n\
             [mqtt]\nurl = \"mqtt://broker:1883\"\nrelay = true\n\
             [log]\nlevel = \"info,sensorgate=debug\"\n",
        ))
        .unwrap();
        let text = c.render_redacted();
        for key in [
            "listen",
            "tls_cert",
            "tls_key",
            "allowed_origins",
            "ping_interval",
            "idle_timeout",
            "shutdown_timeout",
            "jwt_secret",
            "jwt_secret_file",
            "public_subscribers",
            "readings_per_sec",
            "burst",
            "max_frame_bytes",
            "max_readings_per_frame",
            "max_consecutive_errors",
            "handshakes_per_ip",
            "queue_capacity",
            "enqueue_timeout_ms",
            "path",
            "sync",
            "flush_interval",
            "retention",
            "max_bytes",
            "min_free",
            "subscriber_queue",
            "slow_policy",
            "url",
            "client_id",
            "username",
            "password_file",
            "topic_prefix",
            "qos",
            "payload",
            "max_backlog",
            "max_backoff",
            "relay",
            "level",
            "format",
        ] {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} missing:\n{text}"
            );
        }
        let back = inline(&text).unwrap();
        c.auth.jwt_secret = "<redacted>".to_string();
        assert_eq!(back, c);
    }

    #[test]
    fn shipped_config_parses() {
        let secret = temp_file("installed-secret\n");
        let secret_path = secret.path().to_str().unwrap();
        let src = ConfigSource {
            path: Some(manifest_file("config/sensorgate.toml")),
            toml: None,
            env: Some(HashMap::new()),
        }
        .with_env("SENSORGATE__AUTH__JWT_SECRET_FILE", secret_path);
        let c = load_from(src).unwrap();
        let mut expected = Config::with_secret("installed-secret");
        expected.auth.jwt_secret_file = Some(secret.path().to_path_buf());
        assert_eq!(c, expected, "the shipped file must spell out the defaults");

        // Without the override it points at the installed secret file.
        let text = std::fs::read_to_string(manifest_file("config/sensorgate.toml")).unwrap();
        assert!(text.contains("jwt_secret_file = \"/etc/sensorgate/jwt.secret\""));
        assert!(text.contains("path = \"/var/lib/sensorgate\""));
    }

    #[test]
    fn dev_config_parses() {
        let src = ConfigSource {
            path: Some(manifest_file("config/dev.toml")),
            toml: None,
            env: Some(HashMap::new()),
        };
        let c = load_from(src).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8750".parse().unwrap());
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert!(!c.auth.jwt_secret.is_empty());
        assert_eq!(c.auth.jwt_secret_file, None);
    }
}
