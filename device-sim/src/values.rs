//! Realistic sensor values for a simulated device: each sensor has a level
//! that drifts slowly around its base, small measurement noise on top, and
//! an occasional step (a door opened, a pump started). Pure: the caller hands
//! in the random generator and the timestamp, so nothing here does I/O.

use rand::Rng;
use serde::Serialize;

/// One reading as the device sends it (SPEC §2; `device` comes from the
/// token, never from the payload). Borrows its sensor's name from the
/// device's [`Sensors`]: a flood samples millions a second.
#[derive(Debug, Clone, Serialize)]
pub struct ReadingOut<'a> {
    pub sensor: &'a str,
    pub ts: i64,
    pub value: f64,
    pub unit: &'static str,
}

/// A batch frame (`{"seq":N,"readings":[...]}`).
#[derive(Debug, Clone, Serialize)]
pub struct BatchOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub readings: &'a [ReadingOut<'a>],
}

impl BatchOut<'_> {
    /// The frame: the bytes `rmp_serde::to_vec_named` gives for it (a map
    /// with the field names, the shortest integer forms), written directly
    /// into a buffer sized up front. Why by hand: serde's path was a
    /// quarter of device-sim's CPU in a flood, which it takes from the
    /// daemon on the shared cores. A test compares both byte for byte.
    pub fn encode(&self) -> Vec<u8> {
        use rmp::encode::{write_array_len, write_map_len, write_uint};
        // Writing into a Vec cannot fail, so results are ignored.
        let strings: usize = self
            .readings
            .iter()
            .map(|r| r.sensor.len() + r.unit.len())
            .sum();
        let mut out = Vec::with_capacity(32 + self.readings.len() * 48 + strings);
        let _ = write_map_len(&mut out, 1 + u32::from(self.seq.is_some()));
        if let Some(seq) = self.seq {
            out.extend_from_slice(b"\xa3seq");
            let _ = write_uint(&mut out, seq);
        }
        out.extend_from_slice(b"\xa8readings");
        let _ = write_array_len(&mut out, self.readings.len() as u32);
        for r in self.readings {
            r.encode_into(&mut out);
        }
        out
    }
}

impl ReadingOut<'_> {
    /// The reading as a map of its four fields, as serde names them.
    fn encode_into(&self, out: &mut Vec<u8>) {
        use rmp::encode::{write_sint, write_str};
        out.extend_from_slice(b"\x84\xa6sensor");
        let _ = write_str(out, self.sensor);
        out.extend_from_slice(b"\xa2ts");
        let _ = write_sint(out, self.ts);
        out.extend_from_slice(b"\xa5value\xcb");
        out.extend_from_slice(&self.value.to_be_bytes());
        out.extend_from_slice(b"\xa4unit");
        let _ = write_str(out, self.unit);
    }
}

/// One sampled value: which of the device's sensors, and what it read.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub sensor: usize,
    pub value: f64,
}

/// The model of one sensor.
#[derive(Debug, Clone)]
struct SensorModel {
    name: String,
    unit: &'static str,
    base: f64,
    level: f64,
    /// Standard deviation of the random walk per sample.
    drift: f64,
    /// Standard deviation of the measurement noise.
    noise: f64,
    /// Size of an occasional step, up or down.
    step: f64,
}

/// Chance per sample that a sensor's level jumps by its `step`.
const STEP_PROBABILITY: f64 = 0.002;

/// How strongly the level is pulled back towards its base per sample, so a
/// long run does not wander off to absurd values.
const MEAN_REVERSION: f64 = 0.01;

/// The sensors of one device, sampled round-robin.
#[derive(Debug, Clone)]
pub struct Sensors {
    models: Vec<SensorModel>,
    next: usize,
}

