//! MQTT bridge publish rate (filled in below).
fn main() {}
