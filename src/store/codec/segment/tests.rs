use super::*;
use crate::store::segment_key;

fn reading(id: u64, device: &Arc<str>, sensor: &Arc<str>, value: Value) -> Reading {
    Reading {
        id,
        device: device.clone(),
        sensor: sensor.clone(),
        ts: 1_763_800_000_000 + id as i64,
        value,
        unit: Some("C".into()),
        received: 1_763_800_000_500,
    }
}

/// `readings` as a segment of the older form: MessagePack rows, as
/// `rmp_serde` writes them (stores from before the compact form hold these).
fn older_form(readings: &[Reading]) -> Vec<u8> {
    type RowRef<'a> = (u64, &'a str, &'a str, i64, &'a Value, Option<&'a str>, i64);
    let rows: Vec<RowRef<'_>> = readings
        .iter()
        .map(|r| {
            let (device, sensor, unit) = (&*r.device, &*r.sensor, r.unit.as_deref());
            (r.id, device, sensor, r.ts, &r.value, unit, r.received)
        })
        .collect();
    rmp_serde::to_vec(&rows).unwrap()
}

/// Encodes `readings` and decodes every segment under its own key.
fn round_trip(readings: &[Reading]) -> Vec<EncodedSegment> {
    let segments = encode_segments(readings);
    let mut next = 0;
    for s in &segments {
        assert_eq!(s.range.start, next, "segments follow each other");
        next = s.range.end;
        let key = segment_key(readings[s.range.start].id);
        assert_eq!(s.bytes[0], COMPACT);
        assert_eq!(
            decode_segment(&key, &s.bytes).unwrap(),
            readings[s.range.clone()]
        );
    }
    assert_eq!(next, readings.len(), "every reading is in a segment");
    segments
}

#[test]
fn every_value_and_time_round_trips_bit_for_bit() {
    let values = [
        Value::Float(21.5),
        Value::Float(21.37),
        Value::Float(-0.0),
        Value::Float(f64::NAN),
        Value::Float(f64::from_bits(0x7ff0_0000_0000_0001)), // a signalling NaN
        Value::Float(f64::INFINITY),
        Value::Float(f64::MIN_POSITIVE / 4.0), // subnormal
        Value::Int(0),
        Value::Int(-4),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::UInt(5),
        Value::UInt(u64::MAX),
        Value::Bool(true),
        Value::Bool(false),
        Value::Str(String::new()),
        Value::Str("x".repeat(300)),
        Value::Str("fenêtre ouverte".into()),
    ];
    let times = [i64::MIN, -1, 0, 1_763_800_000_000, i64::MAX];
    let readings: Vec<Reading> = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Reading {
            id: u64::MAX - 20 + i as u64,
            device: format!("dev-{}", i % 3).into(),
            sensor: ["temp", "", "ünïcode"][i % 3].into(),
            ts: times[i % times.len()],
            value,
            unit: (i % 2 == 0).then(|| "°C".into()),
            received: times[(i + 2) % times.len()],
        })
        .collect();
    let segments = encode_segments(&readings);
    assert_eq!(segments.len(), 1);
    let key = segment_key(readings[0].id);
    let back = decode_segment(&key, &segments[0].bytes).unwrap();
    // `Value`'s `==` says NaN != NaN: compare floats by their bits.
    let bits = |rs: &[Reading]| -> Vec<String> {
        rs.iter()
            .map(|r| match &r.value {
                Value::Float(f) => format!("{r:?} {:x}", f.to_bits()),
                _ => format!("{r:?}"),
            })
            .collect()
    };
    assert_eq!(bits(&back), bits(&readings));
    // Int and UInt stay apart (the older form read a small UInt as an Int).
    assert_eq!(back[11].value, Value::UInt(5));
}

#[test]
fn the_compact_form_is_byte_for_byte_the_documented_one() {
    // Written out by hand from the module doc: a change to the form shows
    // here, not only as a round trip (stores on disk hold these bytes).
    let (d, t, h, c): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) =
        ("d".into(), "t".into(), "h".into(), "C".into());
    let r = |id, sensor: &Arc<str>, unit: Option<&Arc<str>>, ts, received, value| Reading {
        id,
        device: d.clone(),
        sensor: sensor.clone(),
        ts,
        value,
        unit: unit.cloned(),
        received,
    };
    let readings = vec![
        r(300, &t, Some(&c), 1000, 1005, Value::Float(21.5)),
        r(301, &h, None, 990, 1005, Value::Int(-2)),
        r(302, &t, Some(&c), 990, 1006, Value::UInt(7)),
        r(303, &h, None, 990, 1006, Value::Float(0.1)),
        r(304, &t, Some(&c), 990, 1006, Value::Bool(true)),
        r(305, &h, None, 990, 1006, Value::Str("on".into())),
    ];
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        0xc1, 6, 0xac, 0x02, // compact, 6 readings, first id 300
        // device "d" (new), sensor "t" (new), unit "C" (new), ts +1000,
        // received +1005, f32 21.5
        1, 1, b'd', 1, 1, b't', 1, 1, b'C', 0xd0, 0x0f, 0xda, 0x0f, 4, 0x00, 0x00, 0xac, 0x41,
        // "d", "h" (new), no unit, ts -10, received +0, Int -2
        2, 1, 1, b'h', 0, 19, 0, 2, 3,
        // "d", "t", "C", ts +0, received +1, UInt 7
        2, 3, 4, 0, 2, 3, 7,
        // "d", "h", no unit, +0, +0, f64 0.1
        2, 5, 0, 0, 0, 5, 0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f,
        // "d", "t", "C", +0, +0, true
        2, 3, 4, 0, 0, 1,
        // "d", "h", no unit, +0, +0, Str "on"
        2, 5, 0, 0, 0, 6, 2, b'o', b'n',
    ];
    let segments = encode_segments(&readings);
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].bytes, expected);
    assert_eq!(
        decode_segment(&segment_key(300), &expected).unwrap(),
        readings
    );
}

