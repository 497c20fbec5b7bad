//! Byte formats of the store's values. Kept apart from the store logic so the
//! layout is readable in one place and testable without sled.

use std::sync::Arc;

use super::StoreError;
use crate::protocol::{write_msgpack_value, Reading, Value};

/// One segment's index entry: enough to decide retention and to answer
/// "what is retained" without reading segment payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub first_id: u64,
    pub last_id: u64,
    /// Newest `received` in the segment: the segment expires when this does.
    pub newest_received: i64,
    pub bytes: u64,
}

impl SegmentMeta {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.last_id.to_be_bytes());
        b[8..16].copy_from_slice(&self.newest_received.to_be_bytes());
        b[16..].copy_from_slice(&self.bytes.to_be_bytes());
        b
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Result<SegmentMeta, StoreError> {
        if v.len() != 24 {
            return Err(corrupt(key, "index entry is not 24 bytes"));
        }
        let word = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Ok(SegmentMeta {
            first_id: id_from_key(key)?,
            last_id: word(0),
            newest_received: word(8) as i64,
            bytes: word(16),
        })
    }
}

/// A segment on disk: readings as MessagePack arrays (positional, so
/// field names are not repeated per reading).
type Row = (u64, Arc<str>, Arc<str>, i64, Value, Option<Arc<str>>, i64);
/// The borrowed form of [`Row`]: what [`encode_row`] writes, as serde
/// would write it (the tests compare the two).
#[cfg(test)]
type RowRef<'a> = (u64, &'a str, &'a str, i64, &'a Value, Option<&'a str>, i64);

/// Most encoded bytes in one segment (one reading bigger than this still
/// makes a segment of its own).
///
/// sled 0.34 writes a tree node over a quarter of its 512 KiB log segment
/// as a separate blob, and unpatched, its cache counted that node as the
/// few bytes of the pointer: such nodes were never evicted, whatever
/// `cache_capacity` said, and the daemon kept every segment it ever wrote
/// in memory (359 MiB after 10 s of flood). A leaf holds at most 17 entries
/// before it splits, so segments of at most 6 KiB keep every leaf (~102 KiB
/// plus keys) under that threshold. The patched sled now counts a node by
/// its size in memory (third_party/sled/PATCHED.md), so such a node would
/// be evicted; the bound stays, and no blob files are written
/// (`tests/power_loss.rs` checks that).
pub const SEGMENT_MAX_BYTES: usize = 6 * 1024;
/// Most readings in one segment: the array header is a fixed 3-byte
/// `array 16` (written before the count is known), so at most `u16::MAX`.
/// The smallest reading encodes to ~20 bytes, so the byte bound always
/// comes first; this only guards the header.
const SEGMENT_MAX_READINGS: usize = u16::MAX as usize;

/// One encoded segment of a group: readings `range` of the slice given to
/// [`encode_segments`].
pub struct EncodedSegment {
    pub range: std::ops::Range<usize>,
    pub bytes: Vec<u8>,
}

/// Encodes readings into segments of at most [`SEGMENT_MAX_BYTES`], in
/// order: each a MessagePack array of positional rows, as
/// [`decode_segment`] reads it.
pub fn encode_segments(readings: &[Reading]) -> Vec<EncodedSegment> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut body = segment_with_header(readings.len());
    for (i, r) in readings.iter().enumerate() {
        let before = body.len();
        encode_row(&mut body, r);
        let full = body.len() > SEGMENT_MAX_BYTES || i - start == SEGMENT_MAX_READINGS;
        if full && i > start {
            // This row starts the next segment.
            let mut next = segment_with_header(readings.len() - i);
            next.extend_from_slice(&body[before..]);
            body.truncate(before);
            out.push(finish_segment(start..i, body));
            start = i;
            body = next;
        }
    }
    if start < readings.len() {
        out.push(finish_segment(start..readings.len(), body));
    }
    out
}

/// One reading as a positional row: the bytes `rmp_serde` gives for a
/// [`Row`], written directly (encoding rows was a visible share of the
/// writer thread's time through serde). The tests compare both.
fn encode_row(out: &mut Vec<u8>, r: &Reading) {
    use rmp::encode::{write_nil, write_sint, write_str, write_uint};
    // Writing into a Vec cannot fail: results are ignored.
    out.push(0x97); // fixarray of 7
    let _ = write_uint(out, r.id);
    let _ = write_str(out, &r.device);
    let _ = write_str(out, &r.sensor);
    let _ = write_sint(out, r.ts);
    write_msgpack_value(out, &r.value);
    let _ = match &r.unit {
        Some(unit) => write_str(out, unit).map_err(drop),
        None => write_nil(out).map_err(drop),
    };
    let _ = write_sint(out, r.received);
}

/// A segment buffer starting with room for its `array 16` header, sized
/// for the `left` readings still to encode (a typical row is under 64
/// bytes) but not past a whole segment (at most [`SEGMENT_MAX_BYTES`] and
/// one row past it, which moves to the next): a big group's segments never
/// grow while rows are added, and a one-reading commit does not take 7 KiB.
fn segment_with_header(left: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity((3 + 64 * left).min(SEGMENT_MAX_BYTES + 1024));
    body.extend_from_slice(&[0xdc, 0, 0]);
    body
}

fn finish_segment(range: std::ops::Range<usize>, mut bytes: Vec<u8>) -> EncodedSegment {
    let count = u16::try_from(range.len()).expect("bounded by SEGMENT_MAX_READINGS");
    bytes[1..3].copy_from_slice(&count.to_be_bytes());
    EncodedSegment { range, bytes }
}

