//! A segment: the value under `s/<first id>`, a run of readings with
//! consecutive ids, at most [`SEGMENT_MAX_BYTES`] encoded.
//!
//! Segments are written in the compact form. Its first byte is `0xc1`, the
//! one byte MessagePack never uses, so it cannot begin a segment of the
//! older form (a MessagePack array of positional rows), which stores
//! written before it still hold and which still reads.
//!
//! ```text
//! segment  = 0xc1, varint count, varint first id, row * count
//! row      = device, sensor, unit, zigzag ts delta, zigzag received delta, value
//! device, sensor, unit
//!          = varint 0                   no unit (device and sensor never)
//!          | varint 1, varint len, utf8 a new string: the table's next entry
//!          | varint k (k >= 2)          the table's entry k - 2
//! value    = 0x00 false | 0x01 true | 0x02 zigzag varint (Int)
//!          | 0x03 varint (UInt) | 0x04 f32 LE (a Float an f32 holds exactly)
//!          | 0x05 f64 LE | 0x06 varint len, utf8 (Str)
//! ```
//!
//! The ids are the first id plus the row's position; `ts` and `received`
//! are deltas from the row before (from 0 for the first). A reading of a
//! batch shares its device, usually its sensor names and its `received`
//! with the readings before it, so a typical row is a few bytes of
//! references and deltas plus its value: about a third of the older form,
//! which repeated every string and wrote every time in full. The smaller
//! segments are less to write to the log and to sled, less on disk and in
//! sled's cache. Each string of a segment is decoded once and shared by its
//! readings.
//!
//! Decoding checks every length, reference and count against the bytes it
//! has, and that nothing is left over: damage to the structure is an error,
//! never a panic. (A changed value or delta still decodes, as it did in the
//! older form: sled's own checksums are what catch damaged bytes.)
//!
//! A store written in this form cannot be read by a sensorgate from before
//! it (docs/operations.md, "Upgrade").

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::{corrupt, id_from_key};
use crate::protocol::{Reading, Value};
use crate::store::StoreError;

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

/// Strings per field an encoder finds by address before hashing: more
/// than a device's usual handful of sensors.
const RECENT: usize = 8;

/// The first byte of a compact segment.
const COMPACT: u8 = 0xc1;

/// One encoded segment of a group: readings `range` of the slice given to
/// [`encode_segments`].
pub struct EncodedSegment {
    pub range: std::ops::Range<usize>,
    pub bytes: Vec<u8>,
}

/// Encodes readings into compact segments of at most [`SEGMENT_MAX_BYTES`],
/// in order, as [`decode_segment`] reads them. A segment's ids are
/// consecutive: a reading whose id does not follow the one before starts a
/// new segment (a group's ids always follow each other).
pub fn encode_segments(readings: &[Reading]) -> Vec<EncodedSegment> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut segment = Encoder::new(readings);
    for (i, r) in readings.iter().enumerate() {
        let follows = i == start || readings[i - 1].id.checked_add(1) == Some(r.id);
        if !follows {
            out.push(segment.finish(start..i));
            start = i;
            segment = Encoder::new(&readings[i..]);
        }
        let before = segment.body.len();
        segment.row(r);
        if segment.len(i + 1 - start) > SEGMENT_MAX_BYTES && i > start {
            // This row starts the next segment. It is encoded again there:
            // its references name this segment's strings.
            segment.body.truncate(before);
            out.push(segment.finish(start..i));
            start = i;
            segment = Encoder::new(&readings[i..]);
            segment.row(r);
        }
    }
    if start < readings.len() {
        out.push(segment.finish(start..readings.len()));
    }
    out
}

/// Decodes a segment of either form. `key` names it in errors and, when it
/// is a segment key, must carry the compact segment's first id.
pub fn decode_segment(key: &[u8], v: &[u8]) -> Result<Vec<Reading>, StoreError> {
    match v.split_first() {
        Some((&COMPACT, rest)) => decode_compact(key, rest),
        _ => decode_rows(key, v),
    }
}