#[test]
fn a_batch_takes_a_third_of_the_older_form_and_shares_its_strings() {
    let device: Arc<str> = "greenhouse-0042".into();
    let sensors: Vec<Arc<str>> = ["temperature", "humidity", "co2"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let readings: Vec<Reading> = (0..60)
        .map(|i| {
            let mut r = reading(
                1000 + i,
                &device,
                &sensors[i as usize % 3],
                Value::Float(20.0 + i as f64 * 0.37),
            );
            r.ts = 1_763_800_000_000 + (i / 3) as i64 * 1000;
            r
        })
        .collect();
    let segments = round_trip(&readings);
    assert_eq!(segments.len(), 1);
    let older = older_form(&readings).len();
    let compact = segments[0].bytes.len();
    assert!(
        compact * 3 <= older,
        "compact {compact} bytes against the older form's {older}"
    );
    let back = decode_segment(&segment_key(1000), &segments[0].bytes).unwrap();
    assert!(back.iter().all(|r| Arc::ptr_eq(&r.device, &back[0].device)));
    assert!(Arc::ptr_eq(&back[0].sensor, &back[3].sensor));
}

/// The encoder finds a field's last few strings by address: more names than
/// it keeps, cycling, and equal names in separate allocations (each
/// connection shares its own), must still each be written once and
/// referred to by the right index.
#[test]
fn names_past_the_ones_found_by_address_are_written_once_and_read_back() {
    let devices: Vec<Arc<str>> = (0..3).map(|d| Arc::from(format!("dev-{d}"))).collect();
    // 20 names, more than RECENT, each in two allocations of its own.
    let names: Vec<[Arc<str>; 2]> = (0..20)
        .map(|n| {
            let name = format!("sensor-{n:02}");
            [Arc::from(name.as_str()), Arc::from(name.as_str())]
        })
        .collect();
    let readings: Vec<Reading> = (0..120u64)
        .map(|i| {
            let copy = (i / 20 % 2) as usize;
            reading(
                5000 + i,
                &devices[(i / 40) as usize],
                // Two names every third reading apart (found by address),
                // between them the other 18 in turn (evicted before they
                // come again).
                &names[if i % 3 < 2 { i % 3 } else { 2 + i / 3 % 18 } as usize][copy],
                Value::UInt(i),
            )
        })
        .collect();
    let segments = round_trip(&readings);
    assert_eq!(segments.len(), 1);
    let bytes = &segments[0].bytes;
    for n in 0..20 {
        let name = format!("sensor-{n:02}");
        let written = bytes
            .windows(name.len())
            .filter(|w| *w == name.as_bytes())
            .count();
        assert_eq!(written, 1, "{name} is written once");
    }
}

#[test]
fn a_large_group_is_cut_where_the_next_reading_would_not_fit() {
    let sensor: Arc<str> = "temperature".into();
    let devices: Vec<Arc<str>> = (0..40).map(|d| format!("dev-{d}").into()).collect();
    let readings: Vec<Reading> = (0..5000)
        .map(|i| {
            let device = &devices[(i / 7) as usize % devices.len()];
            reading(i + 1, device, &sensor, Value::Float(i as f64 / 3.0))
        })
        .collect();
    let segments = round_trip(&readings);
    assert!(segments.len() > 2, "{} segments", segments.len());
    assert_cut_at_the_bound(&readings, &segments, "40 devices");
}

#[test]
fn the_bound_counts_the_header_too() {
    // Rows of one size and a first id whose varint is long: the segment,
    // header included, is never over the bound, and never cut early.
    let (d, s): (Arc<str>, Arc<str>) = ("d".into(), "s".into());
    for first in [1u64, 1 << 40, u64::MAX - 5000] {
        let readings: Vec<Reading> = (0..3000)
            .map(|i| {
                let mut r = reading(first + i, &d, &s, Value::Int(1));
                r.ts = 0;
                r.received = 0;
                r
            })
            .collect();
        let segments = round_trip(&readings);
        assert_cut_at_the_bound(&readings, &segments, &format!("first id {first}"));
    }
}

/// Every segment, header included, is at most the bound, and none is cut
/// early: the same start with one more reading would be over it.
fn assert_cut_at_the_bound(readings: &[Reading], segments: &[EncodedSegment], what: &str) {
    for seg in segments {
        let len = seg.bytes.len();
        assert!(len <= SEGMENT_MAX_BYTES, "{what}: {len} bytes");
        if seg.range.end < readings.len() {
            let more = encode_segments(&readings[seg.range.start..=seg.range.end]);
            assert_eq!(more.len(), 2, "{what}: cut early at {}", seg.range.end);
        }
    }
}

#[test]
fn a_reading_bigger_than_the_bound_is_a_segment_of_its_own() {
    let (d, s): (Arc<str>, Arc<str>) = ("d".into(), "s".into());
    let readings = vec![
        reading(1, &d, &s, Value::Int(1)),
        reading(2, &d, &s, Value::Str("x".repeat(SEGMENT_MAX_BYTES * 2))),
        reading(3, &d, &s, Value::Int(3)),
    ];
    let segments = round_trip(&readings);
    let ranges: Vec<_> = segments.iter().map(|s| s.range.clone()).collect();
    assert_eq!(ranges, vec![0..1, 1..2, 2..3]);
}

#[test]
fn ids_that_do_not_follow_start_a_new_segment() {
    let (d, s): (Arc<str>, Arc<str>) = ("d".into(), "s".into());
    let readings: Vec<Reading> = [5, 6, 7, 9, 10]
        .into_iter()
        .map(|id| reading(id, &d, &s, Value::Int(id as i64)))
        .collect();
    let segments = round_trip(&readings);
    let ranges: Vec<_> = segments.iter().map(|s| s.range.clone()).collect();
    assert_eq!(ranges, vec![0..3, 3..5]);
    // Nor does the id after the last one: ids never wrap.
    let wrapped: Vec<Reading> = [u64::MAX, 0]
        .into_iter()
        .map(|id| reading(id, &d, &s, Value::Int(1)))
        .collect();
    assert_eq!(round_trip(&wrapped).len(), 2);
}

#[test]
fn segments_of_the_older_form_still_read() {
    let d: Arc<str> = "d1".into();
    let s: Arc<str> = "door".into();
    for n in [1u64, 15, 16, 300] {
        let readings: Vec<Reading> = (0..n)
            .map(|i| reading(70 + i, &d, &s, Value::Int(-(i as i64))))
            .collect();
        let bytes = older_form(&readings);
        assert_eq!(decode_segment(&segment_key(70), &bytes).unwrap(), readings);
    }
    // The hand-written older encoder began with a fixed `array 16` header,
    // whatever the count.
    let one = reading(9, &d, &s, Value::Float(21.5));
    let mut bytes = vec![0xdc, 0x00, 0x01];
    bytes.extend_from_slice(&older_form(std::slice::from_ref(&one))[1..]);
    assert_eq!(decode_segment(&segment_key(9), &bytes).unwrap(), vec![one]);
}

#[test]
fn damaged_bytes_are_an_error_never_a_panic() {
    let d: Arc<str> = "dev".into();
    let sensors: Vec<Arc<str>> = vec!["a".into(), "b".into()];
    let readings: Vec<Reading> = (0..12)
        .map(|i| {
            let value = match i % 4 {
                0 => Value::Float(1.25),
                1 => Value::Float(0.1),
                2 => Value::Str("on".into()),
                _ => Value::Int(-9),
            };
            reading(40 + i, &d, &sensors[i as usize % 2], value)
        })
        .collect();
    let bytes = encode_segments(&readings).remove(0).bytes;
    let key = segment_key(40);
    // Every cut is an error: counts and lengths are checked, nothing is
    // left to guess.
    for len in 0..bytes.len() {
        assert!(decode_segment(&key, &bytes[..len]).is_err(), "cut at {len}");
    }
    // Trailing bytes, a wrong first id, a reference to a string not yet
    // given, an overlong varint, a count far past the bytes, an unknown
    // value tag.
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(decode_segment(&key, &trailing).is_err());
    assert!(decode_segment(&segment_key(41), &bytes).is_err());
    let cases: [&[u8]; 6] = [
        &[COMPACT, 1, 40, 5, 1, 1, b'x', 0, 0, 0, 0],
        // no readings; ids past u64::MAX
        &[COMPACT, 0, 40],
        &[
            COMPACT, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 1, b'x', 1,
            1, b'y', 0, 0, 0, 0, 2, 3, 0, 0, 0, 0,
        ],
        &[
            COMPACT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 40,
        ],
        &[
            COMPACT, 0xff, 0xff, 0xff, 0xff, 0x0f, 40, 1, 1, b'x', 1, 1, b'y', 0, 0, 0, 0,
        ],
        &[COMPACT, 1, 40, 1, 1, b'x', 1, 1, b'y', 0, 0, 0, 0x09],
    ];
    for case in cases {
        assert!(decode_segment(&key, case).is_err(), "{case:x?}");
    }
    // Every flipped bit: an error or some readings, never a panic.
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            let _ = decode_segment(&key, &flipped);
        }
    }
}
