//! Retention: folding the oldest sealed journal segments into the compacted history (fold.rs)
//! and deleting them, so a ledger kept for months stays within a bound. The latest state is
//! never lost (the fold is the state at its LSN, and the state table is never touched here);
//! history inside the retention stays exact record by record; history before it shrinks to each
//! block's latest change. The running service compacts while it records: only sealed segments
//! are read, and readers of this process wait on the ledger's gate while the files are swapped.

use super::fold::{self, Fold, FoldChange, FoldEntry, FoldHeader, FoldSession, FoldWriter};
use super::history::{SessionEnd, Sessions};
use super::meta;
use super::reader::{self, SegmentInfo};
use super::record::{Lsn, Record};
use super::replay::journal_start;
use super::session::{merge_ranges, LedgerWriter};
use super::summary;
use super::{lock_mutex, segment, writer, JOURNAL_DIR};
use crate::clock::Micros;
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Most journal bytes one compaction pass folds (about 4.5 million records, 180 MiB of memory
/// while folding); more is folded by further passes.
pub const MAX_PASS_BYTES: u64 = 256 << 20;

/// How much journal history to keep. A sealed segment is folded when either limit says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep every record younger than this; a segment whose last record is older is folded.
    pub age: Option<Duration>,
    /// Keep the journal within this many bytes, folding the oldest segments first (the
    /// segment being written is never folded).
    pub bytes: Option<u64>,
}

impl Retention {
    /// True when neither limit is set.
    pub fn is_none(&self) -> bool {
        self.age.is_none() && self.bytes.is_none()
    }

