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

/// Reading `i` of batch `seq`: its sensor, `ts = seq * 1000 + i` and value
/// (a 250-byte string in the big batches, `ts` itself in the others).
pub fn reading_of(seq: u64, i: u64) -> (&'static str, i64, sensorgate::protocol::Value) {
    use sensorgate::protocol::Value as V;
    let ts = (seq * 1000 + i) as i64;
    if seq % 5 == 0 {
        ("note", ts, V::Str(format!("{ts:0>250}")))
    } else {
        ("s", ts, V::Int(ts))
    }
}

/// Batch `seq`, as a device sends it.
pub fn batch_for(seq: u64) -> Value {
    let readings: Vec<Value> = (0..readings_in(seq))
        .map(|i| {
            let (sensor, ts, value) = reading_of(seq, i);
            json!({"sensor": sensor, "ts": ts, "value": value})
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

/// Writes, with sled directly, the store an earlier version of the daemon
/// left after acknowledging batches `1..=batches` of device `d1`: the
/// layout before segments were bounded to 6 KiB (one segment per batch,
/// whatever its size, so the big batches' leaves are sled blob files), with
/// its high-water mark (`sensorgate.hwm`, and `m/hwm_kept` saying the store
/// has one) but no write-ahead log yet (a first start adds it). The keys are
/// the store's (`src/store/mod.rs`): `s/<first id>` segment, `i/<first id>`
/// index entry, `q/<device>` last seq, `m/next_id`.
pub fn write_earlier_version_store(store: &std::path::Path, batches: u64) {
    let db = sled::Config::new().path(store).open().expect("sled opens");
    // Now, so that retention keeps them.
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let key = |prefix: &[u8], id: u64| [prefix, &id.to_be_bytes()[..]].concat();
    let mut next_id = 1u64;
    for seq in 1..=batches {
        let n = readings_in(seq);
        // (id, device, sensor, ts, value, unit, received): a stored row.
        type Row<'a> = (
            u64,
            &'a str,
            &'a str,
            i64,
            sensorgate::protocol::Value,
            Option<&'a str>,
            i64,
        );
        let rows: Vec<Row<'_>> = (0..n)
            .map(|i| {
                let (sensor, ts, value) = reading_of(seq, i);
                (next_id + i, "d1", sensor, ts, value, None, received)
            })
            .collect();
        let segment = rmp_serde::to_vec(&rows).expect("rows encode");
        let meta = sensorgate::store::SegmentMeta {
            first_id: next_id,
            last_id: next_id + n - 1,
            newest_received: received,
            bytes: segment.len() as u64,
        };
        db.insert(key(b"s/", next_id), segment).unwrap();
        db.insert(key(b"i/", next_id), &meta.encode()[..]).unwrap();
        next_id = meta.last_id + 1;
    }
    db.insert(b"q/d1", &batches.to_be_bytes()[..]).unwrap();
    db.insert(b"m/next_id", &next_id.to_be_bytes()[..]).unwrap();
    db.insert(b"m/hwm_kept", &[1u8][..]).unwrap();
    db.flush().unwrap();
    drop(db);
    sensorgate::store::hwm::HighWaterMark::create_or_open(store, next_id - 1).unwrap();
}
