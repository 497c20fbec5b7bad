//! `sensorgate check-store`: what a store holds, read without changing it,
//! so an operator can decide what to do about a store the daemon refused.
//!
//! Reads every segment (it is a diagnosis, not a hot path) and reports the
//! counts, the id range, gaps between segments, each device's `last_seq`,
//! the durable high-water mark against the content, and the MQTT bridge's
//! outbox cursor. sled itself has no read-only mode: opening replays its log
//! exactly as the daemon's next start would, and this writes nothing else.
//! The write-ahead log ([`super::wal`]) is read, not applied: its commits
//! that sled lacks are reported, and the store is judged as the daemon's
//! next start will find it once it has applied them (their entries read
//! over sled's, [`AfterReplay`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::StoreError;
use super::{
    codec, hwm,
    recovery::{read_guarded, recover_with},
    wal, SegmentMeta, BRIDGE_CURSOR_KEY, INDEX_PREFIX, SEGMENT_PREFIX, SEQ_PREFIX,
};

/// What `check-store` found.
#[derive(Debug)]
pub struct Report {
    pub segments: u64,
    pub readings: u64,
    pub bytes: u64,
    /// Oldest and newest stored id.
    pub id_range: Option<(u64, u64)>,
    /// `(after, before)`: ids missing between two consecutive segments, or
    /// between the newest one and the next id.
    pub gaps: Vec<(u64, u64)>,
    /// `(after, before)`: such ids skipped on purpose (`--accept-data-loss`).
    pub skipped: Vec<(u64, u64)>,
    /// Segments that could not be decoded, with why.
    pub damaged: Vec<String>,
    /// Newest id the id bookkeeping accounts for.
    pub content_last_id: u64,
    /// The durable high-water mark (the higher of the mark file and the
    /// write-ahead log's newest commit), or why it could not be read.
    pub high_water_mark: Result<Option<u64>, String>,
    /// Commits in the write-ahead log that sled does not hold yet: the
    /// daemon's next start applies them.
    pub log_commits: usize,
    pub bridge_cursor: Option<u64>,
    pub devices: BTreeMap<String, u64>,
}

impl Report {
    /// True when nothing acknowledged is missing and everything decodes.
    pub fn healthy(&self) -> bool {
        self.gaps.is_empty()
            && self.damaged.is_empty()
            && matches!(self.high_water_mark, Ok(m) if m.unwrap_or(0) <= self.content_last_id)
    }
}

/// Opens the store at `path` and reads all of it. Fails only when sled
/// cannot open it at all (that error says why).
pub fn check(path: &Path) -> Result<Report, StoreError> {
    let log = wal::read(path)?.unwrap_or_default();
    let log_newest = log.newest_id;
    let high_water_mark = hwm::read(path)
        .map(|m| m.max(log_newest))
        .map_err(|e| e.to_string());
    let rec = recover_with(path, false)?;
    let db = rec.db;
    let high_water_mark = match high_water_mark {
        Ok(None) if db.get(super::HWM_KEPT_KEY)?.is_some() => {
            Err("the mark file is missing although this store had one".to_string())
        }
        other => other,
    };
    let mut report = Report {
        segments: 0,
        readings: 0,
        bytes: 0,
        id_range: None,
        gaps: Vec::new(),
        skipped: Vec::new(),
        damaged: Vec::new(),
        content_last_id: rec.last_id,
        high_water_mark,
        log_commits: rec.log_commits,
        bridge_cursor: None,
        devices: BTreeMap::new(),
    };
    // sled reads pages lazily, so damage its open did not touch shows up
    // only now: as an error, or as a panic in its deserializer.
    if let Err(damage) = read_guarded(|| read_all(&db, &log, &mut report)) {
        report.damaged.push(damage);
    }
    Ok(report)
}