    /// The segment size that keeps a `--retain-bytes` journal close to its limit: an eighth of
    /// it, between 1 MiB and the default 64 MiB.
    pub fn segment_bytes(&self) -> u64 {
        match self.bytes {
            Some(b) => (b / 8).clamp(1 << 20, segment::DEFAULT_SEGMENT_BYTES),
            None => segment::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// What one compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// Segments folded and deleted.
    pub segments: (u64, u64),
    /// Every record up to this LSN is now folded.
    pub through_lsn: Lsn,
    /// Time of the last folded record.
    pub through_time: Micros,
    /// Journal bytes deleted.
    pub freed: u64,
    /// Block entries in the new compacted history.
    pub entries: u64,
    /// The pass stopped at [`MAX_PASS_BYTES`]: call again to fold the rest.
    pub more: bool,
    /// How long folding and installing took.
    pub took: Duration,
}

/// Folds journal records into sessions and per-block latest changes.
struct Folder {
    sessions: Sessions,
    baseline: (Lsn, Micros),
    /// Every change record in LSN order (40 bytes each; a pass is at most
    /// [`MAX_PASS_BYTES`] of journal, so this stays within about 200 MiB).
    entries: Vec<FoldEntry>,
}

impl Folder {
    fn new(old: Option<&Fold>) -> Self {
        Folder {
            sessions: old.map(Sessions::from_fold).unwrap_or_default(),
            baseline: old.map_or((0, 0), |f| (f.header.baseline_lsn, f.header.baseline_time)),
            entries: Vec::new(),
        }
    }

    fn see(&mut self, lsn: Lsn, time: Micros, rec: &Record) {
        self.sessions.see(lsn, time, rec);
        let (block, generation, change) = match *rec {
            Record::Baseline { .. } => {
                self.baseline = (lsn, time);
                return;
            }
            Record::Write {
                block,
                generation,
                crc,
            } => (block, generation, FoldChange::Write(crc)),
            Record::Zero { block, generation } => (block, generation, FoldChange::Zero),
            Record::Trim { block, generation } => (block, generation, FoldChange::Trim),
            Record::Failed { block, generation } => (block, generation, FoldChange::Failed),
            Record::SessionOpen(_)
            | Record::SessionClose { .. }
            | Record::Flush { .. }
            | Record::Durable { .. }
            | Record::FlushIntent { .. }
            | Record::FlushConfirm { .. }
            | Record::Repair { .. } => return,
        };
        self.entries.push(FoldEntry {
            block,
            lsn,
            time,
            generation,
            change,
        });
    }

    /// Each block's latest change, in block order.
    fn latest(mut self) -> Vec<FoldEntry> {
        // Stable: a block's changes stay in LSN order, and the last one wins.
        self.entries.sort_by_key(|e| e.block);
        let mut out: Vec<FoldEntry> = Vec::with_capacity(self.entries.len());
        for e in self.entries {
            match out.last_mut() {
                Some(l) if l.block == e.block => *l = e,
                _ => out.push(e),
            }
        }
        out
    }

    /// The sessions as the file keeps them: durable ranges merged, those below `covers`
    /// dropped, flushes counted with the last one kept.
    fn sessions(&self) -> Vec<FoldSession> {
        let open = self.sessions.open();
        self.sessions
            .map
            .values()
            .filter(|s| s.id != 0)
            .map(|s| {
                let (end, close_lsn, close_time) = match s.end {
                    SessionEnd::Clean { lsn, time } => (fold::end::CLEAN, lsn, time),
                    _ if open && s.id == self.sessions.current => (fold::end::OPEN, 0, 0),
                    _ => (fold::end::CRASHED, 0, 0),
                };
                let mut ranges: Vec<(Lsn, Lsn)> = s
                    .ranges
                    .iter()
                    .copied()
                    .filter(|&(_, b)| b > s.covers)
                    .collect();
                ranges.sort_unstable();
                let last_flush = s.flushes.last().copied().unwrap_or((0, 0));
                FoldSession {
                    id: s.id,
                    open_lsn: s.open_lsn,
                    open_time: s.open_time,
                    strict: s.strict,
                    end,
                    close_lsn,
                    close_time,
                    last_lsn: s.last_lsn,
                    last_time: s.last_time,
                    covers: s.covers,
                    ranges: merge_ranges(ranges),
                    flushes: s.flush_count(),
                    last_flush_lsn: last_flush.0,
                    last_flush_time: last_flush.1,
                }
            })
            .collect()
    }
}

impl LedgerWriter {
    /// Folds the sealed journal segments that `keep` no longer retains into the compacted
    /// history and deletes them. Needs the writer (serve, or `ledger compact`). Returns `None`
    /// when nothing was old or large enough to fold.
    ///
    /// With `eager` (offline, `ledger compact`) everything beyond the limits is folded now. A
    /// running service passes false, so that folding (which rewrites the compacted history,
    /// 32 bytes per block ever written) happens in batches: once the journal passes
    /// `keep.bytes` it is folded down to three quarters of it, and once its oldest segment is
    /// older than `keep.age` by a further quarter, everything older than `keep.age` is folded.
    pub fn compact(&self, keep: Retention, now: Micros, eager: bool) -> Result<Option<Compacted>> {
        let journal = &self.journal;
        let jdir = self.dir.join(JOURNAL_DIR);
        let old = self.fold();
        let start = journal_start(old.as_ref());
        let current = journal.position().0;
        let mut sizes = Vec::new();
        for n in reader::list_segments(&jdir)? {
            if n >= start.segment {
                let p = segment::path(&jdir, n);
                let len = std::fs::metadata(&p)
                    .ctx(&p, "stat of journal segment")?
                    .len();
                sizes.push((n, len));
            }
        }
        let sealed: Vec<(u64, u64)> = sizes
            .iter()
            .copied()
            .filter(|&(n, _)| n < current)
            .collect();
        let mut upto: Option<u64> = None;
        let eager = eager || self.fold_pending.load(Ordering::Relaxed);
        if let Some(limit) = keep.bytes {
            let mut total: u64 = sizes.iter().map(|&(_, l)| l).sum();
            if eager || total > limit {
                let target = if eager { limit } else { limit / 4 * 3 };
                for &(n, len) in &sealed {
                    if total <= target {
                        break;
                    }
                    total -= len;
                    upto = Some(n);
                }
            }
        }
        if let Some(age) = keep.age {
            let micros = |d: Duration| d.as_micros().min(i64::MAX as u128) as i64;
            let cutoff = now.saturating_sub(micros(age));
            let trigger = if eager {
                cutoff
            } else {
                cutoff.saturating_sub(micros(age / 4))
            };
            let times = self.sealed_times(start, &sealed)?;
            let oldest = sealed.first().and_then(|(n, _)| times.get(n));
            if oldest.is_some_and(|&t| t < trigger) {
                for &(n, _) in &sealed {
                    if times.get(&n).is_some_and(|&t| t < cutoff) {
                        upto = upto.max(Some(n));
                    } else {
                        break;
                    }
                }
            }
        }
        let Some(mut upto) = upto else {
            return Ok(None);
        };
        // One pass holds every folded record in memory: at most MAX_PASS_BYTES of journal (the
        // rest waits for the next pass; OpenOptions::fold_pass_bytes may lower it).
        let mut pass = 0u64;
        let mut capped = false;
        for &(n, len) in sealed.iter().filter(|&&(n, _)| n <= upto) {
            pass += len;
            if pass > self.fold_pass_bytes && n > start.segment {
                upto = n - 1;
                capped = true;
                break;
            }
        }
        self.fold_pending.store(capped, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let freed: u64 = sealed
            .iter()
            .filter(|&&(n, _)| n <= upto)
            .map(|&(_, l)| l)
            .sum();

        // Fold: the old compacted history, then the segments, into a new file.
        let mut folder = Folder::new(old.as_ref());
        let end = reader::scan(
            &jdir,
            &self.meta.ledger_id,
            start,
            upto,
            start.lsn,
            (0, 0),
            &mut |e| {
                folder.see(e.lsn, e.time, e.record);
                Ok(())
            },
        )?;
        let last: &SegmentInfo = end
            .segments
            .last()
            .filter(|s| s.number == upto)
            .ok_or_else(|| {
                Error::damaged(
                    &jdir,
                    0,
                    format!("segment {upto} vanished while compacting"),
                )
            })?;
        let header = FoldHeader {
            ledger_id: self.meta.ledger_id,
            through_lsn: end.next_lsn - 1,
            next_segment: upto + 1,
            chain_crc: last.content_crc,
            chain_len: last.valid_len,
            through_time: end.last_time,
            baseline_lsn: folder.baseline.0,
            baseline_time: folder.baseline.1,
            last_session: folder.sessions.current,
            session_open: folder.sessions.open(),
            session_count: 0,
            entry_count: 0,
            sessions_len: 0,
            sessions_crc: 0,
        };
        let sessions = folder.sessions();
        let fresh = folder.latest();
        let mut w = FoldWriter::create(&self.dir, header, &sessions)?;
        let mut next = fresh.iter().peekable();
        if let Some(f) = &old {
            f.entries(&mut |e| {
                while let Some(n) = next.next_if(|n| n.block < e.block) {
                    w.push(n)?;
                }
                match next.next_if(|n| n.block == e.block) {
                    Some(n) => w.push(n),
                    None => w.push(e),
                }
            })?;
        }
        for n in next {
            w.push(n)?;
        }
        let (tmp, header) = w.finish()?;

        // Install: mark the ledger format, swap the file in, then delete what it covers. A crash
        // before the rename leaves the old state; after it, the next writer deletes leftovers.
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        // Version 2 (it may hold a compacted history), so a build that reads only version 1
        // refuses it by version instead of calling the journal damaged.
        meta::ensure_version(&self.dir, 2)?;
        let path = self.dir.join(fold::FOLD_FILE);
        std::fs::rename(&tmp, &path).ctx(&path, "installing the compacted history")?;
        writer::sync_dir(&self.dir)?;
        let installed = Fold {
            path,
            header,
            sessions,
        };
        *lock_mutex(&self.fold) = Some(installed);
        for n in start.segment..=upto {
            let p = segment::path(&jdir, n);
            // The summary first: a crash in between leaves a segment without one (read in
            // full), never a summary without its segment.
            summary::remove(&jdir, n)?;
            std::fs::remove_file(&p).ctx(&p, "removing a compacted journal segment")?;
        }
        writer::sync_dir(&jdir)?;
        lock_mutex(&self.segment_times).retain(|&n, _| n > upto);
        Ok(Some(Compacted {
            segments: (start.segment, upto),
            through_lsn: header.through_lsn,
            through_time: header.through_time,
            freed,
            entries: header.entry_count,
            took: started.elapsed(),
            more: capped,
        }))
    }

    /// Compacts eagerly, pass after pass, until nothing beyond `keep` is left (what `ledger
    /// compact` does); returns every pass.
    pub fn compact_all(&self, keep: Retention, now: Micros) -> Result<Vec<Compacted>> {
        let mut passes = Vec::new();
        while let Some(c) = self.compact(keep, now, true)? {
            passes.push(c);
        }
        Ok(passes)
    }

    /// Starts a new journal segment so that everything recorded so far can be folded; returns
    /// false when the current segment holds nothing yet.
    pub fn seal_segment(&self) -> Result<bool> {
        self.journal.seal()
    }

    /// Time of the first record of the segment being written, if it holds any (writer only).
    pub fn segment_started(&self) -> Option<Micros> {
        self.journal.segment_started()
    }

    /// Waits up to `timeout` for the writer to start a segment after the `seen`-th; returns
    /// how many it has started.
    pub fn wait_segment(&self, seen: u64, timeout: Duration) -> u64 {
        self.journal.wait_roll(seen, timeout)
    }

    /// Last record times of sealed segments, read once each (they never change).
    fn sealed_times(
        &self,
        start: reader::Start,
        sealed: &[(u64, u64)],
    ) -> Result<BTreeMap<u64, Micros>> {
        let mut times = lock_mutex(&self.segment_times).clone();
        if let Some(&(last, _)) = sealed.last() {
            if !times.contains_key(&last) {
                let end = reader::scan(
                    &self.dir.join(JOURNAL_DIR),
                    &self.meta.ledger_id,
                    start,
                    last,
                    Lsn::MAX,
                    (0, 0),
                    &mut |_| Ok(()),
                )?;
                for s in &end.segments {
                    times.insert(s.number, s.last_time);
                }
                *lock_mutex(&self.segment_times) = times.clone();
            }
        }
        Ok(times)
    }
}