/// A segment being encoded: its bytes after the header, and its string
/// table (each string's index, by content).
struct Encoder<'a> {
    body: Vec<u8>,
    first_id: u64,
    strings: HashMap<&'a str, u64, BuildHasherDefault<FxHasher>>,
    /// The last [`RECENT`] strings each field referred to, by address, with
    /// their index: a batch's readings repeat their device, and cycle
    /// through a few sensors and units, which the decoder's fast path
    /// shares as one `Arc` each across a connection's readings (its first
    /// 32 distinct ones), so these find most references without hashing.
    /// Strings not shared are found in `strings`, by content.
    recent: [[(*const u8, usize, u64); RECENT]; 3],
    /// Per field, the slot of `recent` to fill next (round robin).
    next_slot: [usize; 3],
    prev_ts: i64,
    prev_received: i64,
}

impl<'a> Encoder<'a> {
    /// A segment starting at `rest[0]`, sized for the readings still to
    /// encode (a typical row is under 24 bytes) but not past a whole
    /// segment: a big group's segments never grow while rows are added, and
    /// a one-reading commit does not take 7 KiB.
    fn new(rest: &[Reading]) -> Self {
        Encoder {
            body: Vec::with_capacity((24 * rest.len()).min(SEGMENT_MAX_BYTES + 1024)),
            first_id: rest.first().map_or(0, |r| r.id),
            // Room for a few devices' names and units before the table
            // first grows (a fleet's segment names dozens of devices).
            strings: HashMap::with_capacity_and_hasher(16, Default::default()),
            recent: [[(std::ptr::null(), 0, 0); RECENT]; 3],
            next_slot: [0; 3],
            prev_ts: 0,
            prev_received: 0,
        }
    }

    fn row(&mut self, r: &'a Reading) {
        self.string(0, &r.device);
        self.string(1, &r.sensor);
        match &r.unit {
            Some(unit) => self.string(2, unit),
            None => put_varint(&mut self.body, 0),
        }
        put_varint(&mut self.body, zigzag(r.ts.wrapping_sub(self.prev_ts)));
        put_varint(
            &mut self.body,
            zigzag(r.received.wrapping_sub(self.prev_received)),
        );
        self.prev_ts = r.ts;
        self.prev_received = r.received;
        put_value(&mut self.body, &r.value);
    }

    /// A reference to `s`, written in full the first time.
    fn string(&mut self, field: usize, s: &'a str) {
        // The same address is the same string: every `s` is borrowed from
        // the readings being encoded, all alive until the segment is done.
        let key = (s.as_ptr(), s.len());
        if let Some(&(_, _, index)) = self.recent[field]
            .iter()
            .find(|(ptr, len, _)| (*ptr, *len) == key)
        {
            put_varint(&mut self.body, index + 2);
            return;
        }
        let next = self.strings.len() as u64;
        let index = match self.strings.entry(s) {
            Entry::Occupied(known) => {
                put_varint(&mut self.body, known.get() + 2);
                *known.get()
            }
            Entry::Vacant(new) => {
                new.insert(next);
                put_varint(&mut self.body, 1);
                put_varint(&mut self.body, s.len() as u64);
                self.body.extend_from_slice(s.as_bytes());
                next
            }
        };
        let slot = self.next_slot[field];
        self.recent[field][slot] = (key.0, key.1, index);
        self.next_slot[field] = (slot + 1) % RECENT;
    }

    /// The whole segment's size with `count` readings: its header and rows.
    fn len(&self, count: usize) -> usize {
        1 + varint_len(count as u64) + varint_len(self.first_id) + self.body.len()
    }

    fn finish(self, range: std::ops::Range<usize>) -> EncodedSegment {
        let mut bytes = Vec::with_capacity(self.len(range.len()));
        bytes.push(COMPACT);
        put_varint(&mut bytes, range.len() as u64);
        put_varint(&mut bytes, self.first_id);
        bytes.extend_from_slice(&self.body);
        EncodedSegment { range, bytes }
    }
}