/// Reads every segment, index entry and device record into `report`, as
/// they will be once the next start has applied the write-ahead log.
fn read_all(db: &sled::Db, log: &wal::Contents, report: &mut Report) -> Result<(), StoreError> {
    // The entries the next start writes, later commits over earlier ones
    // as the replay applies them. sled may hold some of these keys already,
    // or have lost them with a damaged page: the log's copy is what counts.
    let stored_next = super::recovery::stored_next_id(db)?;
    let replayed: Overlay = super::recovery::pending(stored_next, &log.records)
        .into_iter()
        .flat_map(|r| &r.entries)
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    // Ids between segments, and between the newest and the next id, that
    // nothing holds: found as the daemon's start finds them.
    let mut holes = super::holes::Holes::default();
    let mut index = AfterReplay::new(db, &replayed, INDEX_PREFIX);
    while let Some((k, v)) = index.next("segment index", &mut report.damaged) {
        let meta = match SegmentMeta::decode(&k, &v) {
            Ok(m) => m,
            Err(e) => {
                report.damaged.push(e.to_string());
                continue;
            }
        };
        // Index keys sort by first id: a segment starting at or below an
        // earlier one's end holds ids twice (no write makes one).
        if let Some(prev) = holes.overlapped_by(meta.first_id) {
            report.damaged.push(format!(
                "segment {} overlaps an earlier segment (ids up to {prev})",
                meta.first_id
            ));
        }
        holes.segment(meta.first_id, meta.last_id);
        report.segments += 1;
        report.bytes += meta.bytes;
        let first = report.id_range.map_or(meta.first_id, |(f, _)| f);
        report.id_range = Some((first, meta.last_id));
        let key = super::segment_key(meta.first_id);
        let (value, source) = match replayed.get(&key[..]) {
            Some(v) => (Ok(Some(sled::IVec::from(*v))), "write-ahead log: "),
            None => (db.get(key), ""),
        };
        match value {
            Ok(Some(v)) => match codec::decode_segment(&key, &v) {
                Ok(rs) => report.readings += rs.len() as u64,
                Err(e) => report.damaged.push(format!("{source}{e}")),
            },
            Ok(None) => report
                .damaged
                .push(format!("segment {} is indexed but missing", meta.first_id)),
            Err(e) => report
                .damaged
                .push(format!("segment {}: {e}", meta.first_id)),
        }
    }
    let mut seqs = AfterReplay::new(db, &replayed, SEQ_PREFIX);
    while let Some((k, v)) = seqs.next("device records", &mut report.damaged) {
        let device = String::from_utf8_lossy(&k[SEQ_PREFIX.len()..]).into_owned();
        match codec::decode_u64(&k, &v) {
            Ok(seq) => {
                report.devices.insert(device, seq);
            }
            Err(e) => report.damaged.push(e.to_string()),
        }
    }
    // Ids handed out above everything stored (the next id says so) are
    // missing too; ranges skipped on purpose (--accept-data-loss) are not
    // damage.
    let found = holes.end(report.content_last_id + 1);
    let gaps = super::holes::unexplained(&found, &super::holes::skipped(db)?);
    let around = |h: &super::holes::Ids| (h.start() - 1, h.end() + 1);
    report.skipped = found
        .iter()
        .filter(|h| !gaps.contains(h))
        .map(around)
        .collect();
    report.gaps = gaps.iter().map(around).collect();
    report.bridge_cursor = db
        .get(BRIDGE_CURSOR_KEY)?
        .and_then(|v| codec::decode_u64(BRIDGE_CURSOR_KEY, &v).ok());
    // Segments without an index entry would be invisible to readers.
    let indexed = report.segments;
    let mut segments = AfterReplay::new(db, &replayed, SEGMENT_PREFIX);
    let mut stored = 0u64;
    while segments.next("segments", &mut report.damaged).is_some() {
        stored += 1;
    }
    if stored != indexed {
        report
            .damaged
            .push(format!("{stored} segments stored but {indexed} indexed"));
    }
    Ok(())
}

/// The write-ahead log's entries that the next start applies, by key.
type Overlay<'a> = BTreeMap<&'a [u8], &'a [u8]>;

