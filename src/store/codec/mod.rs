//! Byte formats of the store's values. Kept apart from the store logic so the
//! layout is readable in one place and testable without sled. Segments,
//! the readings themselves, have a module of their own ([`segment`]).

mod segment;

pub use segment::{decode_segment, encode_segments, EncodedSegment};

use super::StoreError;

/// One segment's index entry: enough to decide retention and to answer
/// "what is retained" without reading segment payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    pub first_id: u64,
    pub last_id: u64,
    /// Newest `received` in the segment: the segment expires when this does.
    pub newest_received: i64,
    pub bytes: u64,
}

impl SegmentMeta {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.last_id.to_be_bytes());
        b[8..16].copy_from_slice(&self.newest_received.to_be_bytes());
        b[16..].copy_from_slice(&self.bytes.to_be_bytes());
        b
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Result<SegmentMeta, StoreError> {
        if v.len() != 24 {
            return Err(corrupt(key, "index entry is not 24 bytes"));
        }
        let word = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Ok(SegmentMeta {
            first_id: id_from_key(key)?,
            last_id: word(0),
            newest_received: word(8) as i64,
            bytes: word(16),
        })
    }
}

pub fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "expected 8 bytes"))
}

pub fn id_from_key(key: &[u8]) -> Result<u64, StoreError> {
    key.get(2..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "key does not end in an id"))
}

fn corrupt(key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let m = SegmentMeta {
            first_id: 7,
            last_id: 99,
            newest_received: 123,
            bytes: 4096,
        };
        let key = super::super::index_key(7);
        assert_eq!(SegmentMeta::decode(&key, &m.encode()).unwrap(), m);
    }
}
