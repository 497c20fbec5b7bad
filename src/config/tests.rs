//! The loader against SPEC §8 and §10: defaults, environment overrides, and
//! the exact problem messages operators see (they are the contract).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::check::parse_mqtt_url;
use super::de::field_names;
use super::*;

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
    let src = ConfigSource::inline(with_secret("")).with_env("SENSORGATE__LIMITS__BRUST", "800");
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
fn values_are_not_coerced_across_types() {
    // Only environment strings convert; a float is not rounded, a bool is
    // not a number, a number is not a string. In key order, every time.
    let p = problems(inline(&with_secret(
        "[mqtt]\nrelay = \"yes\"\nclient_id = 123\n\
         [limits]\nreadings_per_sec = true\nburst = 1.5\n",
    )));
    assert_eq!(
        p,
        [
            "limits.burst: expected an integer, got 1.5",
            "limits.readings_per_sec: expected an integer, got true",
            "mqtt.client_id: expected a string, got 123",
            "mqtt.relay: expected true or false, got \"yes\"",
        ]
    );
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
    // The keys come from the section structs, so a new key is covered here
    // without being listed.
    let sections = [
        ("server", field_names::<ServerConfig>()),
        ("auth", field_names::<AuthConfig>()),
        ("limits", field_names::<LimitsConfig>()),
        ("ingest", field_names::<IngestConfig>()),
        ("storage", field_names::<StorageConfig>()),
        ("fanout", field_names::<FanoutConfig>()),
        ("mqtt", field_names::<MqttConfig>()),
        ("log", field_names::<LogConfig>()),
    ];
    for (section, keys) in sections {
        let start = text
            .find(&format!("[{section}]\n"))
            .unwrap_or_else(|| panic!("[{section}] missing:\n{text}"));
        let body = &text[start..];
        let body = &body[..body[1..].find("\n[").map_or(body.len(), |n| n + 1)];
        assert!(!keys.is_empty(), "[{section}] has keys");
        for key in keys {
            assert!(
                body.contains(&format!("\n{key} = ")),
                "{section}.{key} missing:\n{text}"
            );
        }
    }
    let back = inline(&text).unwrap();
    c.auth.jwt_secret = "<redacted>".into();
    assert_eq!(back, c);
}

#[test]
fn rendering_of_a_secret_from_a_file_loads_back() {
    let f = temp_file("file-secret-9d1e\n");
    let c = inline(&format!("[auth]\njwt_secret_file = {:?}\n", f.path())).unwrap();
    let text = c.render_redacted();
    assert!(!text.contains("file-secret-9d1e"), "{text}");
    // Unset inline, so the file stays the one source when it loads back.
    assert!(text.contains("\njwt_secret = \"\"\n"), "{text}");
    assert_eq!(inline(&text).unwrap(), c);
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
