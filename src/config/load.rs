//! Loading configuration (SPEC §8, §10).
//!
//! Owns: reading the TOML file, layering `SENSORGATE__SECTION__KEY`
//! environment overrides on top (through the `config` crate), reading each
//! section into its typed struct while collecting *every* problem, each named
//! by its full key (`limits.burst: ...`), and reading the files that secrets
//! come from.
//! Hands on: a [`Config`] that has passed all checks, or a [`ConfigError`]
//! listing everything wrong, for `main` to print before exiting with code 2.
//! Never: touches the process environment in tests ([`ConfigSource`] carries
//! an injected environment instead), or prints a secret.
//!
//! Each section is deserialized on its own (through [`de::section`]), so one
//! bad section cannot hide another; within a section serde stops at the first
//! bad value, so that key is dropped (it falls back to its default) and the
//! section read again until it reads cleanly. Unknown keys are collected on
//! the clean read. An empty environment variable
//! (`SENSORGATE__AUTH__JWT_SECRET_FILE=`) unsets an optional key, so a
//! container can replace the shipped `jwt_secret_file` with an inline secret.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Map, Source, Value, ValueKind};
use serde::de::DeserializeOwned;

use super::{check, de, AuthConfig, Config, MqttConfig, DEFAULT_CONFIG_PATH};

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
    from_tree(merged)
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

/// Reads every section of the merged tree into a [`Config`], then the
/// secret files, then the rules across keys.
fn from_tree(root: Map<String, Value>) -> Result<Config, ConfigError> {
    let mut r = Reader {
        root,
        sections: Vec::new(),
        problems: Problems::default(),
    };
    let mut c = Config {
        server: r.section("server"),
        auth: r.section("auth"),
        limits: r.section("limits"),
        ingest: r.section("ingest"),
        storage: r.section("storage"),
        fanout: r.section("fanout"),
        mqtt: r.section("mqtt"),
        log: r.section("log"),
    };
    let mut problems = r.finish();
    resolve_secret(&mut problems, &mut c.auth);
    read_mqtt_password(&mut problems, &mut c.mqtt);
    c.derive_client_id();
    check::cross_check(&mut problems, &c);
    if problems.list.is_empty() {
        Ok(c)
    } else {
        Err(ConfigError::Invalid(problems.list))
    }
}

/// Takes sections out of the merged tree one by one; whatever is left at
/// [`Reader::finish`] is unknown.
struct Reader {
    root: Map<String, Value>,
    /// The sections read so far, for the "unknown section" message.
    sections: Vec<&'static str>,
    problems: Problems,
}

impl Reader {
    /// Section `name` as `T`; an absent section, or a key that fails, keeps
    /// `T`'s defaults.
    fn section<T: DeserializeOwned + Default>(&mut self, name: &'static str) -> T {
        self.sections.push(name);
        let mut table = match self.root.remove(name).map(|v| v.kind) {
            None => return T::default(),
            Some(ValueKind::Table(table)) => table,
            Some(other) => {
                let got = de::describe(&other);
                self.problems
                    .push(name, format!("expected a section ([{name}]), got {got}"));
                return T::default();
            }
        };
        loop {
            let mut unknown = Vec::new();
            match de::section::<T>(&table, &mut unknown) {
                Ok(section) => {
                    self.unknown_keys::<T>(name, unknown);
                    return section;
                }
                Err(failure) => {
                    let key = failure.key.unwrap_or_default();
                    self.problems.push(qualified(name, &key), failure.message);
                    // Read the rest again without it; a failure no key can
                    // be blamed for would repeat forever, so stop there.
                    if table.remove(&key).is_none() {
                        return T::default();
                    }
                }
            }
        }
    }

    fn unknown_keys<T: DeserializeOwned>(&mut self, name: &str, mut unknown: Vec<String>) {
        unknown.sort();
        let known = de::field_names::<T>().join(", ");
        for key in unknown {
            self.problems.push(
                qualified(name, &key),
                format!("unknown key; [{name}] has {known}"),
            );
        }
    }

    /// Reports what is left of the tree, and hands on every problem so far.
    fn finish(mut self) -> Problems {
        let mut unknown: Vec<_> = std::mem::take(&mut self.root).into_iter().collect();
        unknown.sort_by(|a, b| a.0.cmp(&b.0));
        let known = self.sections.join(", ");
        for (key, value) in unknown {
            let what = match value.kind {
                ValueKind::Table(_) => "unknown section",
                _ => "unknown key (every key belongs to a section, e.g. [limits])",
            };
            self.problems
                .push(key, format!("{what}; known sections: {known}"));
        }
        self.problems
    }
}

/// `section.key`, or just `section` when there is no key to name.
fn qualified(section: &str, key: &str) -> String {
    if key.is_empty() {
        section.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// Exactly one of `auth.jwt_secret` / `auth.jwt_secret_file`; the file is
/// read now (trailing whitespace trimmed), so nothing reads it later. An
/// empty inline secret is unset (as an empty environment variable makes it).
fn resolve_secret(problems: &mut Problems, auth: &mut AuthConfig) {
    if !problems.ok("auth.jwt_secret") || !problems.ok("auth.jwt_secret_file") {
        return;
    }
    match auth.jwt_secret_file.clone() {
        Some(_) if !auth.jwt_secret.is_empty() => problems.push(
            "auth.jwt_secret",
            "set only one of auth.jwt_secret and auth.jwt_secret_file (both are set)",
        ),
        Some(file) => match std::fs::read_to_string(&file) {
            Ok(text) if text.trim().is_empty() => problems.push(
                "auth.jwt_secret_file",
                format!("{} is empty", file.display()),
            ),
            Ok(text) => auth.jwt_secret = text.trim_end().into(),
            Err(e) => problems.push(
                "auth.jwt_secret_file",
                format!("cannot read {}: {e}", file.display()),
            ),
        },
        None if auth.jwt_secret.is_empty() => problems.push(
            "auth.jwt_secret",
            "missing: set auth.jwt_secret or auth.jwt_secret_file",
        ),
        None if auth.jwt_secret.trim().is_empty() => {
            problems.push("auth.jwt_secret", "must not be empty")
        }
        None => auth.jwt_secret = auth.jwt_secret.trim_end().into(),
    }
}

/// `mqtt.password` from `mqtt.password_file` (trailing whitespace trimmed).
fn read_mqtt_password(problems: &mut Problems, mqtt: &mut MqttConfig) {
    let Some(file) = &mqtt.password_file else {
        return;
    };
    match std::fs::read_to_string(file) {
        Ok(text) => mqtt.password = Some(text.trim_end().into()),
        Err(e) => problems.push(
            "mqtt.password_file",
            format!("cannot read {}: {e}", file.display()),
        ),
    }
}

/// Collected problems, in the order found.
#[derive(Default)]
pub(super) struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// No problem has been reported for `key` yet.
    pub(super) fn ok(&self, key: &str) -> bool {
        !self.list.iter().any(|p| p.key == key)
    }
}
