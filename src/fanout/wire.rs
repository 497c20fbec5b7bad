//! What subscribers see on the wire (SPEC §4): the client's ops, the
//! server's messages, and the two encodings. Pure functions, no I/O.
//!
//! A list of routed readings is encoded at most once per encoding however
//! many subscribers receive it: [`Routed`] keeps its JSON and MessagePack
//! forms (computed on first use, each in one buffer), and
//! [`readings_frame`] splices runs of those bytes into a
//! `{"type":"readings","items":[...]}` frame without re-serializing them;
//! [`live_frame`], where that pays, does not even copy them: its frame is
//! pieces of the lists' bytes, written where they lie.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{write_msgpack_value, Reading, StreamItem, Value};
use crate::store::Commit;

/// The encoding a subscriber chose at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Text frames holding JSON (the default, and `sensorgate.json`).
    Json,
    /// Binary frames holding one MessagePack map (`sensorgate.msgpack`).
    Msgpack,
}

/// Subprotocol names, in order of preference.
pub const PROTO_MSGPACK: &str = "sensorgate.msgpack";
pub const PROTO_JSON: &str = "sensorgate.json";

impl Encoding {
    pub fn from_protocol(p: Option<&str>) -> Encoding {
        match p {
            Some(PROTO_MSGPACK) => Encoding::Msgpack,
            _ => Encoding::Json,
        }
    }
}

/// Readings routed together, in id order: a step of a commit for the
/// subscribers to everything, the readings of one routing that one
/// subscriber's narrower filters match, or a page of a replay. Shared by
/// every queue it was pushed to; each encoding of its readings is made
/// once, on first use, into one buffer that frames splice runs of.
/// Why lists and not one shared item per reading, as before: each item was
/// an allocation, a copy of its reading and a buffer of its own, made on
/// the router and freed on a subscriber's task; in the flood those were a
/// fifth of the runtime's time. The price: a list is encoded whole on first
/// use, so readings a lagging subscriber then drops from its front were
/// encoded for nothing, and a task that needs a list another task is
/// encoding waits for it (up to 4,096 readings, about half a millisecond).
#[derive(Debug)]
pub struct Routed {
    readings: Source,
    /// Set for readings relayed from another instance (`mqtt.relay`): they
    /// are live only and their ids come from another instance's sequence.
    origin: Option<Arc<str>>,
    json: OnceLock<Encoded<String>>,
    msgpack: OnceLock<Encoded<Vec<u8>>>,
}

#[derive(Debug)]
enum Source {
    /// Part of a durable commit, which stays alive as long as this does
    /// (as it did for the router before): no reading is copied.
    Commit(Arc<Commit>, Range<usize>),
    Own(Vec<Reading>),
}

/// A list's items in one encoding (`B` is a `String` for JSON, bytes for
/// MessagePack), one after the other in chunks of at most [`CHUNK_BYTES`]
/// (an item bigger than that has a chunk of its own): inside a chunk, JSON
/// items have a comma between them, so that a run of items is one slice
/// of a frame's `items` array per chunk it spans.
/// Why chunks: a buffer for a whole list of thousands is above glibc's
/// mmap threshold (128 KiB, [`crate::allocator`]): fresh pages, faulted
/// in as it was written and unmapped when it was dropped, which were 7 %
/// of the flood's time. Chunks come from the heap and are reused.
#[derive(Debug)]
struct Encoded<B> {
    chunks: Vec<B>,
    /// Each item's chunk, and where it ends there.
    ends: Vec<(u32, usize)>,
    /// Bytes between one item's end and the next one's start in a chunk.
    gap: usize,
}

/// Most bytes of a chunk of encoded items, by their bounds (a chunk holds
/// fewer bytes than that).
const CHUNK_BYTES: usize = 64 << 10;

impl<B, T> Encoded<B>
where
    B: std::ops::Deref<Target = T>,
    T: std::ops::Index<Range<usize>, Output = T> + ?Sized,
{
    /// Items `range` (not empty), with what lies between them: one slice
    /// per chunk they are in, in order.
    fn run<'a>(&'a self, range: Range<usize>) -> impl Iterator<Item = &'a T>
    where
        T: 'a,
    {
        pieces(&self.ends, self.gap, range)
            .map(|(chunk, bytes)| &self.chunks[chunk as usize][bytes])
    }
}

/// Where items `range` (not empty) of an encoding lie, by its items' ends
/// and the gap between them ([`Encoded`]): each slice's chunk, and its
/// bytes there, one slice per chunk the items are in.
fn pieces(
    ends: &[(u32, usize)],
    gap: usize,
    range: Range<usize>,
) -> impl Iterator<Item = (u32, Range<usize>)> + '_ {
    let mut next = range.start;
    std::iter::from_fn(move || {
        if next >= range.end {
            return None;
        }
        let (chunk, _) = ends[next];
        let start = match next {
            n if n > 0 && ends[n - 1].0 == chunk => ends[n - 1].1 + gap,
            _ => 0,
        };
        // The last item of the range in this chunk.
        let mut last = next;
        while last + 1 < range.end && ends[last + 1].0 == chunk {
            last += 1;
        }
        next = last + 1;
        Some((chunk, start..ends[last].1))
    })
}