impl Sensors {
    /// `n` sensors: the first four are the usual suspects (temperature,
    /// humidity, pressure, CO2), the rest generic voltages.
    pub fn new(n: usize, rng: &mut impl Rng) -> Sensors {
        let kinds: [(&str, &'static str, f64, f64, f64, f64); 4] = [
            ("temp", "C", 21.0, 0.02, 0.05, 2.0),
            ("humidity", "%", 45.0, 0.05, 0.3, 5.0),
            ("pressure", "hPa", 1013.0, 0.05, 0.2, 3.0),
            ("co2", "ppm", 420.0, 0.5, 3.0, 80.0),
        ];
        let models = (0..n.max(1))
            .map(|i| {
                let (name, unit, base, drift, noise, step) = match kinds.get(i) {
                    Some(&(name, unit, base, drift, noise, step)) => {
                        (name.to_string(), unit, base, drift, noise, step)
                    }
                    None => (format!("aux{i}"), "V", 3.3, 0.002, 0.01, 0.2),
                };
                // Each device's sensors sit a little apart.
                let base = base * rng.gen_range(0.95..1.05);
                SensorModel {
                    name,
                    unit,
                    base,
                    level: base,
                    drift,
                    noise,
                    step,
                }
            })
            .collect();
        Sensors { models, next: 0 }
    }

    /// The next value, from the next sensor in turn.
    pub fn sample(&mut self, rng: &mut impl Rng) -> Sample {
        let count = self.models.len();
        let sensor = self.next;
        let m = &mut self.models[sensor];
        self.next = (self.next + 1) % count;
        m.level += gaussian(rng) * m.drift + (m.base - m.level) * MEAN_REVERSION;
        if rng.gen_bool(STEP_PROBABILITY) {
            m.level += if rng.gen_bool(0.5) { m.step } else { -m.step };
        }
        let value = m.level + gaussian(rng) * m.noise;
        Sample {
            sensor,
            value: (value * 100.0).round() / 100.0,
        }
    }

    /// `sample` as the reading a device sends, taken at `ts`.
    pub fn reading(&self, sample: Sample, ts: i64) -> ReadingOut<'_> {
        let m = &self.models[sample.sensor];
        ReadingOut {
            sensor: &m.name,
            ts,
            value: sample.value,
            unit: m.unit,
        }
    }
}

/// An approximately standard-normal sample (Irwin–Hall with 4 uniforms):
/// good enough for noise, and needs no extra crate.
fn gaussian(rng: &mut impl Rng) -> f64 {
    let s: f64 = (0..4).map(|_| rng.gen::<f64>()).sum();
    (s - 2.0) * (3.0f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn values_stay_near_their_base_and_round_robin_sensors() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut s = Sensors::new(5, &mut rng);
        let names: Vec<String> = (0..5)
            .map(|i| {
                let sample = s.sample(&mut rng);
                s.reading(sample, i).sensor.to_string()
            })
            .collect();
        assert_eq!(names, ["temp", "humidity", "pressure", "co2", "aux4"]);
        for _ in 0..10_000 {
            let sample = s.sample(&mut rng);
            let r = s.reading(sample, 0);
            assert!(r.value.is_finite());
            if r.sensor == "temp" {
                assert!((0.0..45.0).contains(&r.value), "{}", r.value);
            }
        }
    }

    #[test]
    fn batches_are_encoded_as_serde_encodes_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Strings of each MessagePack form: fixstr, str8, str16.
        // (`unit` is `&'static`: the test leaks its long one.)
        let long = "s".repeat(40);
        let longer: &'static str = Box::leak("u".repeat(300).into_boxed_str());
        for n in [0, 1, 2, 17, 500] {
            let mut readings: Vec<ReadingOut<'_>> = (0..n)
                .map(|i| ReadingOut {
                    sensor: ["temp", "co2", &long, longer][i % 4],
                    ts: [1_763_800_000_000, -1, 127, i64::MIN, i64::MAX, 0][i % 6],
                    value: rng.gen_range(-1e6..1e6),
                    unit: ["C", "", "ppm", longer][i % 4],
                })
                .collect();
            for (r, v) in readings.iter_mut().zip([f64::NAN, f64::INFINITY, -0.0]) {
                r.value = v;
            }
            for seq in [None, Some(0), Some(200), Some(u64::MAX)] {
                let batch = BatchOut {
                    seq,
                    readings: &readings,
                };
                assert_eq!(
                    batch.encode(),
                    rmp_serde::to_vec_named(&batch).unwrap(),
                    "{n} readings, seq {seq:?}"
                );
            }
        }
    }

    #[test]
    fn batches_encode_as_named_maps() {
        let readings = [ReadingOut {
            sensor: "temp",
            ts: 1,
            value: 21.5,
            unit: "C",
        }];
        let bytes = BatchOut {
            seq: Some(3),
            readings: &readings,
        }
        .encode();
        let batch = sensorgate_wire::decode_batch(&bytes, 10).unwrap();
        assert_eq!(batch.seq, Some(3));
        assert_eq!(&*batch.readings[0].sensor, "temp");
    }
}