fn decode_compact(key: &[u8], v: &[u8]) -> Result<Vec<Reading>, StoreError> {
    let bad = |what: &str| corrupt(key, &format!("segment: {what}"));
    let mut c = Cursor(v);
    let count = c.varint().ok_or_else(|| bad("no count"))?;
    let first = c.varint().ok_or_else(|| bad("no first id"))?;
    if count == 0 || first.checked_add(count - 1).is_none() {
        return Err(bad("no readings, or ids past the last"));
    }
    if id_from_key(key).is_ok_and(|k| k != first) {
        return Err(bad("its first id is not its key's"));
    }
    // Every row takes at least 6 bytes: no allocation beyond what is there.
    let mut readings = Vec::with_capacity((count as usize).min(v.len() / 6));
    let mut strings: Vec<Arc<str>> = Vec::new();
    let (mut ts, mut received) = (0i64, 0i64);
    for i in 0..count {
        let device = c.string(&mut strings).ok_or_else(|| bad("bad device"))?;
        let sensor = c.string(&mut strings).ok_or_else(|| bad("bad sensor"))?;
        let unit = c.string(&mut strings).ok_or_else(|| bad("bad unit"))?;
        let (Some(device), Some(sensor)) = (device, sensor) else {
            return Err(bad("a reading without device or sensor"));
        };
        ts = ts.wrapping_add(c.zigzag().ok_or_else(|| bad("bad ts"))?);
        received = received.wrapping_add(c.zigzag().ok_or_else(|| bad("bad received"))?);
        let value = c.value().ok_or_else(|| bad("bad value"))?;
        readings.push(Reading {
            id: first + i,
            device,
            sensor,
            ts,
            value,
            unit,
            received,
        });
    }
    if !c.0.is_empty() {
        return Err(bad("bytes after its last reading"));
    }
    Ok(readings)
}

/// The older form: a MessagePack array of `(id, device, sensor, ts, value,
/// unit, received)` rows.
fn decode_rows(key: &[u8], v: &[u8]) -> Result<Vec<Reading>, StoreError> {
    type Row = (u64, Arc<str>, Arc<str>, i64, Value, Option<Arc<str>>, i64);
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

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).max(1).div_ceil(7)
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => out.push(*b as u8),
        Value::Int(n) => {
            out.push(0x02);
            put_varint(out, zigzag(*n));
        }
        Value::UInt(n) => {
            out.push(0x03);
            put_varint(out, *n);
        }
        // Bit for bit: a value an f32 holds exactly (21.5) takes 4 bytes.
        // Never a NaN (ingest refuses them anyway): how a cast carries a
        // NaN's payload is not specified.
        Value::Float(f) if !f.is_nan() && ((*f as f32) as f64).to_bits() == f.to_bits() => {
            out.push(0x04);
            out.extend_from_slice(&(*f as f32).to_le_bytes());
        }
        Value::Float(f) => {
            out.push(0x05);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Str(s) => {
            out.push(0x06);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Reads a compact segment; `None` where the bytes run out or make no sense.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may carry one bit only.
            if shift == 63 && bits > 1 {
                return None;
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let n = self.varint()?;
        Some((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    fn utf8(&mut self) -> Option<&str> {
        let len = usize::try_from(self.varint()?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// A string reference: `Some(None)` for "none", a new string added to
    /// `strings`, or one of theirs.
    fn string(&mut self, strings: &mut Vec<Arc<str>>) -> Option<Option<Arc<str>>> {
        match self.varint()? {
            0 => Some(None),
            1 => {
                let s: Arc<str> = self.utf8()?.into();
                strings.push(s.clone());
                Some(Some(s))
            }
            k => strings.get(usize::try_from(k - 2).ok()?).cloned().map(Some),
        }
    }

    fn value(&mut self) -> Option<Value> {
        let (&tag, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(match tag {
            0x00 => Value::Bool(false),
            0x01 => Value::Bool(true),
            0x02 => Value::Int(self.zigzag()?),
            0x03 => Value::UInt(self.varint()?),
            0x04 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().ok()?) as f64),
            0x05 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            0x06 => Value::Str(self.utf8()?.to_string()),
            _ => return None,
        })
    }
}

/// The string table's hasher: a few multiplies for a short name instead of
/// SipHash's rounds (the keys are the daemon's own readings, not a peer's
/// choice of collisions against a long-lived table: a table lives for one
/// segment of at most 6 KiB).
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
