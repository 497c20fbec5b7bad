//! Wall-clock helpers: readings carry Unix milliseconds (SPEC §2). Defined
//! in the wire crate, which device-sim shares; re-exported here.

pub use sensorgate_wire::unix_ms;
