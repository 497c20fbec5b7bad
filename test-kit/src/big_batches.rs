//! Batches of one device on a fresh store, every 5th one big (500 readings
//! of 250-byte strings, ~140 KB stored): a group the store cuts into many
//! segments, and (before segments were bounded to 6 KiB) what made sled
//! write `blobs/` files. The durability tests use them to cover big groups.

use serde_json::{json, Value};

/// How many readings batch `seq` holds.
pub fn readings_in(seq: u64) -> u64 {
    if seq % 5 == 0 {
        500
    } else {
        20
    }
}

/// The newest id after batches `1..=seq`: ids are the running count of
/// readings when one device's batches are stored in seq order.
pub fn last_id_of(seq: u64) -> u64 {
    (1..=seq).map(readings_in).sum()
}

/// Batch `seq`; reading `i` has `ts = seq * 1000 + i`.
pub fn batch_for(seq: u64) -> Value {
    let readings: Vec<Value> = (0..readings_in(seq))
        .map(|i| {
            let ts = (seq * 1000 + i) as i64;
            if seq % 5 == 0 {
                json!({"sensor": "note", "ts": ts, "value": format!("{ts:0>250}")})
            } else {
                json!({"sensor": "s", "ts": ts, "value": ts})
            }
        })
        .collect();
    json!({"seq": seq, "readings": readings})
}

/// [`crate::write_config`] with a frame limit the big batches fit in.
pub fn config_for(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let config = crate::write_config(dir, port, "");
    crate::add_keys(&config, "limits", "max_frame_bytes = \"1MiB\"\n");
    config
}
