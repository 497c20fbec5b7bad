//! Decoding and validating a device batch (SPEC §2, §3).
//!
//! A batch is decoded into borrowed MessagePack values first and then checked
//! field by field, so every rejection can say exactly what was wrong
//! (`readings[3].value: float must be finite`) and nothing is half-accepted:
//! either the whole [`Batch`] comes back or a [`FrameError`] does.
//!
//! Frames in the usual shape take a faster path first ([`fast`]) that
//! accepts only what this checked decoder accepts, with the same result;
//! everything else, every rejection included, is decided here.

use std::sync::Arc;

use rmpv::ValueRef;

mod fast;

use crate::{is_valid_name, ErrorCode, Value, MAX_STRING_VALUE_BYTES, MAX_UNIT_BYTES};

/// Nesting allowed while decoding a frame. A batch needs three levels
/// (map → array → map); unknown keys may carry a little more, but a frame of
/// ten thousand nested arrays must not cost a deep recursion.
const MAX_DEPTH: usize = 16;

/// The largest `seq` accepted: 2^63 - 1. Above it a device could never send
/// a next seq (`last_seq + 1` would wrap), so it is `invalid` instead of
/// stored (docs/protocol.md).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A validated batch from a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub seq: Option<u64>,
    pub readings: Vec<ReadingIn>,
}

/// A validated reading as a device sent it (no id, device or received time
/// yet: the server adds those).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingIn {
    pub sensor: Arc<str>,
    pub ts: i64,
    pub value: Value,
    pub unit: Option<Arc<str>>,
}

/// The sensor names and units one connection has sent, so that each
/// reading of a batch shares its name with every earlier reading of that
/// sensor instead of owning a copy. A device has a handful of sensors;
/// past [`Names::MAX`] distinct strings new ones are simply not kept, so a
/// connection's memory stays bounded whatever it sends.
#[derive(Debug, Default)]
pub struct Names {
    known: Vec<Arc<str>>,
    /// Where the last string found (or the newest one kept) is. A device
    /// sends its readings' names and units in the same order batch after
    /// batch, and they were kept in the order first seen, so the next one
    /// asked for is most often the one kept after it: looking there first
    /// spares comparing against the others. At the flood, decoding batches
    /// was a tenth of the daemon's CPU and these look-ups a third of that
    /// (BENCHMARKS.md, "A lighter load generator, and where the flood's
    /// time goes now").
    last: usize,
}

impl Names {
    /// Distinct strings kept per connection.
    pub const MAX: usize = 32;

    /// The string whose bytes are `b`: the kept one when there is one;
    /// `None` when `b` is not UTF-8 (only a string not kept yet is checked).
    pub fn get_utf8(&mut self, b: &[u8]) -> Option<Arc<str>> {
        let next = match self.last + 1 {
            n if n < self.known.len() => n,
            _ => 0, // after the last one kept, a batch starts over
        };
        let found = match self.known.get(next) {
            Some(k) if k.as_bytes() == b => Some(next),
            _ => self.known.iter().position(|k| k.as_bytes() == b),
        };
        if let Some(i) = found {
            self.last = i;
            return Some(self.known[i].clone());
        }
        let new = Arc::<str>::from(std::str::from_utf8(b).ok()?);
        if self.known.len() < Self::MAX {
            self.last = self.known.len();
            self.known.push(new.clone());
        }
        Some(new)
    }
}

/// Why a frame was rejected, with the SPEC error code to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct FrameError {
    /// The batch's `seq`, when it could be read, so the device can match
    /// the rejection to what it sent.
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub detail: String,
}

impl FrameError {
    fn invalid(seq: Option<u64>, detail: impl Into<String>) -> Self {
        FrameError {
            seq,
            code: ErrorCode::Invalid,
            detail: detail.into(),
        }
    }
}

/// Decodes one binary frame into a [`Batch`], enforcing every field rule and
/// `max_readings` (the frame's byte size is enforced by the socket layer).
pub fn decode_batch(frame: &[u8], max_readings: usize) -> Result<Batch, FrameError> {
    decode_batch_with(frame, max_readings, &mut Names::default())
}

/// [`decode_batch`] for a connection that decodes many batches: sensor
/// names and units already in `names` are shared, not allocated again.
pub fn decode_batch_with(
    frame: &[u8],
    max_readings: usize,
    names: &mut Names,
) -> Result<Batch, FrameError> {
    match fast::decode(frame, max_readings, names) {
        Some(batch) => Ok(batch),
        None => decode_checked(frame, max_readings),
    }
}

