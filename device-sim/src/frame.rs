//! What a subscriber reads off a server frame: its `type`, each item's
//! `device` and `ts` in a `readings` message, `dropped` in a `lagged` one.
//!
//! Two readers per encoding. The fast one walks a `readings` frame laid out
//! exactly as the daemon writes it (SPEC §4; `write_json`, `write_msgpack`
//! and `readings_frame` in the daemon's `fanout::wire`): the envelope's two
//! keys in that order, each item's fields in the daemon's order, JSON
//! without whitespace. It gives up, returning `None`, at anything else, and
//! serde then reads the frame, so a frame laid out otherwise is still
//! counted, only more slowly. serde reads only `device` and `ts` of an item
//! (device-sim's reader before this one also required `id`, `sensor` and
//! `received`).
//!
//! Why by hand: parsing its subscribers' frames with serde was most of
//! device-sim's own CPU: about half of it at 1 M JSON deliveries/s, a third
//! at the MessagePack flood. device-sim shares the machine's cores with the
//! daemon it measures, so whatever it spends there is taken from the daemon.
//! The fast readers check the layout but only decode the two fields
//! measured, stepping over the others' values (MessagePack with the wire
//! crate's cursor, which the daemon's batch decoder uses too). The tests
//! compare both readers on frames serde writes: the daemon's own tests
//! check that its items are byte for byte what serde writes.

use sensorgate_wire::msgpack::{Cursor, Scalar};
use serde::Deserialize;

/// A frame, flattened to what is measured.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub items: Vec<Measured<'a>>,
    #[serde(default)]
    pub dropped: u64,
}

/// What is measured of one reading: whose it is and its `ts` (serde skips
/// the other fields of an item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Measured<'a> {
    pub device: &'a str,
    pub ts: i64,
}

/// Reads a JSON frame (a text message).
pub fn json(text: &str) -> Option<Frame<'_>> {
    fast_json(text).or_else(|| serde_json::from_str(text).ok())
}

/// Reads a MessagePack frame (a binary message).
pub fn msgpack(bytes: &[u8]) -> Option<Frame<'_>> {
    fast_msgpack(bytes).or_else(|| rmp_serde::from_slice(bytes).ok())
}

fn readings(items: Vec<Measured<'_>>) -> Frame<'_> {
    Frame {
        kind: "readings",
        items,
        dropped: 0,
    }
}

/// A `readings` frame as the daemon writes its JSON, or `None`.
fn fast_json(text: &str) -> Option<Frame<'_>> {
    let rest = text.as_bytes();
    let rest = rest.strip_prefix(br#"{"type":"readings","items":["#)?;
    let mut c = Text { text, rest };
    let mut items = Vec::new();
    if !c.eat(b']') {
        loop {
            items.push(c.item()?);
            if c.eat(b']') {
                break;
            }
            c.expect(b',')?;
        }
    }
    (c.rest == b"}").then(|| readings(items))
}

/// The rest of a JSON frame, as bytes (cut only next to ASCII punctuation),
/// and the whole frame, whose strings are taken as `&str` where they lie.
struct Text<'a> {
    text: &'a str,
    rest: &'a [u8],
}

impl<'a> Text<'a> {
    fn eat(&mut self, b: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == b => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.eat(b).then_some(())
    }

