//! Ids the store should hold and does not. Ids are handed out without
//! gaps and retention removes only the oldest, so between the oldest
//! indexed segment and the next id every id is in a segment, except ranges
//! skipped on purpose (`--accept-data-loss` continuing above the mark, or
//! dropping segments sled lost), which are recorded here. Any other hole is
//! damage: sled has been seen to lose a batch's segment and index entry
//! together, which nothing else would notice.

use std::ops::RangeInclusive;

use super::StoreError;

/// The ranges skipped on purpose: pairs of big-endian `u64` (first, last).
pub(super) const SKIPPED_KEY: &[u8] = b"m/skipped";
/// Present once a start has checked this store's holes (an older store's
/// holes are recorded as skipped at its first start, as it was served).
pub(super) const HOLES_KEPT_KEY: &[u8] = b"m/holes_kept";

pub(super) type Ids = RangeInclusive<u64>;

/// Collects holes from segments met in id order, then the tail below the
/// next id.
#[derive(Default)]
pub(super) struct Holes {
    last: Option<u64>,
    pub(super) found: Vec<Ids>,
}

impl Holes {
    /// The next segment (its first and last id), in id order.
    pub(super) fn segment(&mut self, first: u64, last: u64) {
        if let Some(prev) = self.last.filter(|&p| first > p + 1) {
            self.found.push(prev + 1..=first - 1);
        }
        self.last = Some(self.last.map_or(last, |p| p.max(last)));
    }

    /// The highest id of the segments met so far, when the segment starting
    /// at `first` would overlap them (it holds some of their ids again).
    pub(super) fn overlapped_by(&self, first: u64) -> Option<u64> {
        self.last.filter(|&last| first <= last)
    }

    /// Ends with the id the store hands out next: ids after the newest
    /// segment and below it are a hole too. A store with no segment (all
    /// pruned) has none.
    pub(super) fn end(mut self, next_id: u64) -> Vec<Ids> {
        if let Some(last) = self.last.filter(|&l| next_id > l + 1) {
            self.found.push(last + 1..=next_id - 1);
        }
        self.found
    }
}

pub(super) fn skipped(db: &sled::Db) -> Result<Vec<Ids>, StoreError> {
    let Some(v) = db.get(SKIPPED_KEY)? else {
        return Ok(Vec::new());
    };
    if v.len() % 16 != 0 {
        return Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(SKIPPED_KEY).into_owned(),
            detail: format!("{} bytes, not pairs of ids", v.len()),
        });
    }
    Ok(v.chunks(16)
        .map(|c| {
            let first = u64::from_be_bytes(c[..8].try_into().expect("8 bytes"));
            let last = u64::from_be_bytes(c[8..].try_into().expect("8 bytes"));
            first..=last
        })
        .collect())
}

/// Adds `ranges` to the recorded skips (not synced: the caller flushes).
pub(super) fn record_skipped(db: &sled::Db, ranges: &[Ids]) -> Result<(), StoreError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let mut all = skipped(db)?;
    all.extend(ranges.iter().cloned());
    let bytes: Vec<u8> = all
        .iter()
        .flat_map(|r| [r.start().to_be_bytes(), r.end().to_be_bytes()])
        .flatten()
        .collect();
    db.insert(SKIPPED_KEY, bytes)?;
    Ok(())
}

/// The holes no recorded skip covers.
pub(super) fn unexplained(holes: &[Ids], skipped: &[Ids]) -> Vec<Ids> {
    holes
        .iter()
        .filter(|h| {
            !skipped
                .iter()
                .any(|s| s.start() <= h.start() && h.end() <= s.end())
        })
        .cloned()
        .collect()
}

/// "ids 3481..=6960" (and how many more ranges), for a refusal.
pub(super) fn describe(holes: &[Ids]) -> String {
    match holes {
        [] => String::new(),
        [h] => format!("ids {}..={}", h.start(), h.end()),
        [h, rest @ ..] => format!(
            "ids {}..={} and {} more ranges",
            h.start(),
            h.end(),
            rest.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_between_segments_and_below_the_next_id_are_found() {
        let mut h = Holes::default();
        for (first, last) in [(1, 10), (11, 20), (31, 40), (41, 50)] {
            h.segment(first, last);
        }
        assert_eq!(h.end(61), vec![21..=30, 51..=60]);
        let mut whole = Holes::default();
        whole.segment(5, 9);
        assert!(whole.end(10).is_empty());
        assert!(Holes::default().end(100).is_empty(), "all pruned");
    }

    #[test]
    fn only_holes_no_skip_covers_are_unexplained() {
        let holes = vec![3..=4, 10..=20];
        assert_eq!(unexplained(&holes, &[1..=5]), vec![10..=20]);
        assert_eq!(unexplained(&holes, &[1..=5, 10..=19]), vec![10..=20]);
        assert!(unexplained(&holes, &[3..=4, 9..=30]).is_empty());
    }

    #[test]
    fn skips_round_trip_through_sled() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        record_skipped(&db, &[3..=4]).unwrap();
        record_skipped(&db, &[10..=u64::MAX - 1]).unwrap();
        assert_eq!(skipped(&db).unwrap(), vec![3..=4, 10..=u64::MAX - 1]);
    }
}