impl Routed {
    /// Readings `range` of a durable commit.
    pub fn of_commit(commit: &Arc<Commit>, range: Range<usize>) -> Routed {
        Routed::with(Source::Commit(commit.clone(), range), None)
    }

    /// Readings of their own (relayed ones with their `origin`).
    pub fn new(readings: Vec<Reading>, origin: Option<Arc<str>>) -> Routed {
        Routed::with(Source::Own(readings), origin)
    }

    fn with(readings: Source, origin: Option<Arc<str>>) -> Routed {
        Routed {
            readings,
            origin,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    pub fn readings(&self) -> &[Reading] {
        match &self.readings {
            Source::Commit(commit, range) => &commit[range.clone()],
            Source::Own(readings) => readings,
        }
    }

    pub fn len(&self) -> usize {
        self.readings().len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings().is_empty()
    }

    pub fn origin(&self) -> Option<&Arc<str>> {
        self.origin.as_ref()
    }

    pub fn is_relayed(&self) -> bool {
        self.origin.is_some()
    }

    /// Tests: readings `ids` of device `d`, sensor `s`, each the value 0.
    #[cfg(test)]
    pub(crate) fn of_ids(ids: Range<u64>) -> Routed {
        let readings = ids.map(|id| Reading {
            id,
            device: "d".into(),
            sensor: "s".into(),
            ts: 0,
            value: Value::Int(0),
            unit: None,
            received: 0,
        });
        Routed::new(readings.collect(), None)
    }

    /// The same readings from `from` on, in a list of their own: what a
    /// queue keeps of a list bigger than it holds.
    pub fn tail_from(&self, from: usize) -> Routed {
        Routed::new(self.readings()[from..].to_vec(), self.origin.clone())
    }

    /// Items `range` (not empty) as JSON, with the commas between them,
    /// one slice per chunk.
    fn json_run(&self, range: Range<usize>) -> impl Iterator<Item = &str> {
        self.json().run(range)
    }

    /// Items `range` (not empty) as MessagePack, one after the other, one
    /// slice per chunk.
    fn msgpack_run(&self, range: Range<usize>) -> impl Iterator<Item = &[u8]> {
        self.msgpack().run(range)
    }

    fn json(&self) -> &Encoded<String> {
        self.json.get_or_init(|| {
            let Encoded { chunks, ends, gap } = self.encode(JSON_MAX_FIXED, 1, write_json);
            // Checked once per list, so that frames splice it unchecked.
            let chunks = chunks
                .into_iter()
                .map(|c| String::from_utf8(c).expect("JSON is UTF-8"))
                .collect();
            Encoded { chunks, ends, gap }
        })
    }

    fn msgpack(&self) -> &Encoded<Vec<u8>> {
        self.msgpack
            .get_or_init(|| self.encode(MSGPACK_MAX_FIXED, 0, write_msgpack))
    }

    /// Where items `range` (not empty) lie in encoding `enc`: each slice's
    /// chunk and bytes.
    fn pieces(
        &self,
        enc: Encoding,
        range: Range<usize>,
    ) -> impl Iterator<Item = (u32, Range<usize>)> + '_ {
        let (ends, gap) = match enc {
            Encoding::Json => (&self.json().ends, self.json().gap),
            Encoding::Msgpack => (&self.msgpack().ends, self.msgpack().gap),
        };
        pieces(ends, gap, range)
    }

    /// Chunk `chunk` of encoding `enc`.
    fn chunk_bytes(&self, enc: Encoding, chunk: u32) -> &[u8] {
        match enc {
            Encoding::Json => self.json().chunks[chunk as usize].as_bytes(),
            Encoding::Msgpack => &self.msgpack().chunks[chunk as usize],
        }
    }

    /// The readings this list keeps alive: its commit's, for a range of
    /// one ([`Routed::of_commit`]), else its own.
    fn kept_alive(&self) -> usize {
        match &self.readings {
            Source::Commit(commit, _) => commit.len(),
            Source::Own(readings) => readings.len(),
        }
    }

    /// Whether `other` keeps the same readings alive as this list (is it,
    /// or another range of the same commit).
    fn keeps_same(&self, other: &Routed) -> bool {
        match (&self.readings, &other.readings) {
            (Source::Commit(a, _), Source::Commit(b, _)) => Arc::ptr_eq(a, b),
            _ => std::ptr::eq(self, other),
        }
    }

    /// Every item, written by `write` into chunks sized up front from each
    /// item's bound (`fixed` plus its strings), `gap` bytes apart.
    fn encode(
        &self,
        fixed: usize,
        gap: usize,
        write: fn(&mut Vec<u8>, &StreamItem<'_>),
    ) -> Encoded<Vec<u8>> {
        let readings = self.readings();
        let origin = self.origin.as_deref();
        let bound = |r: &Reading| fixed + gap + strings_len(&wire(r, origin));
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut ends = Vec::with_capacity(readings.len());
        let mut n = 0;
        while n < readings.len() {
            // Items up to the chunk's bound (at least one).
            let mut room = bound(&readings[n]);
            let mut end = n + 1;
            while let Some(r) = readings.get(end) {
                let more = bound(r);
                if room + more > CHUNK_BYTES {
                    break;
                }
                room += more;
                end += 1;
            }
            let mut chunk = Vec::with_capacity(room);
            for r in &readings[n..end] {
                if !chunk.is_empty() && gap > 0 {
                    chunk.push(b',');
                }
                write(&mut chunk, &wire(r, origin));
                ends.push((chunks.len() as u32, chunk.len()));
            }
            chunks.push(chunk);
            n = end;
        }
        Encoded { chunks, ends, gap }
    }
}

/// The fields of a §4 item, as the wire crate defines them.
fn wire<'a>(r: &'a Reading, origin: Option<&'a str>) -> StreamItem<'a> {
    StreamItem {
        id: r.id,
        device: &r.device,
        sensor: &r.sensor,
        ts: r.ts,
        value: &r.value,
        unit: r.unit.as_deref().map(Cow::Borrowed),
        received: r.received,
        origin: origin.map(Cow::Borrowed),
    }
}

/// Appends an item as JSON: the bytes `serde_json::to_vec` gives for a
/// [`StreamItem`], written directly. Why by hand: encoding items was most
/// of a subscriber task's time, and serde's path grows its buffer several
/// times per item and goes through a formatter per field; this writes into
/// a buffer sized up front. The tests compare both byte for byte.
fn write_json(out: &mut Vec<u8>, item: &StreamItem<'_>) {
    let mut ints = itoa::Buffer::new();
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(ints.format(item.id).as_bytes());
    out.extend_from_slice(b",\"device\":");
    json_str(out, item.device);
    out.extend_from_slice(b",\"sensor\":");
    json_str(out, item.sensor);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ints.format(item.ts).as_bytes());
    out.extend_from_slice(b",\"value\":");
    match item.value {
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(n) => out.extend_from_slice(ints.format(*n).as_bytes()),
        Value::UInt(n) => out.extend_from_slice(ints.format(*n).as_bytes()),
        // Floats are serde_json's own (shortest round-trip digits, null
        // for a non-finite one, which is never stored).
        Value::Float(f) => {
            serde_json::to_writer(&mut *out, f).expect("writing to a Vec cannot fail")
        }
        Value::Str(s) => json_str(out, s),
    }
    if let Some(unit) = &item.unit {
        out.extend_from_slice(b",\"unit\":");
        json_str(out, unit);
    }
    out.extend_from_slice(b",\"received\":");
    out.extend_from_slice(ints.format(item.received).as_bytes());
    if let Some(origin) = &item.origin {
        out.extend_from_slice(b",\"origin\":");
        json_str(out, origin);
    }
    out.push(b'}');
}

/// A JSON string. Names (the usual case) never need escaping and are
/// copied; anything else is escaped exactly as serde_json does it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// Appends an item as MessagePack: the bytes `rmp_serde::to_vec_named`
/// gives for a [`StreamItem`] (a map with the field names, the shortest
/// integer forms), written directly for the reason [`write_json`] gives.
/// The tests compare both byte for byte.
fn write_msgpack(o: &mut Vec<u8>, item: &StreamItem<'_>) {
    use rmp::encode::{write_map_len, write_sint, write_str, write_uint};
    let fields = 6 + u32::from(item.unit.is_some()) + u32::from(item.origin.is_some());
    // Keys are fixed strings: their bytes (fixstr marker, then the name)
    // are copied rather than encoded each time. Writing into a Vec cannot
    // fail, so results are ignored.
    let _ = write_map_len(o, fields);
    o.extend_from_slice(b"\xa2id");
    let _ = write_uint(o, item.id);
    o.extend_from_slice(b"\xa6device");
    let _ = write_str(o, item.device);
    o.extend_from_slice(b"\xa6sensor");
    let _ = write_str(o, item.sensor);
    o.extend_from_slice(b"\xa2ts");
    let _ = write_sint(o, item.ts);
    o.extend_from_slice(b"\xa5value");
    write_msgpack_value(o, item.value);
    if let Some(unit) = &item.unit {
        o.extend_from_slice(b"\xa4unit");
        let _ = write_str(o, unit);
    }
    o.extend_from_slice(b"\xa8received");
    let _ = write_sint(o, item.received);
    if let Some(origin) = &item.origin {
        o.extend_from_slice(b"\xa6origin");
        let _ = write_str(o, origin);
    }
}

/// The most bytes of an item's JSON that are not its strings' own: 80 of
/// keys, quotes and punctuation, three 64-bit integers of up to 20 digits,
/// and a value of up to 24 (the longest float). Sizing the buffer by a
/// guess instead cost a reallocation for most items (a profile at 100,000
/// readings/s showed it).
const JSON_MAX_FIXED: usize = 80 + 3 * 20 + 24;

/// The same for MessagePack: the map's marker, 47 bytes of keys, three
/// 9-byte integers, a value of up to 9 bytes and four string headers of up
/// to 5.
const MSGPACK_MAX_FIXED: usize = 1 + 47 + 3 * 9 + 9 + 4 * 5;

/// The bytes of an item's strings, for sizing its buffer.
fn strings_len(item: &StreamItem<'_>) -> usize {
    let value = match item.value {
        Value::Str(s) => s.len(),
        _ => 0,
    };
    item.device.len()
        + item.sensor.len()
        + value
        + item.unit.as_deref().map_or(0, str::len)
        + item.origin.as_deref().map_or(0, str::len)
}

/// A frame ready for the socket: text for JSON, binary for MessagePack.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
    /// A readings frame whose payload is `pieces` one after the other
    /// (text for JSON): pieces of its lists' own encodings, which it keeps
    /// alive until written ([`live_frame`]).
    Spliced {
        text: bool,
        pieces: Vec<Bytes>,
    },
}

