//! What a subscriber reads off a server frame: its `type`, each item's
//! `device` and `ts` in a `readings` message, `dropped` in a `lagged` one.
//!
//! Two readers per encoding. The fast one walks a `readings` frame laid out
//! exactly as the daemon writes it (SPEC §4: `{"type":"readings",
//! "items":[...]}` with no whitespace, or the MessagePack map with the same
//! two keys in that order) and gives up, returning `None`, at anything else.
//! serde then reads the frame as before, so a frame that is not laid out
//! that way is still counted, only more slowly.
//!
//! Why by hand: parsing its subscribers' frames with serde was most of
//! device-sim's own CPU: about half of it at 1 M JSON deliveries/s, a third
//! at the MessagePack flood. device-sim shares the machine's cores with the
//! daemon it measures, so whatever it spends there is taken from the daemon.
//! The fast readers only find the two fields they need and step over the
//! rest. The tests compare both readers on frames serde writes.

use serde::Deserialize;

/// A frame, flattened to what is measured.
#[derive(Debug, PartialEq, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub items: Vec<Seen<'a>>,
    #[serde(default)]
    pub dropped: u64,
}

/// What is measured of one reading: whose it is and its `ts` (serde skips
/// the other fields of an item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Seen<'a> {
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

fn readings(items: Vec<Seen<'_>>) -> Frame<'_> {
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
            items.push(c.json_item()?);
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

    /// `{"id":..,"device":"..","sensor":"..","ts":..,"value":..` and then
    /// any more fields with scalar values: the daemon's order (SPEC §4).
    fn json_item(&mut self) -> Option<Seen<'a>> {
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
        self.skip_scalar()?;
        // `unit`, `received`, `origin`.
        while self.eat(b',') {
            self.plain_string()?;
            self.expect(b':')?;
            self.skip_scalar()?;
        }
        self.expect(b'}')?;
        Some(Seen { device, ts })
    }

    /// `bytes` (a part of the frame) as the `&str` they are in the frame.
    /// Why not `from_utf8`: the frame was checked whole, so only the two
    /// ends need to fall between characters, as they always do.
    fn as_str(&self, bytes: &[u8]) -> Option<&'a str> {
        let start = bytes.as_ptr() as usize - self.text.as_ptr() as usize;
        self.text.get(start..start + bytes.len())
    }

    fn tag(&mut self, bytes: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(bytes)?;
        Some(())
    }

    /// A string without escapes (keys and names; SPEC §2). One with an
    /// escape is refused: a `\"` in it would end it early.
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

    /// Digits (an id: any u64).
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

    /// A string (escapes and all) or a bare scalar, up to the `,` or `}`
    /// after it. An array or an object is left to serde.
    fn skip_scalar(&mut self) -> Option<()> {
        let end = if self.rest.first() == Some(&b'"') {
            let mut n = 1;
            loop {
                n += memchr::memchr2(b'"', b'\\', self.rest.get(n..)?)?;
                match self.rest[n] {
                    b'"' => break n + 1,
                    _ => n += 2,
                }
            }
        } else {
            // A number, `true`, `false` or `null`: in valid JSON, what
            // does not start an array or an object runs to the next `,`
            // or `}` (the frame's structure is checked after it).
            if matches!(self.rest.first(), None | Some(b'[' | b'{' | b',' | b'}')) {
                return None;
            }
            memchr::memchr2(b',', b'}', self.rest)?
        };
        self.rest = self.rest.get(end..)?;
        Some(())
    }
}

/// A `readings` frame as the daemon writes its MessagePack, or `None`.
fn fast_msgpack(bytes: &[u8]) -> Option<Frame<'_>> {
    let mut c = Packed(bytes.strip_prefix(b"\x82\xa4type\xa8readings\xa5items")?);
    let n = c.len_of(0x90, 0xdc)?;
    // Not more than the bytes could hold (a map is at least one byte).
    let mut items = Vec::with_capacity(n.min(c.0.len()));
    for _ in 0..n {
        items.push(c.msgpack_item()?);
    }
    c.0.is_empty().then(|| readings(items))
}

/// The rest of a MessagePack frame.
struct Packed<'a>(&'a [u8]);