pub fn decode_segment(key: &[u8], v: &[u8]) -> Result<Vec<Reading>, StoreError> {
    let rows: Vec<Row> =
        rmp_serde::from_slice(v).map_err(|e| corrupt(key, &format!("segment: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|(id, device, sensor, ts, value, unit, received)| Reading {
            id,
            device,
            sensor,
            ts,
            value,
            unit,
            received,
        })
        .collect())
}

pub fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "expected 8 bytes"))
}

pub fn id_from_key(key: &[u8]) -> Result<u64, StoreError> {
    key.get(2..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "key does not end in an id"))
}

fn corrupt(key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_encoded_as_rmp_serde_encodes_them() {
        let values = [
            Value::Float(21.5),
            Value::Float(-0.0),
            Value::Int(0),
            Value::Int(-4),
            Value::Int(-200),
            Value::Int(i64::MIN),
            Value::Int(300),
            Value::Int(i64::MAX),
            Value::UInt(u64::MAX),
            Value::Bool(true),
            Value::Str(String::new()),
            Value::Str("x".repeat(256)),
        ];
        for (i, value) in values.into_iter().enumerate() {
            let r = Reading {
                id: [1, 128, 70_000, u64::MAX][i % 4],
                device: Arc::from("dev-1"),
                sensor: "s".repeat(1 + i * 5).into(),
                ts: [-1, 0, 1_763_800_000_000][i % 3],
                value,
                unit: (i % 2 == 0).then(|| "°C".into()),
                received: [i64::MIN, 5, i64::MAX][i % 3],
            };
            let row: RowRef<'_> = (
                r.id,
                &*r.device,
                &*r.sensor,
                r.ts,
                &r.value,
                r.unit.as_deref(),
                r.received,
            );
            let mut by_hand = Vec::new();
            encode_row(&mut by_hand, &r);
            assert_eq!(by_hand, rmp_serde::to_vec(&row).unwrap(), "{r:?}");
        }
    }

    #[test]
    fn segment_round_trips_every_value_kind() {
        let dev: Arc<str> = Arc::from("d1");
        let values = [
            Value::Float(21.5),
            Value::Float(3.0),
            Value::Int(-4),
            Value::UInt(u64::MAX),
            Value::Bool(false),
            Value::Str("open".into()),
        ];
        let readings: Vec<Reading> = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| Reading {
                id: 10 + i as u64,
                device: dev.clone(),
                sensor: format!("s{i}").into(),
                ts: 1_763_800_000_000 + i as i64,
                value,
                unit: (i % 2 == 0).then(|| "C".into()),
                received: 1_763_800_000_500,
            })
            .collect();
        let segments = encode_segments(&readings);
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].range, 0..readings.len());
        assert_eq!(
            decode_segment(b"s/x", &segments[0].bytes).unwrap(),
            readings
        );
    }

    fn reading(id: u64, value: Value) -> Reading {
        Reading {
            id,
            device: Arc::from("dev-a"),
            sensor: "temperature".into(),
            ts: 1_763_800_000_000 + id as i64,
            value,
            unit: Some("C".into()),
            received: 1_763_800_000_500,
        }
    }

    #[test]
    fn a_large_group_is_cut_into_segments_of_at_most_the_byte_bound() {
        let readings: Vec<Reading> = (0..2000)
            .map(|i| reading(i, Value::Float(i as f64 / 3.0)))
            .collect();
        let segments = encode_segments(&readings);
        assert!(segments.len() > 1, "{} segments", segments.len());
        let mut next = 0;
        for s in &segments {
            assert!(
                s.bytes.len() <= SEGMENT_MAX_BYTES,
                "{} bytes",
                s.bytes.len()
            );
            assert_eq!(s.range.start, next, "segments follow each other");
            next = s.range.end;
            let back = decode_segment(b"s/x", &s.bytes).unwrap();
            assert_eq!(back, readings[s.range.clone()]);
        }
        assert_eq!(next, readings.len(), "every reading is in a segment");
        // Cut where the next row would not fit, not earlier: the first
        // segment plus the row after it is over the bound.
        let first = &segments[0];
        let next = &encode_segments(&readings[first.range.end..first.range.end + 1])[0];
        let next_row_bytes = next.bytes.len() - 3; // less its array header
        assert!(
            first.bytes.len() + next_row_bytes > SEGMENT_MAX_BYTES,
            "cut early: {} + {next_row_bytes} bytes would have fit",
            first.bytes.len()
        );
    }

    #[test]
    fn segments_decode_as_the_serde_form_reads_them() {
        // The fixed `array 16` header is valid MessagePack for any count:
        // a segment of one reading and one of 300 both read back, and a
        // segment written by the older `rmp_serde::to_vec` form still does.
        for n in [1usize, 15, 16, 300] {
            let readings: Vec<Reading> = (0..n as u64)
                .map(|i| reading(i, Value::Int(-(i as i64))))
                .collect();
            for s in encode_segments(&readings) {
                assert_eq!(decode_segment(b"s/x", &s.bytes).unwrap(), readings[s.range]);
            }
        }
        let old = reading(7, Value::Str("open".into()));
        let row: RowRef<'_> = (
            old.id,
            &old.device,
            &old.sensor,
            old.ts,
            &old.value,
            old.unit.as_deref(),
            old.received,
        );
        let bytes = rmp_serde::to_vec(&[row]).unwrap();
        assert_eq!(decode_segment(b"s/x", &bytes).unwrap(), vec![old]);
    }

    #[test]
    fn meta_round_trips() {
        let m = SegmentMeta {
            first_id: 7,
            last_id: 99,
            newest_received: 123,
            bytes: 4096,
        };
        let key = super::super::index_key(7);
        assert_eq!(SegmentMeta::decode(&key, &m.encode()).unwrap(), m);
    }
}
