//! The fast path of [`super::decode_batch`]: one pass over the bytes of a
//! batch in the shape devices send, straight into a [`Batch`].
//!
//! Why: the checked decoder first builds a tree of borrowed values (a
//! vector per map and per array) and then looks fields up in it; at the
//! fleet shape that was a fifth of the tokio workers' time. This path reads
//! each value once, in place, and allocates only what the batch keeps.
//!
//! It accepts a strict subset of what the checked decoder accepts: a root
//! map of `seq` and `readings` only, readings of `sensor`, `ts`, `value` and
//! `unit` only, no key twice, no trailing bytes, and every field valid. For
//! anything else (an unknown key, a duplicate, a bad value, a short frame)
//! it returns `None` and the checked decoder decides, so every rejection,
//! and every frame that is unusual but valid, gets exactly the answer it
//! always got. Where it returns a batch, it is the batch the checked decoder
//! would return (the test below compares the two over many frames).

use super::{Batch, Names, ReadingIn, MAX_SEQ};
use crate::msgpack::{Cursor, Int, Scalar};
use crate::name::is_valid_name_bytes;
use crate::{Value, MAX_STRING_VALUE_BYTES, MAX_UNIT_BYTES};

/// The fewest bytes a reading takes: a map header and the `sensor`, `ts`
/// and `value` keys with one-byte values.
const MIN_READING_BYTES: usize = 20;

/// The batch in `frame`, or `None` to leave the frame to the checked decoder.
pub(super) fn decode(frame: &[u8], max_readings: usize, names: &mut Names) -> Option<Batch> {
    let mut c = Cursor::new(frame);
    let mut seq = None;
    let mut seen_seq = false;
    let mut readings = None;
    for _ in 0..c.map_len()? {
        match c.string()? {
            b"seq" if !seen_seq => {
                seen_seq = true;
                seq = match c.scalar()? {
                    Scalar::Nil => None,
                    Scalar::Int(Int::Pos(n)) if n <= MAX_SEQ => Some(n),
                    _ => return None,
                };
            }
            b"readings" if readings.is_none() => {
                let n = c.array_len()?;
                if n == 0 || n > max_readings {
                    return None;
                }
                // The header is only a claim: room for what the bytes left
                // could hold, so a short frame cannot make a big allocation.
                let mut out = Vec::with_capacity(n.min(c.rest().len() / MIN_READING_BYTES));
                for _ in 0..n {
                    out.push(reading(&mut c, names)?);
                }
                readings = Some(out);
            }
            _ => return None,
        }
    }
    if !c.rest().is_empty() {
        return None;
    }
    Some(Batch {
        seq,
        readings: readings?,
    })
}