    /// Takes `bytes` if the rest starts with them.
    fn eat_tag(&mut self, bytes: &[u8]) -> bool {
        match self.rest.strip_prefix(bytes) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn tag(&mut self, bytes: &[u8]) -> Option<()> {
        self.eat_tag(bytes).then_some(())
    }

    /// `{"id":..,"device":"..","sensor":"..","ts":..,"value":..`, then
    /// `"unit"` if any, `"received"`, `"origin"` if any: the daemon's
    /// order (SPEC §4).
    fn item(&mut self) -> Option<Measured<'a>> {
        self.tag(br#"{"id":"#)?;
        self.digits()?;
        self.tag(br#","device":"#)?;
        let device = self.plain_string()?;
        let device = self.as_str(device)?;
        self.tag(br#","sensor":"#)?;
        self.plain_string()?;
        self.tag(br#","ts":"#)?;
        let ts = self.integer()?;
        self.tag(br#","value":"#)?;
        self.skip_value()?;
        if self.eat_tag(br#","unit":"#) {
            self.skip_string()?;
        }
        self.tag(br#","received":"#)?;
        self.integer()?;
        if self.eat_tag(br#","origin":"#) {
            self.skip_string()?;
        }
        self.expect(b'}')?;
        Some(Measured { device, ts })
    }

    /// `bytes` (a part of the frame) as the `&str` they are in the frame.
    /// Why not `from_utf8`: the frame was checked whole, so only the two
    /// ends need to fall between characters, as they always do.
    fn as_str(&self, bytes: &[u8]) -> Option<&'a str> {
        let start = bytes.as_ptr() as usize - self.text.as_ptr() as usize;
        self.text.get(start..start + bytes.len())
    }

    /// A string without escapes (names; SPEC §2). One with an escape is
    /// refused: a `\"` in it would end it early.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let len = memchr::memchr(b'"', self.rest)?;
        let (s, rest) = self.rest.split_at(len);
        if memchr::memchr(b'\\', s).is_some() {
            return None;
        }
        self.rest = &rest[1..];
        Some(s)
    }

    /// Digits, as many as there are (an id, whose value is not needed).
    fn digits(&mut self) -> Option<()> {
        let len = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        self.rest = &self.rest[len..];
        (len > 0).then_some(())
    }

    /// An integer (`-`? digits), no fraction or exponent.
    fn integer(&mut self) -> Option<i64> {
        let (negative, digits) = match self.rest.split_first()? {
            (b'-', rest) => (true, rest),
            _ => (false, self.rest),
        };
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || len > 19 {
            return None;
        }
        // At most 19 digits: below 10^19, within a u64.
        let n = digits[..len]
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        let n = if negative {
            0i64.checked_sub_unsigned(n)?
        } else {
            i64::try_from(n).ok()?
        };
        self.rest = &digits[len..];
        Some(n)
    }

    /// A string, escapes and all.
    fn skip_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        let mut n = 0;
        loop {
            n += memchr::memchr2(b'"', b'\\', self.rest.get(n..)?)?;
            match self.rest[n] {
                b'"' => break,
                _ => n += 2,
            }
        }
        self.rest = self.rest.get(n + 1..)?;
        Some(())
    }

    /// A value: a string, or a number, `true`, `false` or `null`. An array
    /// or an object is left to serde.
    fn skip_value(&mut self) -> Option<()> {
        match self.rest.first()? {
            b'"' => self.skip_string(),
            b'[' | b'{' | b',' | b'}' => None,
            // In valid JSON a scalar runs to the next `,` or `}`; the
            // fields after it are checked.
            _ => {
                let len = memchr::memchr2(b',', b'}', self.rest)?;
                self.rest = &self.rest[len..];
                Some(())
            }
        }
    }
}

/// A `readings` frame as the daemon writes its MessagePack, or `None`.
fn fast_msgpack(bytes: &[u8]) -> Option<Frame<'_>> {
    let mut c = Cursor::new(bytes);
    if !c.eat(b"\x82\xa4type\xa8readings\xa5items") {
        return None;
    }
    let n = c.array_len()?;
    // Not more than the bytes could hold (a map is at least one byte).
    let mut items = Vec::with_capacity(n.min(c.rest().len()));
    for _ in 0..n {
        items.push(packed_item(&mut c)?);
    }
    c.rest().is_empty().then(|| readings(items))
}

/// A map of `id`, `device`, `sensor`, `ts`, `value`, `unit` if any,
/// `received`, `origin` if any: the daemon's order (SPEC §4), its length
/// matching the fields there are.
fn packed_item<'a>(c: &mut Cursor<'a>) -> Option<Measured<'a>> {
    let fields = c.map_len()?;
    let int = |c: &mut Cursor<'a>| match c.scalar()? {
        Scalar::Int(n) => Some(n),
        _ => None,
    };
    let tag = |c: &mut Cursor<'a>, key: &[u8]| c.eat(key).then_some(());
    tag(c, b"\xa2id")?;
    int(c)?;
    tag(c, b"\xa6device")?;
    let device = std::str::from_utf8(c.string()?).ok()?;
    tag(c, b"\xa6sensor")?;
    c.string()?;
    tag(c, b"\xa2ts")?;
    let ts = int(c)?.to_i64()?;
    tag(c, b"\xa5value")?;
    c.scalar()?;
    let unit = c.eat(b"\xa4unit");
    if unit {
        c.string()?;
    }
    tag(c, b"\xa8received")?;
    int(c)?.to_i64()?;
    let origin = c.eat(b"\xa6origin");
    if origin {
        c.string()?;
    }
    (fields == 6 + usize::from(unit) + usize::from(origin)).then_some(Measured { device, ts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use sensorgate_wire::{StreamItem, Value};
    use std::borrow::Cow;

    /// A value of any kind: integers of every size, floats (a non-finite
    /// one is JSON's `null`), strings short and long (MessagePack's str8
    /// and str16), empty, and with escapes and JSON's punctuation inside.
    fn value(rng: &mut SmallRng) -> Value {
        match rng.gen_range(0..10) {
            0 => Value::Bool(rng.gen()),
            1 => Value::Int(rng.gen::<i64>() >> rng.gen_range(0..64)),
            2 => Value::UInt(rng.gen::<u64>() >> rng.gen_range(0..64)),
            3 => Value::Float(rng.gen_range(-1e9..1e9)),
            4 => Value::Float([f64::NAN, f64::INFINITY, -0.0][rng.gen_range(0..3)]),
            5 => Value::Str("open, \"quoted\" {x} [y]},{\\".into()),
            6 => Value::Str("a".repeat(40)),
            7 => Value::Str("b".repeat(300)),
            8 => Value::Str(String::new()),
            _ => Value::Str("\\\"".into()),
        }
    }

    /// Items as the daemon writes them, with every optional field.
    fn items<'v>(rng: &mut SmallRng, values: &'v [Value]) -> Vec<StreamItem<'v>> {
        values
            .iter()
            .enumerate()
            .map(|(n, value)| StreamItem {
                id: rng.gen::<u64>() >> rng.gen_range(0..64),
                device: ["sim-1", "sim-22", "x"][n % 3],
                sensor: "temp",
                ts: rng.gen::<i64>() >> rng.gen_range(0..64),
                value,
                unit: rng
                    .gen_bool(0.5)
                    .then(|| Cow::Borrowed(["°C", "\"in\"", ""][n % 3])),
                received: rng.gen::<i64>() >> rng.gen_range(0..64),
                origin: rng.gen_bool(0.2).then_some(Cow::Borrowed("edge-2\r")),
            })
            .collect()
    }

    /// The `readings` frames of `items`, spliced as the daemon does it.
    fn frames(items: &[StreamItem<'_>]) -> (String, Vec<u8>) {
        let json: Vec<String> = items
            .iter()
            .map(|i| serde_json::to_string(i).unwrap())
            .collect();
        let json = format!(r#"{{"type":"readings","items":[{}]}}"#, json.join(","));
        let mut packed = Vec::new();
        rmp::encode::write_map_len(&mut packed, 2).unwrap();
        rmp::encode::write_str(&mut packed, "type").unwrap();
        rmp::encode::write_str(&mut packed, "readings").unwrap();
        rmp::encode::write_str(&mut packed, "items").unwrap();
        rmp::encode::write_array_len(&mut packed, items.len() as u32).unwrap();
        for i in items {
            packed.extend(rmp_serde::to_vec_named(i).unwrap());
        }
        (json, packed)
    }

    #[test]
    fn the_daemons_frames_take_the_fast_path_and_read_as_serde_reads_them() {
        let mut rng = SmallRng::seed_from_u64(7);
        for len in [0, 1, 2, 15, 16, 17, 300] {
            let values: Vec<Value> = (0..len).map(|_| value(&mut rng)).collect();
            let items = items(&mut rng, &values);
            let (text, packed) = frames(&items);
            let want: Vec<Measured<'_>> = items
                .iter()
                .map(|i| Measured {
                    device: i.device,
                    ts: i.ts,
                })
                .collect();
            let from_serde: Frame<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(from_serde.items, want, "{text}");
            assert!(
                fast_json(&text) == Some(from_serde),
                "{len} items: {text:.300}"
            );
            let from_serde: Frame<'_> = rmp_serde::from_slice(&packed).unwrap();
            assert_eq!(from_serde.items, want);
            assert!(fast_msgpack(&packed) == Some(from_serde), "{len} items");
        }
    }

    #[test]
    fn other_layouts_are_left_to_serde() {
        let item = r#"{"id":1,"device":"sim-1","sensor":"t","ts":-5,"value":2,"received":2}"#;
        let seen = vec![Measured {
            device: "sim-1",
            ts: -5,
        }];
        let frame = |items: &str| format!(r#"{{"type":"readings","items":[{items}]}}"#);
        assert_eq!(fast_json(&frame(item)).unwrap().items, seen);
        for text in [
            // A value that is an array.
            frame(&item.replace(":2,", ":[2],")),
            // Whitespace.
            frame(&format!(" {item}")),
            // The item's fields in another order, or only the two measured.
            frame(r#"{"device":"sim-1","id":1,"sensor":"t","ts":-5,"value":2,"received":2}"#),
            frame(r#"{"device":"sim-1","ts":-5}"#),
            // The frame's keys in another order.
            format!(r#"{{"items":[{item}],"type":"readings"}}"#),
        ] {
            assert_eq!(fast_json(&text), None, "{text}");
            assert_eq!(json(&text).unwrap().items, seen, "{text}");
        }
        // A field twice: serde refuses it, and so does the fast path.
        let twice = frame(&item.replace(r#""received":2"#, r#""received":2,"ts":5"#));
        assert_eq!(fast_json(&twice), None);
        assert_eq!(json(&twice), None);
        let lagged = json(r#"{"type":"lagged","dropped":3}"#).unwrap();
        assert_eq!((lagged.kind, lagged.dropped), ("lagged", 3));
        let lagged = rmp_serde::to_vec_named(&serde_json::json!({"type": "lagged", "dropped": 3}));
        assert_eq!(msgpack(&lagged.unwrap()).unwrap().dropped, 3);
        // MessagePack: an item whose value is an array of one 1, and one
        // whose map says one field more than it has.
        let head = b"\x82\xa4type\xa8readings\xa5items\x91";
        let fields = b"\xa2id\x01\xa6device\xa5sim-1\xa6sensor\xa1t\xa2ts\x05\xa5value";
        let tail = b"\xa8received\x02";
        let packed = |len: u8, value: &[u8]| [&head[..], &[len], fields, value, tail].concat();
        assert_eq!(fast_msgpack(&packed(0x86, b"\x02")).unwrap().items[0].ts, 5);
        assert_eq!(fast_msgpack(&packed(0x86, b"\x91\x02")), None);
        assert_eq!(fast_msgpack(&packed(0x87, b"\x02")), None);
    }

    #[test]
    fn damaged_frames_are_rejected_by_both_readers_without_panicking() {
        let mut rng = SmallRng::seed_from_u64(11);
        let values: Vec<Value> = (0..20).map(|_| value(&mut rng)).collect();
        let (text, packed) = frames(&items(&mut rng, &values));
        // Every cut short (a frame is whole or it is not one).
        for cut in 0..text.len() {
            if let Some(head) = text.get(..cut) {
                assert_eq!(json(head), None, "{head}");
            }
        }
        for cut in 0..packed.len() {
            assert_eq!(msgpack(&packed[..cut]), None, "cut at {cut}");
        }
        // Something after the frame.
        assert_eq!(fast_json(&format!("{text}x")), None);
        assert_eq!(fast_msgpack(&[&packed[..], b"\xc0"].concat()), None);
        // A count larger than what follows.
        assert_eq!(
            msgpack(b"\x82\xa4type\xa8readings\xa5items\xdd\xff\xff\xff\xff"),
            None
        );
        // A whole item without its ts, in either encoding.
        let no_ts = r#"{"id":1,"device":"d","sensor":"s","value":1,"received":2}"#;
        let no_ts = format!(r#"{{"type":"readings","items":[{no_ts}]}}"#);
        assert_eq!(json(&no_ts), None);
        let no_ts: serde_json::Value = serde_json::from_str(&no_ts).unwrap();
        assert_eq!(msgpack(&rmp_serde::to_vec_named(&no_ts).unwrap()), None);
    }

    /// Bytes changed at random: neither reader panics, and where both read
    /// a frame they read the same.
    #[test]
    fn changed_bytes_never_panic_and_both_readers_agree_when_both_read() {
        let mut rng = SmallRng::seed_from_u64(13);
        let values: Vec<Value> = (0..6).map(|_| value(&mut rng)).collect();
        let (text, packed) = frames(&items(&mut rng, &values));
        let mut both = 0;
        for _ in 0..4_000 {
            let mut bytes = text.clone().into_bytes();
            let at = rng.gen_range(0..bytes.len());
            // JSON's punctuation, digits and letters: changes that keep
            // the frame close to valid.
            let choices = b"\"{}[],:0-9e.\\a ";
            bytes[at] = choices[rng.gen_range(0..choices.len())];
            if let Ok(changed) = String::from_utf8(bytes) {
                let fast = fast_json(&changed);
                let serde = serde_json::from_str::<Frame<'_>>(&changed).ok();
                if let (Some(fast), Some(serde)) = (&fast, &serde) {
                    assert_eq!(fast, serde, "{changed}");
                    both += 1;
                }
            }
            let mut bytes = packed.clone();
            let at = rng.gen_range(0..bytes.len());
            bytes[at] = rng.gen();
            let fast = fast_msgpack(&bytes);
            let serde = rmp_serde::from_slice::<Frame<'_>>(&bytes).ok();
            if let (Some(fast), Some(serde)) = (&fast, &serde) {
                assert_eq!(fast, serde);
                both += 1;
            }
        }
        // Many changes leave a frame both read (a changed digit, say).
        assert!(both > 1_000, "{both}");
    }
}
