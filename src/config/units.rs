//! The value types the config file spells its own way, both ways.
//!
//! The config file writes `"20s"`, `"7d"`, `"64KiB"` (SPEC §8); the rest of the
//! daemon only ever sees `Duration` and byte counts. The `format_*` functions
//! are the inverse used by `check-config`, chosen so that their output parses
//! back to the same value. The serde adapters ([`human_duration`],
//! [`byte_size`], [`millis`]) put both directions on a field with one
//! `#[serde(with = ...)]`, so the fields keep their plain `Duration` / integer
//! types for the modules that read them. [`Secret`] is a string that never
//! shows itself: not in `Debug`, not when serialized.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Parses a duration such as `"20s"`, `"50ms"`, `"7d"` or `"1h 30m"`.
///
/// A bare number is rejected: `"20"` could mean seconds or milliseconds, and
/// guessing wrong by a factor of 1000 is worse than asking.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("expected a duration like \"20s\" or \"7d\", got an empty string".to_string());
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration like \"20s\" or \"7d\", got {s:?} ({e})"))
}

/// Units accepted by [`parse_size`], with their multipliers.
///
/// Case-sensitive, as written. `KB`/`MB`/`GB`/`TB` are decimal (1000-based,
/// as disk vendors and SI use them); `KiB`/`MiB`/`GiB`/`TiB` are binary
/// (1024-based). `"64KiB"` is 65536 bytes, `"64KB"` is 64000.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1000),
    ("MB", 1000 * 1000),
    ("GB", 1000 * 1000 * 1000),
    ("TB", 1000 * 1000 * 1000 * 1000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Parses a size such as `"64KiB"`, `"10GiB"`, `"1MB"`, `"512B"` or `"512"`
/// (plain bytes) into a byte count. Whitespace between number and unit is
/// allowed; fractions are not (`"1.5GiB"` is rejected: write `"1536MiB"`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!(
            "expected a size like \"64KiB\", \"10GiB\" or a number of bytes, got {s:?}"
        ));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, m)) => *m,
            None => {
                let names: Vec<&str> = SIZE_UNITS.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "unknown size unit {unit:?} in {s:?} (expected one of {}; units are case-sensitive)",
                    names.join(", ")
                ));
            }
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Formats a byte count in the largest unit that divides it exactly, binary
/// units first: 65536 -> `"64KiB"`, 1000000 -> `"1MB"`, 1500 -> `"1500B"`.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0B".to_string();
    }
    let exact = |binary: bool| {
        SIZE_UNITS
            .iter()
            .filter(|(name, _)| name.ends_with("iB") == binary)
            .filter(|(_, m)| bytes % m == 0)
            .max_by_key(|(_, m)| *m)
            .map(|(name, m)| format!("{}{name}", bytes / m))
    };
    exact(true)
        .or_else(|| exact(false))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// Formats a duration in the largest unit that divides it exactly:
/// 7 days -> `"7d"`, 20 s -> `"20s"`, 90 s -> `"90s"`, 50 ms -> `"50ms"`.
/// Unlike `humantime::format_duration` ("7days", "1m 30s") it stays one
/// compact token, and it parses back with [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    const UNITS: &[(&str, u128)] = &[
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    UNITS
        .iter()
        .find(|(_, n)| nanos % n == 0)
        .map(|(name, n)| format!("{}{name}", nanos / n))
        .unwrap_or_else(|| format!("{nanos}ns"))
}

/// `#[serde(with = "human_duration")]` on a `Duration`: written `"20s"`.
pub(super) mod human_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl DurationVisitor {
        fn bare_number<E: de::Error>(n: impl fmt::Display) -> E {
            E::custom(format!(
                "expected a duration string like \"20s\" or \"7d\", got {n} (a bare number has no unit)"
            ))
        }
    }

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string like \"20s\" or \"7d\"")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            Err(Self::bare_number(n))
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            Err(Self::bare_number(n))
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
            Err(Self::bare_number(n))
        }
    }
}

/// `#[serde(with = "byte_size")]` on a byte count: a size string
/// (`"64KiB"`) or a plain number of bytes; written as a size string.
pub(super) mod byte_size {
    use super::*;

    pub fn serialize<T, S>(bytes: &T, s: S) -> Result<S::Ok, S::Error>
    where
        T: Copy,
        u64: TryFrom<T>,
        S: Serializer,
    {
        s.serialize_str(&format_size(u64::try_from(*bytes).unwrap_or(u64::MAX)))
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: TryFrom<u64>,
        D: Deserializer<'de>,
    {
        let bytes = d.deserialize_any(SizeVisitor)?;
        T::try_from(bytes).map_err(|_| de::Error::custom(format!("too large, got {bytes} bytes")))
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size like \"64KiB\" or a number of bytes")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            parse_size(s).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n).map_err(|_| E::custom(format!("must not be negative, got {n}")))
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
            Err(E::custom(format!(
                "expected an integer, got {n} (a size is like \"64KiB\" or a whole number of bytes)"
            )))
        }
    }
}

/// `#[serde(with = "millis")]` on a `Duration` kept as a plain number of
/// milliseconds (`ingest.enqueue_timeout_ms`, named so in SPEC §10).
pub(super) mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What a [`Secret`] shows instead of itself.
pub(super) const REDACTED: &str = "<redacted>";

/// A secret string (the JWT secret, the MQTT password). Reads as a `&str`
/// where it is used; `Debug` and `Serialize` write [`REDACTED`] instead, so
/// neither a log line nor `check-config` can show it. An empty secret
/// serializes as `""`: "unset", which is not worth hiding.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl From<Secret> for String {
    fn from(s: Secret) -> String {
        s.0
    }
}

impl PartialEq<str> for Secret {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Only a string; a wrong value is not echoed, as it may be the secret.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d)
            .map(Secret)
            .map_err(|_| de::Error::custom("expected a string (value not shown)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_in_the_spec() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in ["", "20", "twenty seconds", "-5s", "5 parsecs"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("expected a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size(" 64 KiB "), Ok(65_536));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for bad in [
            "", "KiB", "64kib", "64kb", "1.5GiB", "-1", "64 K", "12XB", "1 0",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_size("64kib").unwrap_err().contains("case-sensitive"));
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formatted_sizes_parse_back() {
        for (bytes, text) in [
            (65_536, "64KiB"),
            (10 << 30, "10GiB"),
            (1_000_000, "1MB"),
            (1_500, "1500B"),
            (0, "0B"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes));
        }
    }

    #[test]
    fn formatted_durations_parse_back() {
        for (d, text) in [
            (Duration::from_secs(7 * 86_400), "7d"),
            (Duration::from_secs(20), "20s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(50), "50ms"),
            (Duration::from_micros(1_500), "1500us"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }
}