/// sled's entries under one prefix, in key order, with the log's pending
/// entries ([`Overlay`]) in place of sled's where both have a key: what a
/// scan will meet after the next start's replay, read without writing.
struct AfterReplay<'a> {
    sled: std::iter::Peekable<sled::Iter>,
    /// Set at sled's first error: its iterator repeats it forever.
    sled_failed: bool,
    log: std::iter::Peekable<std::vec::IntoIter<(&'a [u8], &'a [u8])>>,
}

impl<'a> AfterReplay<'a> {
    fn new(db: &sled::Db, replayed: &Overlay<'a>, prefix: &[u8]) -> Self {
        let log: Vec<_> = replayed
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (*k, *v))
            .collect();
        AfterReplay {
            sled: db.scan_prefix(prefix).peekable(),
            sled_failed: false,
            log: log.into_iter().peekable(),
        }
    }

    /// The next entry, or `None` at the end. The first error sled returns
    /// is recorded in `damaged` under `what`; the log's entries after it
    /// are still met.
    fn next(&mut self, what: &str, damaged: &mut Vec<String>) -> Option<(sled::IVec, sled::IVec)> {
        loop {
            let sled_key = match self.sled.peek() {
                _ if self.sled_failed => None,
                None => None,
                Some(Ok((k, _))) => Some(k.as_ref()),
                Some(Err(e)) => {
                    damaged.push(format!("{what}: {e}"));
                    self.sled_failed = true;
                    continue;
                }
            };
            let log_key = self.log.peek().map(|(k, _)| *k);
            return match (sled_key, log_key) {
                (None, None) => None,
                (Some(s), Some(l)) if l <= s => {
                    if l == s {
                        self.sled.next(); // written over by the replay
                    }
                    self.log.next().map(|(k, v)| (k.into(), v.into()))
                }
                (None, Some(_)) => self.log.next().map(|(k, v)| (k.into(), v.into())),
                (Some(_), _) => self.sled.next().and_then(Result::ok),
            };
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "segments:        {}", self.segments)?;
        writeln!(f, "readings:        {}", self.readings)?;
        writeln!(f, "bytes:           {}", self.bytes)?;
        match self.id_range {
            Some((lo, hi)) => writeln!(f, "id range:        {lo}..={hi}")?,
            None => writeln!(f, "id range:        (no readings retained)")?,
        }
        writeln!(f, "last id:         {}", self.content_last_id)?;
        if self.log_commits > 0 {
            writeln!(
                f,
                "write-ahead log: {} commits not yet in sled (applied at the next start)",
                self.log_commits
            )?;
        }
        match &self.high_water_mark {
            Ok(Some(m)) if *m > self.content_last_id => writeln!(
                f,
                "high-water mark: {m} -- {} acknowledged readings are MISSING",
                m - self.content_last_id
            )?,
            Ok(Some(m)) => writeln!(f, "high-water mark: {m} (ok)")?,
            Ok(None) => writeln!(f, "high-water mark: (none recorded)")?,
            Err(e) => writeln!(f, "high-water mark: unreadable: {e}")?,
        }
        match self.bridge_cursor {
            Some(c) => writeln!(f, "bridge cursor:   {c}")?,
            None => writeln!(f, "bridge cursor:   (bridge never ran)")?,
        }
        writeln!(f, "gaps:            {}", self.gaps.len())?;
        for (after, before) in &self.gaps {
            writeln!(f, "  ids {}..={} missing", after + 1, before - 1)?;
        }
        if !self.skipped.is_empty() {
            writeln!(f, "skipped:         {}", self.skipped.len())?;
            for (after, before) in &self.skipped {
                writeln!(
                    f,
                    "  ids {}..={} (--accept-data-loss)",
                    after + 1,
                    before - 1
                )?;
            }
        }
        writeln!(f, "damaged:         {}", self.damaged.len())?;
        for d in &self.damaged {
            writeln!(f, "  {d}")?;
        }
        writeln!(f, "devices:         {}", self.devices.len())?;
        for (device, seq) in &self.devices {
            writeln!(f, "  {device}\tlast_seq {seq}")?;
        }
        writeln!(
            f,
            "verdict:         {}",
            if self.healthy() {
                "healthy"
            } else {
                "PROBLEMS FOUND"
            }
        )
    }
}
