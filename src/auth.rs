//! Authentication: HS256 JWTs for devices and subscribers (SPEC §3, §4,
//! §10). Claims, minting and verification are part of the wire model and
//! live in the `sensorgate-wire` crate (device-sim mints with the same
//! code); re-exported here so the daemon, tests and benches keep one path.

pub use sensorgate_wire::auth::{AuthError, Authenticator, Claims, Identity, Role};