impl<'a> Packed<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A map's or an array's length: `fix` is its fix form's marker (the
    /// length in the low four bits), `long` its 16-bit form's (the 32-bit
    /// form's is the next).
    fn len_of(&mut self, fix: u8, long: u8) -> Option<usize> {
        match self.byte()? {
            m if m & 0xf0 == fix => Some(usize::from(m & 0x0f)),
            m if m == long => Some(usize::from(u16::from_be_bytes(self.be()?))),
            m if m == long + 1 => usize::try_from(u32::from_be_bytes(self.be()?)).ok(),
            _ => None,
        }
    }

    /// A map with a `device` and a `ts`; values are scalars.
    fn msgpack_item(&mut self) -> Option<Seen<'a>> {
        let (mut device, mut ts) = (None, None);
        for _ in 0..self.len_of(0x80, 0xde)? {
            let marker = self.byte()?;
            match self.str_body(marker)? {
                b"device" => {
                    let marker = self.byte()?;
                    device = Some(std::str::from_utf8(self.str_body(marker)?).ok()?);
                }
                b"ts" => ts = Some(self.integer()?),
                _ => self.skip_scalar()?,
            }
        }
        Some(Seen {
            device: device?,
            ts: ts?,
        })
    }

    /// The bytes of a string whose marker was `marker`.
    fn str_body(&mut self, marker: u8) -> Option<&'a [u8]> {
        let len = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => usize::from(u16::from_be_bytes(self.be()?)),
            0xdb => usize::try_from(u32::from_be_bytes(self.be()?)).ok()?,
            _ => return None,
        };
        self.take(len)
    }

    /// An integer that fits an `i64`, in any of MessagePack's forms.
    fn integer(&mut self) -> Option<i64> {
        Some(match self.byte()? {
            m @ 0x00..=0x7f => i64::from(m),
            m @ 0xe0..=0xff => i64::from(m as i8),
            0xcc => i64::from(self.byte()?),
            0xcd => i64::from(u16::from_be_bytes(self.be()?)),
            0xce => i64::from(u32::from_be_bytes(self.be()?)),
            0xcf => i64::try_from(u64::from_be_bytes(self.be()?)).ok()?,
            0xd0 => i64::from(i8::from_be_bytes(self.be()?)),
            0xd1 => i64::from(i16::from_be_bytes(self.be()?)),
            0xd2 => i64::from(i32::from_be_bytes(self.be()?)),
            0xd3 => i64::from_be_bytes(self.be()?),
            _ => return None,
        })
    }

    /// Nil, a bool, a number or a string. A container, binary or extension
    /// is left to serde.
    fn skip_scalar(&mut self) -> Option<()> {
        let size = match self.byte()? {
            0xc0 | 0xc2 | 0xc3 | 0x00..=0x7f | 0xe0..=0xff => 0,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xca | 0xce | 0xd2 => 4,
            0xcb | 0xcf | 0xd3 => 8,
            m @ (0xa0..=0xbf | 0xd9..=0xdb) => {
                self.str_body(m)?;
                0
            }
            _ => return None,
        };
        self.take(size).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use sensorgate_wire::{StreamItem, Value};
    use std::borrow::Cow;

    /// A value of any kind, strings with and without escapes.
    fn value(rng: &mut SmallRng) -> Value {
        match rng.gen_range(0..6) {
            0 => Value::Bool(rng.gen()),
            1 => Value::Int(rng.gen::<i64>() >> rng.gen_range(0..64)),
            2 => Value::UInt(rng.gen::<u64>() >> rng.gen_range(0..64)),
            3 => Value::Float(rng.gen_range(-1e9..1e9)),
            4 => Value::Str("open, \"quoted\" {x} [y]\\".into()),
            _ => Value::Str(["a"; 40].concat()),
        }
    }

    /// `n` items as the daemon writes them, with every optional field.
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
                unit: rng.gen_bool(0.5).then_some(Cow::Borrowed("°C")),
                received: rng.gen::<i64>() >> rng.gen_range(0..64),
                origin: rng.gen_bool(0.2).then_some(Cow::Borrowed("edge-2")),
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
            let want: Vec<Seen<'_>> = items
                .iter()
                .map(|i| Seen {
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
    fn other_layouts_are_left_to_serde_and_still_read() {
        let item = r#"{"id":1,"device":"sim-1","sensor":"t","ts":-5,"value":2,"received":2}"#;
        let seen = vec![Seen {
            device: "sim-1",
            ts: -5,
        }];
        for text in [
            // A value that is an array.
            format!(
                r#"{{"type":"readings","items":[{}]}}"#,
                item.replace(":2,", ":[2],")
            ),
            // Whitespace.
            format!(r#"{{"type":"readings","items":[ {item}]}}"#),
            // The item's fields in another order.
            r#"{"type":"readings","items":[{"device":"sim-1","id":1,"ts":-5}]}"#.to_string(),
            // The frame's.
            format!(r#"{{"items":[{item}],"type":"readings"}}"#),
        ] {
            assert_eq!(fast_json(&text), None, "{text}");
            assert_eq!(json(&text).unwrap().items, seen, "{text}");
        }
        assert_eq!(
            fast_json(&format!(r#"{{"type":"readings","items":[{item}]}}"#))
                .unwrap()
                .items,
            seen
        );
        let lagged = json(r#"{"type":"lagged","dropped":3}"#).unwrap();
        assert_eq!((lagged.kind, lagged.dropped), ("lagged", 3));
        let lagged = rmp_serde::to_vec_named(&serde_json::json!({"type": "lagged", "dropped": 3}));
        assert_eq!(msgpack(&lagged.unwrap()).unwrap().dropped, 3);
        // A value that is a container (an array of one 1).
        let mut packed = b"\x82\xa4type\xa8readings\xa5items\x91\x82".to_vec();
        packed.extend(b"\xa6device\xa5sim-1\xa2ts\x91\x01");
        assert_eq!(fast_msgpack(&packed), None);
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
        // An item without its ts.
        assert_eq!(
            fast_json(r#"{"type":"readings","items":[{"device":"d"}]}"#),
            None
        );
    }
}
