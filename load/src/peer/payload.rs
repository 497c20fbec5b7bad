//! The messages a peer publishes, in JSON: one reading per message (the
//! shape of a sensorgate stream item), or one batch per message (a device's
//! batch: `{"device","seq","sent_us","readings":[{"sensor","ts","value"}…]}`).
//! Both carry `sent_us`, the send time in µs, which subscribers subtract
//! from their receive time; [`Received`] reads only that and the count.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::unix_us;

pub const SENSORS: [&str; 4] = ["temp", "humidity", "pressure", "co2"];

/// One publisher's subjects: a subject per sensor for single readings and
/// one for batches, joined with the server's level separator (`/` for
/// MQTT, `.` for NATS).
pub struct Topics {
    sensors: Vec<String>,
    batch: String,
}

impl Topics {
    pub fn new(separator: char, device: &str) -> Topics {
        let sep = separator;
        Topics {
            sensors: SENSORS
                .iter()
                .map(|s| format!("sensorgate{sep}{device}{sep}{s}"))
                .collect(),
            batch: format!("sensorgate{sep}{device}{sep}batch"),
        }
    }
}

/// One message to publish: where, what, and how many readings it carries.
pub struct Message<'t> {
    pub topic: &'t str,
    pub payload: Vec<u8>,
    pub readings: u64,
}

/// Builds one publisher's messages; ids and seqs count from 1 per publisher.
pub struct Composer {
    device: String,
    topics: Topics,
    batch: usize,
    batch_payload: bool,
    id: u64,
    seq: u64,
}

impl Composer {
    pub fn new(separator: char, device: String, batch: usize, batch_payload: bool) -> Composer {
        Composer {
            topics: Topics::new(separator, &device),
            device,
            batch,
            batch_payload,
            id: 0,
            seq: 0,
        }
    }

    /// The messages of one tick: `batch` single readings, or one batch.
    pub fn tick(&mut self) -> Vec<Message<'_>> {
        let ts_ms = unix_us() / 1000;
        if self.batch_payload {
            self.seq += 1;
            let readings: Vec<String> = (0..self.batch)
                .map(|k| {
                    self.id += 1;
                    format!(
                        "{{\"sensor\":\"{}\",\"ts\":{ts_ms},\"value\":{:.2}}}",
                        SENSORS[k % SENSORS.len()],
                        value(self.id)
                    )
                })
                .collect();
            let payload = format!(
                "{{\"device\":\"{}\",\"seq\":{},\"sent_us\":{},\"readings\":[{}]}}",
                self.device,
                self.seq,
                unix_us(),
                readings.join(",")
            );
            return vec![Message {
                topic: &self.topics.batch,
                payload: payload.into_bytes(),
                readings: self.batch as u64,
            }];
        }
        (0..self.batch)
            .map(|k| {
                self.id += 1;
                let sensor = k % SENSORS.len();
                let payload = format!(
                    "{{\"id\":{},\"device\":\"{}\",\"sensor\":\"{}\",\"ts\":{ts_ms},\
                     \"value\":{:.2},\"sent_us\":{}}}",
                    self.id,
                    self.device,
                    SENSORS[sensor],
                    value(self.id),
                    unix_us()
                );
                Message {
                    topic: &self.topics.sensors[sensor],
                    payload: payload.into_bytes(),
                    readings: 1,
                }
            })
            .collect()
    }
}

fn value(id: u64) -> f64 {
    20.0 + (id % 100) as f64 / 10.0
}

/// What a subscriber reads of a message: its send time and how many
/// readings it holds (1 unless it is a batch). The readings themselves are
/// skipped, not built.
#[derive(Deserialize)]
pub struct Received {
    pub sent_us: u64,
    #[serde(default)]
    readings: Option<Vec<IgnoredAny>>,
}

impl Received {
    pub fn parse(payload: &[u8]) -> Option<Received> {
        serde_json::from_slice(payload).ok()
    }

    pub fn count(&self) -> u64 {
        self.readings.as_ref().map_or(1, |r| r.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_message_carries_every_reading_and_one_send_time() {
        let mut c = Composer::new('.', "sim-1".into(), 10, true);
        let tick = c.tick();
        assert_eq!(tick.len(), 1);
        assert_eq!(tick[0].topic, "sensorgate.sim-1.batch");
        assert_eq!(tick[0].readings, 10);
        let r = Received::parse(&tick[0].payload).unwrap();
        assert_eq!(r.count(), 10);
        let v: serde_json::Value = serde_json::from_slice(&tick[0].payload).unwrap();
        assert_eq!(v["seq"], 1);
        assert_eq!(v["readings"][9]["sensor"], "humidity");
    }

    #[test]
    fn single_readings_go_to_their_sensor_topic() {
        let mut c = Composer::new('/', "sim-2".into(), 5, false);
        let tick = c.tick();
        assert_eq!(tick.len(), 5);
        assert_eq!(tick[1].topic, "sensorgate/sim-2/humidity");
        assert_eq!(tick[4].topic, "sensorgate/sim-2/temp");
        let r = Received::parse(&tick[4].payload).unwrap();
        assert_eq!(r.count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&tick[4].payload).unwrap();
        assert_eq!(v["id"], 5);
    }
}
