//! The rules a configuration must satisfy beyond its types (SPEC §10).
//!
//! Owns: single-value rules, each a `#[serde(deserialize_with = ...)]`
//! function on its field, so a bad value is reported under its key while the
//! section is read; and [`cross_check`], the rules that involve more than one
//! key or forbid zero, run once every section is read.
//! Never: reports a key twice. A key that already failed to read fell back
//! to its default, and [`cross_check`] skips it, so one typo yields one
//! message.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{Deserialize, Deserializer, Error as _};

use super::load::Problems;
use super::units::format_duration;
use super::{Config, MqttBroker};

/// Reads a `T`, then applies `rule` to it; a broken rule is the key's
/// problem.
fn checked<'de, D, T, U>(d: D, rule: impl FnOnce(T) -> Result<U, String>) -> Result<U, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    rule(T::deserialize(d)?).map_err(D::Error::custom)
}

/// `server.listen`.
pub(super) fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    checked(d, |s: String| {
        s.trim().parse().map_err(|_| {
            format!(
                "expected an IP address and port like \"0.0.0.0:8750\" or \"[::]:8750\", got {s:?}"
            )
        })
    })
}

/// A directory or file that must be named (`storage.path`).
pub(super) fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    checked(d, |s: String| {
        if s.trim().is_empty() {
            return Err("must not be empty".to_string());
        }
        Ok(PathBuf::from(s))
    })
}

/// Origins as browsers send them: `scheme://host[:port]`, no path. A
/// trailing slash would silently never match, so it is refused.
pub(super) fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked(d, |list: Vec<String>| {
        for origin in &list {
            let host = origin.split_once("://").map(|(_, rest)| rest);
            if !matches!(host, Some(h) if !h.is_empty() && !h.contains('/')) {
                return Err(format!(
                    "expected origins like \"https://dash.example.com\" (scheme and host, no path or trailing slash), got {origin:?}"
                ));
            }
        }
        Ok(list)
    })
}

/// `mqtt.url`: see [`parse_mqtt_url`].
pub(super) fn mqtt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, |url: Option<String>| match url {
        Some(url) => parse_mqtt_url(&url).map(|_| Some(url)),
        None => Ok(None),
    })
}

pub(super) fn qos<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    checked(d, |q: u8| match q {
        0 | 1 => Ok(q),
        q => Err(format!("must be 0 or 1, got {q}")),
    })
}

pub(super) fn topic_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |s: String| {
        if s.is_empty() || s.contains(['+', '#', '\0']) || s.ends_with('/') {
            return Err(format!(
                "expected a non-empty MQTT topic without wildcards (+, #) or a trailing '/', got {s:?}"
            ));
        }
        Ok(s)
    })
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A level name, or an `EnvFilter` directive list such as
/// `"info,sensorgate=debug"`. A bare word that is not a level is refused:
/// `EnvFilter` would read `"verbose"` as a target name and log almost nothing.
pub(super) fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |s: String| {
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
    })
}

/// Rules that involve more than one key or forbid zero. A key that already
/// failed to parse is skipped, so one typo yields one message.
pub(super) fn cross_check(problems: &mut Problems, c: &Config) {
    nonzero(problems, c);
    let l = &c.limits;
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
                format_duration(s.ping_interval),
                format_duration(s.idle_timeout)
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

/// Counts and durations where zero would stall or disable something.
fn nonzero(problems: &mut Problems, c: &Config) {
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
        None if tls => 8883,
        None => 1883,
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