/// [`decode_batch`] without the fast path: decodes the whole frame into
/// borrowed values, then checks it field by field.
fn decode_checked(frame: &[u8], max_readings: usize) -> Result<Batch, FrameError> {
    let mut rd = frame;
    let root = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| FrameError::invalid(peek_seq(frame), format!("not valid MessagePack: {e}")))?;
    if !rd.is_empty() {
        return Err(FrameError::invalid(
            None,
            format!("{} trailing bytes after the MessagePack value", rd.len()),
        ));
    }
    let ValueRef::Map(entries) = root else {
        return Err(FrameError::invalid(
            None,
            format!("frame must be a MessagePack map, got {}", kind_of(&root)),
        ));
    };

    // `seq` first, so later errors can carry it.
    let seq = match field(&entries, "seq") {
        None | Some(ValueRef::Nil) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| FrameError::invalid(None, "seq must be a non-negative integer"))?,
        ),
    };
    if let Some(big) = seq.filter(|s| *s > MAX_SEQ) {
        return Err(FrameError::invalid(
            seq,
            format!("seq {big} is too large: at most 2^63 - 1 ({MAX_SEQ})"),
        ));
    }
    let readings = match field(&entries, "readings") {
        None => return Err(FrameError::invalid(seq, "missing field readings")),
        Some(ValueRef::Array(items)) => items,
        Some(other) => {
            return Err(FrameError::invalid(
                seq,
                format!("readings must be an array, got {}", kind_of(other)),
            ))
        }
    };
    if readings.is_empty() {
        return Err(FrameError::invalid(seq, "readings is empty"));
    }
    if readings.len() > max_readings {
        return Err(FrameError::invalid(
            seq,
            format!(
                "{} readings in one frame, at most {max_readings} allowed",
                readings.len()
            ),
        ));
    }
    let readings = readings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            decode_reading(r).map_err(|d| FrameError::invalid(seq, format!("readings[{i}].{d}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch { seq, readings })
}

/// The `seq` of a frame that does not decode as a whole (a value nested
/// too deeply, say), read from the map's entries up to the first one that
/// does not decode, so the rejection can still name it (SPEC §3).
fn peek_seq(frame: &[u8]) -> Option<u64> {
    let mut rd = frame;
    let entries = rmp::decode::read_map_len(&mut rd).ok()?;
    for _ in 0..entries {
        let key = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH).ok()?;
        let value = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH).ok()?;
        if matches!(&key, ValueRef::String(k) if k.as_str() == Some("seq")) {
            return value.as_u64();
        }
    }
    None
}

fn decode_reading(v: &ValueRef<'_>) -> Result<ReadingIn, String> {
    let ValueRef::Map(entries) = v else {
        return Err(format!(": must be a map, got {}", kind_of(v)));
    };
    let sensor = match field(entries, "sensor") {
        None => return Err("sensor: missing".into()),
        Some(ValueRef::String(s)) => s
            .as_str()
            .ok_or_else(|| "sensor: not valid UTF-8".to_string())?,
        Some(other) => return Err(format!("sensor: must be a string, got {}", kind_of(other))),
    };
    if !is_valid_name(sensor) {
        return Err(format!(
            "sensor: {:?} must be 1-64 characters of [A-Za-z0-9_.:-]",
            truncate(sensor)
        ));
    }
    let ts = match field(entries, "ts") {
        None => return Err("ts: missing".into()),
        Some(ValueRef::Integer(i)) => i.as_i64().ok_or_else(|| "ts: out of range".to_string())?,
        Some(_) => return Err("ts: must be an integer (Unix milliseconds)".to_string()),
    };
    let value = match field(entries, "value") {
        None => return Err("value: missing".into()),
        Some(v) => decode_value(v).map_err(|d| format!("value: {d}"))?,
    };
    let unit = match field(entries, "unit") {
        None | Some(ValueRef::Nil) => None,
        Some(ValueRef::String(s)) => {
            let s = s
                .as_str()
                .ok_or_else(|| "unit: not valid UTF-8".to_string())?;
            if s.len() > MAX_UNIT_BYTES {
                return Err(format!(
                    "unit: {} bytes, at most {MAX_UNIT_BYTES} allowed",
                    s.len()
                ));
            }
            Some(Arc::from(s))
        }
        Some(other) => return Err(format!("unit: must be a string, got {}", kind_of(other))),
    };
    Ok(ReadingIn {
        sensor: Arc::from(sensor),
        ts,
        value,
        unit,
    })
}

fn decode_value(v: &ValueRef<'_>) -> Result<Value, String> {
    match v {
        ValueRef::Boolean(b) => Ok(Value::Bool(*b)),
        ValueRef::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => Ok(Value::Int(n)),
            (None, Some(n)) => Ok(Value::UInt(n)),
            _ => Err("integer out of range".into()),
        },
        ValueRef::F32(f) => finite(f64::from(*f)),
        ValueRef::F64(f) => finite(*f),
        ValueRef::String(s) => {
            let s = s.as_str().ok_or_else(|| "not valid UTF-8".to_string())?;
            if s.len() > MAX_STRING_VALUE_BYTES {
                return Err(format!(
                    "string of {} bytes, at most {MAX_STRING_VALUE_BYTES} allowed",
                    s.len()
                ));
            }
            Ok(Value::Str(s.to_string()))
        }
        other => Err(format!(
            "must be a float, integer, bool or string, got {}",
            kind_of(other)
        )),
    }
}

