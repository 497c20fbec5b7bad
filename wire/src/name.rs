//! The name rule for device ids and sensors, and the size limits of a
//! reading's strings (SPEC §2).

/// Longest device id or sensor name (SPEC §2).
pub const MAX_NAME_LEN: usize = 64;
/// Longest string `value`, in bytes.
pub const MAX_STRING_VALUE_BYTES: usize = 256;
/// Longest `unit`, in bytes.
pub const MAX_UNIT_BYTES: usize = 16;

/// 1–64 characters of `[A-Za-z0-9_.:-]`: the rule for sensors and device ids.
/// It also keeps MQTT wildcards (`+`, `#`) and the level separator `/` out of
/// topics, so `<device>/<sensor>` always has exactly two literal levels.
pub fn is_valid_name(s: &str) -> bool {
    is_valid_name_bytes(s.as_bytes())
}

/// [`is_valid_name`] over bytes not yet known to be UTF-8 (a valid name is
/// ASCII, so it always is).
pub(crate) fn is_valid_name_bytes(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        assert!(is_valid_name("temp"));
        assert!(is_valid_name("a.b:c-d_e9"));
        assert!(is_valid_name(&"x".repeat(64)));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_name(""));
        for bad in ["a/b", "a+b", "a#", "a b", "é"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