fn reading(c: &mut Cursor<'_>, names: &mut Names) -> Option<ReadingIn> {
    let (mut sensor, mut ts, mut value, mut unit) = (None, None, None, None);
    for _ in 0..c.map_len()? {
        match c.string()? {
            b"sensor" if sensor.is_none() => {
                let Scalar::Str(s) = c.scalar()? else {
                    return None;
                };
                if !is_valid_name_bytes(s) {
                    return None;
                }
                sensor = Some(s);
            }
            b"ts" if ts.is_none() => {
                ts = Some(match c.scalar()? {
                    Scalar::Int(n) => n.to_i64()?,
                    _ => return None,
                });
            }
            b"value" if value.is_none() => {
                value = Some(match c.scalar()? {
                    Scalar::Bool(b) => Value::Bool(b),
                    Scalar::Int(Int::Neg(n)) => Value::Int(n),
                    Scalar::Int(Int::Pos(n)) => match i64::try_from(n) {
                        Ok(n) => Value::Int(n),
                        Err(_) => Value::UInt(n),
                    },
                    Scalar::Float(f) if f.is_finite() => Value::Float(f),
                    Scalar::Str(s) if s.len() <= MAX_STRING_VALUE_BYTES => {
                        Value::Str(std::str::from_utf8(s).ok()?.to_string())
                    }
                    _ => return None,
                });
            }
            // `unit: nil` is the same as no unit, but a second `unit` key
            // after it is left to the checked decoder like any duplicate.
            b"unit" if unit.is_none() => {
                unit = Some(match c.scalar()? {
                    Scalar::Nil => None,
                    Scalar::Str(s) if s.len() <= MAX_UNIT_BYTES => Some(names.get_utf8(s)?),
                    _ => return None,
                });
            }
            _ => return None,
        }
    }
    Some(ReadingIn {
        // A valid name is ASCII, so always UTF-8.
        sensor: names.get_utf8(sensor?)?,
        ts: ts?,
        value: value?,
        unit: unit.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::decode_checked;
    use super::*;

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    /// An integer in one of MessagePack's encodings, chosen at random
    /// (not always the shortest, as some device libraries do).
    fn int(out: &mut Vec<u8>, rng: &mut Rng) {
        let v: i64 = match rng.below(6) {
            0 => rng.below(130) as i64 - 40,
            1 => 1_763_800_000_000 + rng.below(1000) as i64,
            2 => -(rng.next() as i64 >> rng.below(63)).abs(),
            3 => i64::MAX - rng.below(3) as i64,
            4 => i64::MIN + rng.below(3) as i64,
            _ => rng.next() as i64 >> rng.below(64),
        };
        if v >= 0 && rng.below(4) == 0 {
            // A non-negative value as a signed type, in the smallest one
            // that holds it or as an i64.
            match v {
                0..=0x7f if rng.below(2) == 0 => out.extend_from_slice(&[0xd0, v as u8]),
                0..=0x7fff if rng.below(2) == 0 => {
                    out.push(0xd1);
                    out.extend_from_slice(&(v as i16).to_be_bytes());
                }
                0..=0x7fff_ffff if rng.below(2) == 0 => {
                    out.push(0xd2);
                    out.extend_from_slice(&(v as i32).to_be_bytes());
                }
                _ => {
                    out.push(0xd3);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        } else if v >= 0 && rng.below(3) == 0 {
            out.push(0xcf);
            out.extend_from_slice(&(v as u64).to_be_bytes());
        } else if rng.below(8) == 0 {
            // Above i64::MAX: only a u64 holds it.
            out.push(0xcf);
            out.extend_from_slice(&(u64::MAX - rng.below(5)).to_be_bytes());
        } else {
            rmp::encode::write_sint(out, v).unwrap();
        }
    }

    fn string(out: &mut Vec<u8>, rng: &mut Rng) {
        let s = match rng.below(9) {
            0 => "".to_string(),
            1 => "temp".to_string(),
            2 => "a/b".to_string(),
            3 => "x".repeat(rng.below(300) as usize),
            4 => "é°C".to_string(),
            5 => "sensor_1.x:y-z".to_string(),
            6 => "s".repeat(64 + rng.below(2) as usize),
            7 => {
                // Not UTF-8.
                out.extend_from_slice(&[0xa2, 0xff, 0xfe]);
                return;
            }
            _ => format!("k{}", rng.below(100)),
        };
        if rng.below(6) == 0 {
            // A longer form than the string needs: str 8, 16 or 32.
            match rng.below(3) {
                0 if s.len() < 256 => out.extend_from_slice(&[0xd9, s.len() as u8]),
                1 => {
                    out.push(0xdb);
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                }
                _ => {
                    out.push(0xda);
                    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
                }
            }
            out.extend_from_slice(s.as_bytes());
        } else {
            rmp::encode::write_str(out, &s).unwrap();
        }
    }

    fn value(out: &mut Vec<u8>, rng: &mut Rng) {
        match rng.below(10) {
            0 => rmp::encode::write_nil(out).unwrap(),
            1 => rmp::encode::write_bool(out, rng.below(2) == 0).unwrap(),
            2 | 3 => int(out, rng),
            4 => {
                rmp::encode::write_f64(out, rng.pick(&[21.5, -0.0, 1e300, f64::NAN, f64::INFINITY]))
                    .unwrap()
            }
            5 => rmp::encode::write_f32(out, rng.pick(&[3.25f32, f32::NEG_INFINITY, 0.1])).unwrap(),
            6 | 7 => string(out, rng),
            8 => rmp::encode::write_bin(out, b"\x01\x02").unwrap(),
            _ => {
                rmp::encode::write_array_len(out, 1).unwrap();
                int(out, rng);
            }
        }
    }

    fn key(out: &mut Vec<u8>, rng: &mut Rng, usual: &[&str]) {
        if rng.below(12) == 0 {
            string(out, rng);
        } else if rng.below(20) == 0 {
            int(out, rng); // a key that is not a string
        } else {
            rmp::encode::write_str(out, rng.pick(usual)).unwrap();
        }
    }

    fn reading_frame(out: &mut Vec<u8>, rng: &mut Rng) {
        const KEYS: [&str; 4] = ["sensor", "ts", "value", "unit"];
        if rng.below(30) == 0 {
            value(out, rng); // not a map
            return;
        }
        let usual = rng.below(12) != 0;
        let n = if usual {
            3 + rng.below(2) as u32
        } else {
            rng.below(7) as u32
        };
        map_len(out, n, rng);
        if !usual {
            for _ in 0..n {
                key(out, rng, &KEYS);
                value(out, rng);
            }
            return;
        }
        for &k in KEYS.iter().take(n as usize) {
            rmp::encode::write_str(out, k).unwrap();
            match k {
                "sensor" if rng.below(30) != 0 => {
                    rmp::encode::write_str(out, rng.pick(&["temp", "hum", "a-b.c:d_1"])).unwrap()
                }
                "ts" | "value" if rng.below(30) != 0 => int(out, rng),
                "unit" if rng.below(3) != 0 => {
                    rmp::encode::write_str(out, rng.pick(&["C", "%"])).unwrap()
                }
                _ => value(out, rng),
            }
        }
    }

    /// A map or array header of `n` entries, now and then in a longer form
    /// than it needs: the 16-bit form's marker is `long`, the 32-bit one's
    /// `long + 1` (map 16/32: 0xde/0xdf, array 16/32: 0xdc/0xdd).
    fn header(out: &mut Vec<u8>, n: u32, rng: &mut Rng, long: u8) {
        match rng.below(10) {
            0 => {
                out.push(long);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            1 => {
                out.push(long + 1);
                out.extend_from_slice(&n.to_be_bytes());
            }
            _ if long == 0xde => {
                rmp::encode::write_map_len(out, n).unwrap();
            }
            _ => {
                rmp::encode::write_array_len(out, n).unwrap();
            }
        }
    }

    fn map_len(out: &mut Vec<u8>, n: u32, rng: &mut Rng) {
        header(out, n, rng, 0xde);
    }

    fn frame(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let keys = match rng.below(6) {
            0 => vec!["readings"],
            1 => vec!["readings", "seq"],
            2 => vec!["seq", "readings", "seq"],
            3 => vec!["seq", "x", "readings"],
            4 => vec!["readings", "readings"],
            _ => vec!["seq", "readings"],
        };
        map_len(&mut out, keys.len() as u32, rng);
        for k in keys {
            if rng.below(25) == 0 {
                key(&mut out, rng, &["seq", "readings"]);
            } else {
                rmp::encode::write_str(&mut out, k).unwrap();
            }
            match k {
                "seq" if rng.below(5) != 0 => int(&mut out, rng),
                "readings" if rng.below(15) != 0 => {
                    let most = if rng.below(2) == 0 { 4 } else { 14 };
                    let n = rng.below(most) as u32;
                    header(&mut out, n, rng, 0xdc);
                    for _ in 0..n {
                        reading_frame(&mut out, rng);
                    }
                }
                _ => value(&mut out, rng),
            }
        }
        match rng.below(12) {
            0 => {
                out.truncate(rng.below(out.len() as u64 + 1) as usize);
            }
            1 => out.push(0xc0),
            2 if !out.is_empty() => {
                let i = rng.below(out.len() as u64) as usize;
                out[i] ^= 1 << rng.below(8);
            }
            _ => {}
        }
        out
    }

    #[test]
    fn what_the_fast_path_accepts_the_checked_decoder_accepts_the_same() {
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let (mut fast, mut checked_ok) = (0, 0);
        // One connection's names across all frames, as the daemon keeps them.
        let mut names = Names::default();
        for _ in 0..200_000 {
            let f = frame(&mut rng);
            let max = 1 + rng.below(12) as usize;
            let checked = decode_checked(&f, max);
            checked_ok += usize::from(checked.is_ok());
            if let Some(batch) = decode(&f, max, &mut names) {
                fast += 1;
                assert_eq!(Ok(&batch), checked.as_ref(), "frame {f:02x?}");
            }
        }
        // The comparison means something only if both paths saw plenty of
        // good frames; most accepted frames must take the fast path.
        assert!(checked_ok > 15_000, "{checked_ok} frames accepted");
        assert!(
            fast > 5_000 && fast * 10 > checked_ok * 4,
            "{fast} of {checked_ok} took the fast path"
        );
    }

    #[test]
    fn a_device_sim_style_batch_takes_the_fast_path() {
        let frame = rmp_serde::to_vec_named(&serde_json::json!({
            "seq": 42,
            "readings": [
                {"sensor": "temp", "ts": 1_763_800_000_123_i64, "value": 21.5, "unit": "C"},
                {"sensor": "on", "ts": 1, "value": true},
                {"sensor": "n", "ts": -5, "value": u64::MAX},
                {"sensor": "s", "ts": 1, "value": "open", "unit": null},
            ]
        }))
        .unwrap();
        let batch = decode(&frame, 500, &mut Names::default()).expect("fast path");
        assert_eq!(Ok(&batch), decode_checked(&frame, 500).as_ref());
        assert_eq!(batch.readings[2].value, Value::UInt(u64::MAX));
        assert_eq!(batch.readings[3].unit, None);
    }

    #[test]
    fn names_are_shared_across_batches_and_kept_up_to_the_bound() {
        let frame = |sensors: &[String]| {
            let readings: Vec<_> = sensors
                .iter()
                .map(|s| serde_json::json!({"sensor": s, "ts": 1, "value": 1, "unit": "C"}))
                .collect();
            rmp_serde::to_vec_named(&serde_json::json!({"readings": readings})).unwrap()
        };
        let mut names = Names::default();
        let a = decode(&frame(&["t".into(), "h".into()]), 500, &mut names).unwrap();
        let b = decode(&frame(&["h".into(), "t".into()]), 500, &mut names).unwrap();
        assert!(Arc::ptr_eq(&a.readings[0].sensor, &b.readings[1].sensor));
        assert!(Arc::ptr_eq(&a.readings[1].sensor, &b.readings[0].sensor));
        let units = |r: &ReadingIn| r.unit.clone().unwrap();
        assert!(Arc::ptr_eq(&units(&a.readings[0]), &units(&b.readings[0])));
        // Past the bound, new names are still decoded right, just not kept.
        let many: Vec<String> = (0..2 * Names::MAX).map(|i| format!("s{i}")).collect();
        let c = decode(&frame(&many), 500, &mut names).unwrap();
        let d = decode(&frame(&many), 500, &mut names).unwrap();
        assert_eq!(names.known.len(), Names::MAX);
        assert!(c.readings.iter().zip(&many).all(|(r, s)| *r.sensor == **s));
        assert!(Arc::ptr_eq(&c.readings[0].sensor, &d.readings[0].sensor));
        assert!(!Arc::ptr_eq(
            &c.readings[2 * Names::MAX - 1].sensor,
            &d.readings[2 * Names::MAX - 1].sensor
        ));
    }

    #[test]
    fn unusual_frames_are_left_to_the_checked_decoder() {
        let mp = |v: serde_json::Value| rmp_serde::to_vec_named(&v).unwrap();
        let r = serde_json::json!({"sensor": "t", "ts": 1, "value": 1});
        for f in [
            mp(serde_json::json!({"seq": 1, "readings": [r], "extra": 1})),
            mp(serde_json::json!({"seq": 1, "readings": []})),
            mp(serde_json::json!({"seq": -1, "readings": [r]})),
            mp(serde_json::json!({"readings": [{"sensor": "t", "ts": 1}]})),
            mp(serde_json::json!({"readings": [{"sensor": "t", "ts": 1, "value": 1, "x": 0}]})),
        ] {
            assert!(decode(&f, 500, &mut Names::default()).is_none(), "{f:02x?}");
        }
    }
}