fn finite(f: f64) -> Result<Value, String> {
    if f.is_finite() {
        Ok(Value::Float(f))
    } else {
        Err(format!("float must be finite, got {f}"))
    }
}

/// The value of the string key `name` in a map; later duplicates lose.
fn field<'a, 'b>(
    entries: &'b [(ValueRef<'a>, ValueRef<'a>)],
    name: &str,
) -> Option<&'b ValueRef<'a>> {
    entries
        .iter()
        .find(|(k, _)| matches!(k, ValueRef::String(s) if s.as_bytes() == name.as_bytes()))
        .map(|(_, v)| v)
}

fn kind_of(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Nil => "nil",
        ValueRef::Boolean(_) => "a bool",
        ValueRef::Integer(_) => "an integer",
        ValueRef::F32(_) | ValueRef::F64(_) => "a float",
        ValueRef::String(_) => "a string",
        ValueRef::Binary(_) => "binary",
        ValueRef::Array(_) => "an array",
        ValueRef::Map(_) => "a map",
        ValueRef::Ext(..) => "an ext value",
    }
}

/// Keeps error details short when a device sends a huge name.
fn truncate(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        let head: String = s.chars().take(77).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Kept names are found whatever order they are asked for in, also
    /// when the one after the last is not it, and each look-up remembers
    /// where it found its name.
    #[test]
    fn names_are_found_in_any_order_and_remember_where() {
        let mut names = Names::default();
        let order = ["temp", "C", "humidity", "%"];
        let first: Vec<_> = order
            .iter()
            .map(|s| names.get_utf8(s.as_bytes()).unwrap())
            .collect();
        // The same order again, twice: past the last one kept it starts over.
        for round in 0..2 {
            for (i, s) in order.iter().enumerate() {
                let got = names.get_utf8(s.as_bytes()).unwrap();
                assert!(Arc::ptr_eq(&got, &first[i]), "round {round}: {s}");
                assert_eq!(names.last, i);
            }
        }
        // Out of order, and one name asked for twice in a row.
        for (s, i) in [("%", 3), ("temp", 0), ("C", 1), ("C", 1), ("humidity", 2)] {
            let got = names.get_utf8(s.as_bytes()).unwrap();
            assert!(Arc::ptr_eq(&got, &first[i]), "{s}");
            assert_eq!(names.last, i);
        }
        // Not UTF-8 and not kept: refused. A new name is kept after the rest.
        assert!(names.get_utf8(&[0xff]).is_none());
        assert_eq!(&*names.get_utf8(b"pressure").unwrap(), "pressure");
        assert_eq!((names.known.len(), names.last), (5, 4));
    }

    fn mp(v: serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(&v).unwrap()
    }

    fn err(frame: &[u8]) -> FrameError {
        decode_batch(frame, 500).unwrap_err()
    }

    #[test]
    fn a_seq_at_or_above_2_63_is_invalid_and_named() {
        let frame =
            |seq: u64| mp(json!({"seq": seq, "readings": [{"sensor": "t", "ts": 1, "value": 1}]}));
        assert_eq!(
            decode_batch(&frame(MAX_SEQ), 500).unwrap().seq,
            Some(MAX_SEQ)
        );
        for seq in [MAX_SEQ + 1, u64::MAX] {
            let e = err(&frame(seq));
            assert_eq!((e.seq, e.code), (Some(seq), ErrorCode::Invalid), "{e}");
        }
    }

    /// `{k1: v1, k2: v2}` in this order, where `"deep"` stands for 40
    /// nested arrays and anything else for the integer 7.
    fn ordered_map(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, entries.len() as u32).unwrap();
        for (k, v) in entries {
            rmp::encode::write_str(&mut out, k).unwrap();
            if *v == "deep" {
                for _ in 0..40 {
                    rmp::encode::write_array_len(&mut out, 1).unwrap();
                }
            }
            rmp::encode::write_uint(&mut out, 7).unwrap();
        }
        out
    }

    #[test]
    fn a_value_nested_too_deeply_is_rejected_with_the_seq() {
        let e = err(&ordered_map(&[("seq", "7"), ("readings", "deep")]));
        assert_eq!((e.seq, e.code), (Some(7), ErrorCode::Invalid), "{e}");
        // A seq after the bad value cannot be read: none is named.
        let e = err(&ordered_map(&[("readings", "deep"), ("seq", "7")]));
        assert_eq!(e.seq, None, "{e}");
    }

    #[test]
    fn good_batch_decodes() {
        let b = decode_batch(
            &mp(json!({"seq": 42, "x": [1, 2], "readings": [
                {"sensor": "temp", "ts": 1763800000123_i64, "value": 21.5, "unit": "C"},
                {"sensor": "on", "ts": 1, "value": true},
                {"sensor": "n", "ts": 1, "value": -3},
                {"sensor": "s", "ts": 1, "value": "open"}
            ]})),
            500,
        )
        .unwrap();
        assert_eq!(b.seq, Some(42));
        assert_eq!(b.readings.len(), 4);
        assert_eq!(b.readings[0].value, Value::Float(21.5));
        assert_eq!(b.readings[0].unit.as_deref(), Some("C"));
        assert_eq!(b.readings[1].value, Value::Bool(true));
        assert_eq!(b.readings[2].value, Value::Int(-3));
        assert_eq!(b.readings[3].value, Value::Str("open".into()));
    }

    #[test]
    fn not_a_map_and_garbage_are_invalid() {
        assert_eq!(err(&mp(json!([1, 2]))).code, ErrorCode::Invalid);
        assert!(err(&[0xc1, 0xff, 0x00]).detail.contains("MessagePack"));
        assert!(err(&[0x81]).detail.contains("MessagePack"));
        let mut two = mp(json!({"readings": []}));
        two.extend(mp(json!({})));
        assert!(err(&two).detail.contains("trailing"));
    }

    #[test]
    fn field_errors_name_the_field_and_keep_seq() {
        let e = err(&mp(
            json!({"seq": 7, "readings": [{"sensor": "a/b", "ts": 1, "value": 1}]}),
        ));
        assert_eq!(e.seq, Some(7));
        assert!(e.detail.starts_with("readings[0].sensor"), "{}", e.detail);
        let e = err(&mp(json!({"readings": [{"sensor": "a", "value": 1}]})));
        assert_eq!(e.detail, "readings[0].ts: missing");
        let e = err(&mp(
            json!({"readings": [{"sensor": "a", "ts": 1, "value": "x".repeat(257)}]}),
        ));
        assert!(e.detail.contains("257 bytes"));
        let e = err(&mp(
            json!({"readings": [{"sensor": "a", "ts": 1, "value": 1, "unit": "u".repeat(17)}]}),
        ));
        assert!(e.detail.starts_with("readings[0].unit"));
        let e = err(&mp(
            json!({"readings": [{"sensor": "a", "ts": 1, "value": [1]}]}),
        ));
        assert!(e.detail.starts_with("readings[0].value"));
        let e = err(&mp(json!({"seq": -1, "readings": []})));
        assert!(e.detail.contains("seq"));
    }

    #[test]
    fn non_finite_floats_are_invalid() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let frame = rmp_serde::to_vec_named(&serde_json::Map::from_iter([(
                "readings".to_string(),
                json!([{"sensor": "a", "ts": 1, "value": 0}]),
            )]))
            .unwrap();
            // Build the float by hand: JSON cannot hold NaN.
            let mut buf = Vec::new();
            rmp::encode::write_map_len(&mut buf, 1).unwrap();
            rmp::encode::write_str(&mut buf, "readings").unwrap();
            rmp::encode::write_array_len(&mut buf, 1).unwrap();
            rmp::encode::write_map_len(&mut buf, 3).unwrap();
            rmp::encode::write_str(&mut buf, "sensor").unwrap();
            rmp::encode::write_str(&mut buf, "a").unwrap();
            rmp::encode::write_str(&mut buf, "ts").unwrap();
            rmp::encode::write_sint(&mut buf, 1).unwrap();
            rmp::encode::write_str(&mut buf, "value").unwrap();
            rmp::encode::write_f64(&mut buf, f).unwrap();
            assert!(decode_batch(&frame, 500).is_ok());
            assert!(err(&buf).detail.contains("finite"));
        }
    }

    #[test]
    fn too_many_readings_and_empty_are_invalid() {
        let r = json!({"sensor": "a", "ts": 1, "value": 1});
        let frame = mp(json!({"readings": vec![r; 11]}));
        assert!(decode_batch(&frame, 10)
            .unwrap_err()
            .detail
            .contains("at most 10"));
        assert!(err(&mp(json!({"readings": []}))).detail.contains("empty"));
    }

    #[test]
    fn deep_nesting_is_rejected_without_recursion() {
        let mut buf = Vec::new();
        rmp::encode::write_map_len(&mut buf, 1).unwrap();
        rmp::encode::write_str(&mut buf, "junk").unwrap();
        for _ in 0..10_000 {
            rmp::encode::write_array_len(&mut buf, 1).unwrap();
        }
        rmp::encode::write_nil(&mut buf).unwrap();
        assert_eq!(err(&buf).code, ErrorCode::Invalid);
    }
}