/// `0..len` in consecutive ranges of at most `most` (not empty).
pub fn steps(len: usize, most: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len)
        .step_by(most)
        .map(move |start| start..len.min(start + most))
}

/// A run of a shared list's items for one frame, `range` of the list (a
/// subscriber queue's), which a spliced frame can keep alive.
pub type LiveRun<'a> = (&'a Arc<Routed>, Range<usize>);

impl AsRef<Routed> for Routed {
    fn as_ref(&self) -> &Routed {
        self
    }
}

/// Frames smaller than this are copied together ([`readings_frame`]): a
/// few small copies cost less than the pieces' bookkeeping.
const SPLICE_FROM: usize = 4 << 10;
/// Most runs a spliced frame is made of. Each is a piece per chunk it
/// spans (plus, for JSON, a comma where a piece starts a chunk), so the
/// pieces of a live frame (at most 500 items, the session's `FRAME_ITEMS`)
/// fit one vectored write ([`crate::ws::MAX_SLICES`]); any more would go in
/// the next one.
const SPLICE_MAX_RUNS: usize = 16;

/// A live readings frame of `runs`: spliced from the lists' encodings
/// without a copy ([`Frame::Spliced`]) where that pays, else
/// [`readings_frame`]. Why: a subscriber's frame was a copy of bytes
/// every subscriber shares, made per subscriber and frame (at 1 M
/// deliveries/s to ten JSON subscribers, the copies and their buffers were
/// some 4 % of the daemon's time). Spliced only when the frame is at least
/// [`SPLICE_FROM`] bytes, made of at most [`SPLICE_MAX_RUNS`] runs, and
/// holds at least four fifths of the readings its lists keep alive
/// ([`Routed::kept_alive`]): a frame waiting for a slow peer keeps them,
/// their strings and their encodings, which is some three to four times
/// its copy's bytes for that one peer (and nothing more where, as usual,
/// the other subscribers' queues hold the same lists).
pub fn live_frame(enc: Encoding, runs: &[LiveRun<'_>]) -> Frame {
    splice(enc, runs).unwrap_or_else(|| readings_frame(enc, runs))
}

fn splice(enc: Encoding, runs: &[LiveRun<'_>]) -> Option<Frame> {
    let items: usize = runs.iter().map(|(_, range)| range.len()).sum();
    if runs.len() > SPLICE_MAX_RUNS || 4 * kept_alive(runs) > 5 * items {
        return None;
    }
    let bytes: usize = runs
        .iter()
        .flat_map(|(list, range)| list.pieces(enc, range.clone()))
        .map(|(_, at)| at.len())
        .sum();
    if bytes < SPLICE_FROM {
        return None;
    }
    let json = enc == Encoding::Json;
    let mut pieces = Vec::with_capacity(2 * runs.len() + 2);
    pieces.push(match enc {
        Encoding::Json => Bytes::from_static(br#"{"type":"readings","items":["#),
        Encoding::Msgpack => msgpack_head(items, 0).into(),
    });
    // One owner per chunk, however many pieces are cut from it.
    let mut chunk_bytes: Option<(&Arc<Routed>, u32, Bytes)> = None;
    for (list, range) in runs {
        for (chunk, mut at) in list.pieces(enc, range.clone()) {
            if json && pieces.len() > 1 {
                // The item before it in the chunk is followed by a comma:
                // the piece starts there; the first of a chunk needs one.
                match at.start {
                    0 => pieces.push(Bytes::from_static(b",")),
                    _ => at.start -= 1,
                }
            }
            let same = |(l, c, _): &(&Arc<Routed>, u32, Bytes)| Arc::ptr_eq(l, list) && *c == chunk;
            if !chunk_bytes.as_ref().is_some_and(same) {
                let whole = Bytes::from_owner(Chunk {
                    list: Arc::clone(list),
                    enc,
                    chunk,
                });
                chunk_bytes = Some((list, chunk, whole));
            }
            let (_, _, whole) = chunk_bytes.as_ref().expect("set above");
            pieces.push(whole.slice(at));
        }
    }
    if json {
        pieces.push(Bytes::from_static(b"]}"));
    }
    Some(Frame::Spliced { text: json, pieces })
}

/// The readings the runs' lists keep alive, each list (or the commit it is
/// a range of) counted once.
fn kept_alive(runs: &[LiveRun<'_>]) -> usize {
    let mut kept = 0;
    let mut last: Option<&Arc<Routed>> = None;
    for (list, _) in runs {
        if !last.is_some_and(|l| l.keeps_same(list)) {
            kept += list.kept_alive();
            last = Some(list);
        }
    }
    kept
}

/// A chunk of a list's encoding, kept alive with the list: what the
/// pieces of a spliced frame are cut from.
struct Chunk {
    list: Arc<Routed>,
    enc: Encoding,
    chunk: u32,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self.list.chunk_bytes(self.enc, self.chunk)
    }
}

/// A MessagePack readings frame up to its items: the map, its `type`, and
/// the `items` array's header; room for `more` bytes after it.
fn msgpack_head(items: usize, more: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + more);
    // Writing into a Vec cannot fail.
    rmp::encode::write_map_len(&mut out, 2).expect("vec write");
    rmp::encode::write_str(&mut out, "type").expect("vec write");
    rmp::encode::write_str(&mut out, "readings").expect("vec write");
    rmp::encode::write_str(&mut out, "items").expect("vec write");
    rmp::encode::write_array_len(&mut out, items as u32).expect("vec write");
    out
}

/// `{"type":"readings","items":[...]}` of the items of `runs` (each range
/// not empty), in order, spliced from their lists' encodings: one copy
/// per run and chunk.
pub fn readings_frame<L: AsRef<Routed>>(enc: Encoding, runs: &[(L, Range<usize>)]) -> Frame {
    match enc {
        Encoding::Json => {
            let parts: Vec<&str> = runs
                .iter()
                .flat_map(|(list, range)| list.as_ref().json_run(range.clone()))
                .collect();
            let len: usize = parts.iter().map(|p| p.len() + 1).sum();
            let mut out = String::with_capacity(len + 32);
            out.push_str(r#"{"type":"readings","items":["#);
            for (n, part) in parts.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(part);
            }
            out.push_str("]}");
            Frame::Text(out)
        }
        Encoding::Msgpack => {
            let parts: Vec<&[u8]> = runs
                .iter()
                .flat_map(|(list, range)| list.as_ref().msgpack_run(range.clone()))
                .collect();
            let len: usize = parts.iter().map(|p| p.len()).sum();
            let items: usize = runs.iter().map(|(_, range)| range.len()).sum();
            let mut out = msgpack_head(items, len);
            for part in parts {
                out.extend_from_slice(part);
            }
            Frame::Binary(out.into())
        }
    }
}

/// Server → subscriber messages other than readings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Notice {
    Subscribed { topics: Vec<String>, last_id: u64 },
    Unsubscribed { topics: Vec<String> },
    Truncated { oldest_id: u64 },
    Lagged { dropped: u64 },
    Error { code: ErrorCode, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCode {
    Invalid,
    Forbidden,
}

impl Notice {
    pub fn error(code: ErrorCode, detail: impl Into<String>) -> Notice {
        Notice::Error {
            code,
            detail: detail.into(),
        }
    }

    pub fn encode(&self, enc: Encoding) -> Frame {
        match enc {
            Encoding::Json => {
                Frame::Text(serde_json::to_string(self).expect("notices always encode"))
            }
            Encoding::Msgpack => Frame::Binary(
                rmp_serde::to_vec_named(self)
                    .expect("notices always encode")
                    .into(),
            ),
        }
    }
}

/// Subscriber → server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Subscribe {
        topics: Vec<String>,
        #[serde(default)]
        since: Option<u64>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
}

/// Decodes a client message: JSON from a text frame, MessagePack from a
/// binary one (either is accepted whatever the handshake chose). The error
/// is the `detail` of an `invalid` notice.
pub fn decode_op(text: Option<&str>, binary: Option<&[u8]>) -> Result<Op, String> {
    let value: serde_json::Value = match (text, binary) {
        (Some(t), _) => serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?,
        (None, Some(b)) => rmp_serde::from_slice(b).map_err(|e| format!("not MessagePack: {e}"))?,
        (None, None) => return Err("empty message".into()),
    };
    let op = value
        .get("op")
        .ok_or("missing \"op\"")?
        .as_str()
        .ok_or("\"op\" must be a string")?
        .to_string();
    if op != "subscribe" && op != "unsubscribe" {
        return Err(format!(
            "unknown op {op:?} (expected \"subscribe\" or \"unsubscribe\")"
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("bad {op}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Items covering every field form: each value kind and its integer
    /// sizes, optional fields present and absent, strings that need escaping.
    fn varied_items() -> Vec<(Reading, Option<Arc<str>>)> {
        let values = [
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(0),
            Value::Int(-1),
            Value::Int(-33),
            Value::Int(-129),
            Value::Int(-40_000),
            Value::Int(-3_000_000_000),
            Value::Int(i64::MIN),
            Value::Int(127),
            Value::Int(255),
            Value::Int(65_535),
            Value::Int(4_294_967_296),
            Value::Int(i64::MAX),
            Value::UInt(u64::MAX),
            Value::Float(21.5),
            Value::Float(-0.0),
            Value::Float(1e-7),
            Value::Float(1.0e300),
            Value::Float(3.0),
            Value::Float(f64::NAN),
            Value::Str(String::new()),
            Value::Str("open".into()),
            Value::Str("a \"quoted\" \\ line\nwith\ttabs \u{1} and é°".into()),
        ];
        let mut items = Vec::new();
        for (n, value) in values.into_iter().enumerate() {
            let n = n as u64;
            let unit = match n % 3 {
                0 => None,
                1 => Some("°C".into()),
                _ => Some("\"in\"".into()),
            };
            let origin = (n % 2 == 0).then(|| Arc::<str>::from(format!("site-{n}\r")));
            let reading = Reading {
                id: [0, 1, 200, 70_000, u64::MAX][n as usize % 5],
                device: format!("dev-{n}").into(),
                sensor: ["t", "sensor_1.x:y-z", "s\u{7f}"][n as usize % 3].into(),
                ts: [1_763_800_000_123, -5, 0][n as usize % 3],
                value,
                unit,
                received: [i64::MAX, 1_763_800_000_124, -1][n as usize % 3],
            };
            items.push((reading, origin));
        }
        items
    }

    #[test]
    fn items_are_encoded_as_serde_encodes_them() {
        for (reading, origin) in varied_items() {
            let wire = wire(&reading, origin.as_deref());
            let list = Routed::new(vec![reading.clone()], origin.clone());
            assert_eq!(
                json_of(&list, 0..1),
                serde_json::to_string(&wire).unwrap(),
                "{wire:?}"
            );
            assert_eq!(
                msgpack_of(&list, 0..1),
                rmp_serde::to_vec_named(&wire).unwrap(),
                "{wire:?}"
            );
        }
    }

    /// A run as one string, its chunks' slices joined as a frame joins
    /// them.
    fn json_of(list: &Routed, range: Range<usize>) -> String {
        list.json_run(range).collect::<Vec<_>>().join(",")
    }

    fn msgpack_of(list: &Routed, range: Range<usize>) -> Vec<u8> {
        list.msgpack_run(range).collect::<Vec<_>>().concat()
    }

    /// Checks every run of `readings` as a list against serde's encoding
    /// of each item, one after the other (with a comma between two in
    /// JSON); `step` thins out the runs tried for a long list.
    fn check_runs(readings: &[Reading], origin: Option<Arc<str>>, step: usize) {
        let list = Routed::new(readings.to_vec(), origin.clone());
        let json: Vec<String> = readings
            .iter()
            .map(|r| serde_json::to_string(&wire(r, origin.as_deref())).unwrap())
            .collect();
        let msgpack: Vec<Vec<u8>> = readings
            .iter()
            .map(|r| rmp_serde::to_vec_named(&wire(r, origin.as_deref())).unwrap())
            .collect();
        for start in (0..readings.len()).step_by(step) {
            for end in (start + 1..=readings.len()).step_by(step) {
                assert_eq!(json_of(&list, start..end), json[start..end].join(","));
                assert_eq!(msgpack_of(&list, start..end), msgpack[start..end].concat());
            }
        }
    }

    /// Every run of a list is its items as serde encodes them, whatever the
    /// sizes of the items around it.
    #[test]
    fn a_run_of_a_list_is_its_items_spliced() {
        for origin in [None, Some(Arc::<str>::from("site \"b\""))] {
            let readings: Vec<Reading> = varied_items().into_iter().map(|(r, _)| r).collect();
            check_runs(&readings, origin, 1);
        }
    }

    /// The same across chunks: a list of thousands is encoded in several,
    /// an item bigger than a chunk gets one of its own, and a run may
    /// start, end or lie wholly inside any of them.
    #[test]
    fn a_run_across_chunks_is_its_items_spliced() {
        let mut readings: Vec<Reading> = varied_items()
            .into_iter()
            .map(|(r, _)| r)
            .cycle()
            .take(3_000)
            .collect();
        readings[1_500].value = Value::Str("x".repeat(CHUNK_BYTES + 1));
        let list = Routed::new(readings.clone(), None);
        let chunks = list
            .msgpack
            .get_or_init(|| list.encode(MSGPACK_MAX_FIXED, 0, write_msgpack));
        assert!(chunks.chunks.len() >= 5, "{} chunks", chunks.chunks.len());
        let big = chunks.ends[1_500].0;
        assert_ne!(chunks.ends[1_499].0, big);
        assert_ne!(chunks.ends[1_501].0, big);
        check_runs(&readings, None, 97);
        check_runs(&readings[1_490..1_510], Some("o".into()), 1);
    }

    /// The buffers are sized so that no item needs a second allocation:
    /// the fixed parts' bounds hold at every integer's extreme and the
    /// longest float. (Strings that need escaping may grow it; they are
    /// rare.)
    #[test]
    fn encoded_items_fit_their_first_buffer() {
        let mut extremes = Vec::new();
        for value in [
            Value::Int(i64::MIN),
            Value::UInt(u64::MAX),
            Value::Float(-1.2345678901234567e-308),
            Value::Str("v".into()),
            Value::Bool(false),
        ] {
            let reading = Reading {
                id: u64::MAX,
                device: "d".into(),
                sensor: "s".into(),
                ts: i64::MIN,
                value,
                unit: Some("u".into()),
                received: i64::MIN,
            };
            extremes.push(reading);
        }
        let json = |w: &StreamItem<'_>| {
            let mut out = Vec::new();
            write_json(&mut out, w);
            out.len()
        };
        let msgpack = |w: &StreamItem<'_>| {
            let mut out = Vec::new();
            write_msgpack(&mut out, w);
            out.len()
        };
        for reading in &extremes {
            let wire = wire(reading, Some("o"));
            let room = strings_len(&wire);
            assert!(json(&wire) <= JSON_MAX_FIXED + room, "{wire:?}");
            assert!(msgpack(&wire) <= MSGPACK_MAX_FIXED + room, "{wire:?}");
        }
        // A list of them is encoded in the buffer it was given, never grown.
        let list = Routed::new(extremes.clone(), Some("o".into()));
        for (fixed, gap, write) in [
            (
                JSON_MAX_FIXED,
                1,
                write_json as fn(&mut Vec<u8>, &StreamItem<'_>),
            ),
            (MSGPACK_MAX_FIXED, 0, write_msgpack),
        ] {
            let room: usize = extremes
                .iter()
                .map(|r| fixed + gap + strings_len(&wire(r, Some("o"))))
                .sum();
            let encoded = list.encode(fixed, gap, write);
            let capacity: usize = encoded.chunks.iter().map(Vec::capacity).sum();
            assert_eq!(capacity, room);
            assert_eq!(encoded.ends.len(), extremes.len());
        }
        // Both bounds are tight. JSON: the longest float at every extreme.
        // MessagePack: strings long enough for 5-byte headers.
        let longest = wire(&extremes[2], Some("o"));
        assert_eq!(json(&longest), JSON_MAX_FIXED + strings_len(&longest));
        let long: Arc<str> = "x".repeat(1 << 16).into();
        let reading = Reading {
            id: u64::MAX,
            device: long.clone(),
            sensor: long.clone(),
            ts: i64::MIN,
            value: Value::Int(i64::MIN),
            unit: Some(long.clone()),
            received: i64::MIN,
        };
        let wire = wire(&reading, Some(&long));
        assert_eq!(msgpack(&wire), MSGPACK_MAX_FIXED + strings_len(&wire));
    }

    fn list(ids: std::ops::Range<u64>) -> Routed {
        let readings = ids.map(|id| Reading {
            id,
            device: "d1".into(),
            sensor: "temp".into(),
            ts: 5,
            value: Value::Float(21.5),
            unit: Some("C".into()),
            received: 7,
        });
        Routed::new(readings.collect(), None)
    }

    #[test]
    fn json_frame_splices_runs() {
        let (a, b) = (list(1..3), list(3..5));
        let runs = [(&a, 1..2), (&b, 0..2)];
        let Frame::Text(t) = readings_frame(Encoding::Json, &runs) else {
            panic!("JSON frames are text");
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"type":"readings","items":[
                {"id":2,"device":"d1","sensor":"temp","ts":5,"value":21.5,"unit":"C","received":7},
                {"id":3,"device":"d1","sensor":"temp","ts":5,"value":21.5,"unit":"C","received":7},
                {"id":4,"device":"d1","sensor":"temp","ts":5,"value":21.5,"unit":"C","received":7}]})
        );
    }

    #[test]
    fn msgpack_frame_decodes_to_the_same_fields() {
        let (a, b) = (list(1..4), list(4..6));
        let runs = [(&a, 0..1), (&a, 2..3), (&b, 1..2)];
        let Frame::Binary(b) = readings_frame(Encoding::Msgpack, &runs) else {
            panic!("MessagePack frames are binary");
        };
        let v: serde_json::Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(v["type"], "readings");
        let ids: Vec<_> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].clone())
            .collect();
        assert_eq!(ids, [1, 3, 5]);
        assert_eq!(v["items"][0]["unit"], "C");
    }

    /// A frame's payload, whole: a spliced one's pieces put together.
    fn payload(frame: Frame) -> (bool, Vec<u8>, bool) {
        match frame {
            Frame::Text(t) => (true, t.into_bytes(), false),
            Frame::Binary(b) => (false, b.to_vec(), false),
            Frame::Spliced { text, pieces } => (text, pieces.concat(), true),
        }
    }

    /// A big enough frame that holds most of what its lists keep alive is
    /// spliced from their encodings (no copy: the pieces hold the lists),
    /// byte for byte what the copy gives, also for a run across chunks, and
    /// stays valid once the queue has let go of the lists. One that is
    /// small, holds too little of its lists or of the commit they are
    /// ranges of, or is made of too many runs, is copied.
    #[test]
    fn live_frames_are_spliced_only_where_that_pays() {
        for enc in [Encoding::Json, Encoding::Msgpack] {
            // 200 readings (about 20 KiB as JSON), and 1,000 (three JSON
            // chunks, two for MessagePack), of which 2 and 200 are left out.
            let (a, b) = (Arc::new(list(1..201)), Arc::new(list(201..1201)));
            let runs = [(&a, 0..200), (&b, 0..50), (&b, 52..850)];
            let copied = payload(readings_frame(enc, &runs));
            let frame = live_frame(enc, &runs);
            assert!(
                Arc::strong_count(&b) > 1,
                "{enc:?}: the frame holds its lists"
            );
            drop((a, b));
            let spliced = payload(frame);
            assert!(spliced.2, "{enc:?}: spliced");
            assert_eq!(spliced.0, enc == Encoding::Json, "{enc:?}: text for JSON");
            assert_eq!(spliced.1, copied.1, "{enc:?}: the same bytes");

            let copy = |runs: &[LiveRun<'_>], why: &str| {
                let (_, bytes, spliced) = payload(live_frame(enc, runs));
                assert!(!spliced, "{enc:?}: copied when {why}");
                assert_eq!(bytes, payload(readings_frame(enc, runs)).1);
            };
            let small = Arc::new(list(1..11));
            copy(&[(&small, 0..10)], "small");
            let big = Arc::new(list(1..1001));
            copy(
                &[(&big, 0..799)],
                "a fifth of what it keeps alive is not in it",
            );
            let commit: Arc<Commit> = Arc::new(list(1..1001).readings().to_vec().into());
            let (first, rest) = (
                Arc::new(Routed::of_commit(&commit, 0..500)),
                Arc::new(Routed::of_commit(&commit, 500..1000)),
            );
            let (_, _, spliced) = payload(live_frame(enc, &[(&first, 0..500), (&rest, 0..300)]));
            assert!(spliced, "{enc:?}: four fifths of the commit");
            copy(
                &[(&rest, 0..500)],
                "its list is half of the commit it keeps alive",
            );
            let lists: Vec<_> = (0..17u64)
                .map(|n| Arc::new(list(n * 20..n * 20 + 20)))
                .collect();
            let many: Vec<LiveRun<'_>> = lists.iter().map(|l| (l, 0..20)).collect();
            copy(&many, "made of too many runs");
        }
    }

    #[test]
    fn steps_cover_the_length_in_order() {
        assert_eq!(steps(10, 4).collect::<Vec<_>>(), [0..4, 4..8, 8..10]);
        assert_eq!(steps(8, 4).collect::<Vec<_>>(), [0..4, 4..8]);
        assert!(steps(3, 4).eq(std::iter::once(0..3)));
        assert_eq!(steps(0, 4).count(), 0);
    }

    #[test]
    fn ops_decode_and_reject_unknown() {
        assert_eq!(
            decode_op(
                Some(r##"{"op":"subscribe","topics":["#"],"since":3}"##),
                None
            ),
            Ok(Op::Subscribe {
                topics: vec!["#".into()],
                since: Some(3)
            })
        );
        assert!(decode_op(Some(r#"{"op":"nope"}"#), None)
            .unwrap_err()
            .contains("unknown op"));
        assert!(decode_op(Some("{"), None).is_err());
        assert!(decode_op(Some(r#"{"op":"subscribe"}"#), None).is_err());
    }

    #[test]
    fn notices_are_tagged_by_type() {
        let Frame::Text(t) = Notice::Lagged { dropped: 3 }.encode(Encoding::Json) else {
            panic!()
        };
        assert_eq!(t, r#"{"type":"lagged","dropped":3}"#);
    }
}
