//! `ledger check`: validate every byte of a ledger without trusting any of it, and list every
//! problem with its file and offset: metadata, baseline pages, every journal frame and the
//! segment chain, the state table's header and pages, and finally every state entry against a
//! fresh replay of the whole journal.

use super::baseline::Baseline;
use super::fold::Fold;
use super::kept::KeptData;
use super::meta::Meta;
use super::open::{open_state, running_checkpoint};
use super::replay::{apply, journal_start, Replay};
use super::state::{StateHeader, StateTable};
use super::{files, lock, reader, BASELINE_FILE, JOURNAL_DIR, META_FILE, STATE_FILE};
use crate::block::{self, Geometry};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// One problem found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged file.
    pub file: String,
    /// Byte offset within it.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Problems; empty means the ledger is sound.
    pub problems: Vec<Problem>,
    /// Notes that are not damage (a torn tail left by a crash).
    pub warnings: Vec<String>,
    /// Facts about the ledger worth knowing (history folded by retention).
    pub notes: Vec<String>,
    /// Journal segments read.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// Blocks compared with the replay.
    pub blocks: u64,
    /// The data log (`serve --keep-data`), when the ledger has one.
    pub kept: Option<KeptSummary>,
}

/// What the check found in the data log.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeptSummary {
    /// The data directory.
    pub dir: String,
    /// Its segments.
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Valid entries (hash and contents checked).
    pub entries: u64,
    /// First and last entry's time.
    pub window: Option<(String, String)>,
}

impl CheckReport {
    fn add(&mut self, e: Error) {
        match e {
            Error::Damaged {
                path,
                offset,
                detail,
            } => self.problems.push(Problem {
                file: path.display().to_string(),
                offset,
                what: detail,
            }),
            Error::Io {
                path,
                action,
                source,
            } => self.problems.push(Problem {
                file: path.display().to_string(),
                offset: 0,
                what: format!("{action}: {source}"),
            }),
            other => self.problems.push(Problem {
                file: String::new(),
                offset: 0,
                what: other.to_string(),
            }),
        }
    }
}

/// Most entry mismatches listed one by one.
const MAX_LISTED: usize = 20;

/// Checks the ledger in `dir`. Errors only for trouble that stops the check itself (no ledger,
/// locked by a writer); damage is returned in the report.
pub fn check(dir: &Path) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    if !dir.join(META_FILE).exists() {
        return Err(files::no_ledger(dir));
    }
    let _lock = lock::acquire(dir, false)?;
    let meta = match Meta::read(&dir.join(META_FILE)) {
        Ok(m) => m,
        Err(e) => {
            rep.add(e);
            return Ok(rep);
        }
    };
    check_kept(dir, &mut rep);
    let geo = Geometry::new(meta.block_size, meta.device_size);
    let n = geo.block_count();
    let zero = block::zero_checksum(meta.block_size);
    let bpath = dir.join(BASELINE_FILE);
    let baseline = if bpath.exists() {
        match Baseline::open(&bpath, meta.block_size, n, &meta.ledger_id) {
            Ok(b) => Some(b),
            Err(e) => {
                rep.add(e);
                None
            }
        }
    } else {
        None
    };
    let promised = Fold::read(dir, &meta.ledger_id)
        .and_then(|f| files::check_promised(dir, &meta, f.as_ref()));
    // Without a promised file the replay below cannot run; the state table is still checked.
    let incomplete = promised.is_err();
    if let Err(e) = promised {
        rep.add(e);
    }
    let spath = dir.join(STATE_FILE);
    let state = match open_state(&spath, n, false) {
        Ok(s) => Some(s),
        Err(e) => {
            rep.add(e);
            None
        }
    };
    let header: Option<StateHeader> = match state.as_ref().map(|s| s.header()) {
        Some(Ok(h)) => {
            if h.ledger_id != meta.ledger_id
                || h.block_count != n
                || h.block_size != meta.block_size
            {
                rep.problems.push(Problem {
                    file: spath.display().to_string(),
                    offset: 0,
                    what: "state table header belongs to another ledger or geometry".into(),
                });
                None
            } else {
                Some(h)
            }
        }
        Some(Err(e)) => {
            rep.add(e);
            None
        }
        None => None,
    };
    if let (Some(s), Some(h)) = (&state, &header) {
        if h.clean {
            for p in s.bad_pages() {
                rep.problems.push(Problem {
                    file: spath.display().to_string(),
                    offset: s.check_offset(p),
                    what: format!(
                        "state page {p} (entries at offset {}..{}) does not match its check value",
                        s.entry_offset(p as u64 * 512),
                        s.entry_offset((p as u64 + 1) * 512)
                    ),
                });
            }
        }
    }
    if incomplete {
        return Ok(rep);
    }
    // A fresh replay of the whole journal, and the file's own view brought up to date.
    let fresh = StateTable::anonymous(n)?;
    let jdir = dir.join(JOURNAL_DIR);
    let fold = match Fold::read(dir, &meta.ledger_id) {
        Ok(f) => f,
        Err(e) => {
            rep.add(e);
            return Ok(rep);
        }
    };
    let replay = Replay {
        state: &fresh,
        baseline: baseline.as_ref(),
        zero_crc: zero,
        jdir: &jdir,
        ledger_id: &meta.ledger_id,
        start: journal_start(fold.as_ref()),
        skim: false,
    };
    if let Err(e) = replay.seed(fold.as_ref()) {
        rep.add(e);
        return Ok(rep);
    }
    let mut state = state;
    if let Some(f) = &fold {
        rep.notes.push(format!(
            "history through LSN {} is compacted in {} ({} blocks' latest changes); the journal resumes at segment {}",
            f.header.through_lsn,
            f.path.display(),
            f.header.entry_count,
            f.header.next_segment
        ));
        if header.is_some_and(|h| h.checkpoint_lsn < f.header.through_lsn) {
            rep.warnings.push(
                "the state table was checkpointed before the compacted history ends: the next writer rebuilds it".into(),
            );
            state = None;
        }
    }
    if let Some(h) = header.filter(|h| !h.clean && h.running.is_some()) {
        match running_checkpoint(&h) {
            Ok(()) => rep.notes.push(format!(
                "the last writer did not close the ledger; its running checkpoint is at LSN {}: the next writer replays the journal after it",
                h.checkpoint_lsn
            )),
            Err(why) => {
                // The table may be ahead of the journal after a host crash: not damage.
                rep.warnings.push(format!(
                    "{why}; the next writer rebuilds the state table from the journal"
                ));
                state = None;
            }
        }
    }
    let ckpt = header.map_or(0, |h| h.checkpoint_lsn);
    let protected = header.map_or((0, 0), |h| h.checkpoint_pos);
    let mut records = 0u64;
    let scanned = reader::scan(
        &jdir,
        &meta.ledger_id,
        replay.start,
        u64::MAX,
        replay.start.lsn,
        protected,
        &mut |e| {
            records += 1;
            apply(&fresh, baseline.as_ref(), zero, e.lsn, e.record, &jdir)?;
            if let (Some(s), true) = (&state, e.lsn > ckpt) {
                apply(s, baseline.as_ref(), zero, e.lsn, e.record, &jdir)?;
            }
            Ok(())
        },
    );
    rep.records = records;
    match scanned {
        Ok(end) => {
            rep.segments = end.segments.len();
            let clean = header.is_some_and(|h| h.clean);
            match &end.torn {
                Some(t) if clean && t.offset > 0 => rep.add(files::foreign_tail(t)),
                Some(t) => rep.warnings.push(format!(
                    "torn tail in {} at offset {} ({} bytes, never synced: left by a crash; the next writer truncates it)",
                    t.path.display(),
                    t.offset,
                    t.file_len - t.offset
                )),
                None => {}
            }
            if let Some(h) = header.filter(|_| end.next_lsn - 1 < ckpt) {
                rep.add(files::journal_short(&jdir, &end, &h));
            }
        }
        Err(e) => {
            rep.add(e);
            return Ok(rep);
        }
    }
    if let (Some(s), Some(h)) = (&state, &header) {
        if !h.clean {
            for p in s.bad_pages() {
                rep.problems.push(Problem {
                    file: spath.display().to_string(),
                    offset: s.check_offset(p),
                    what: format!("state page {p} does not match its check value after replay"),
                });
            }
        }
        let mut differing = 0usize;
        for b in 0..n {
            let (want, have) = (fresh.get(b), s.get(b));
            if want != have {
                differing += 1;
                if differing <= MAX_LISTED {
                    rep.problems.push(Problem {
                        file: spath.display().to_string(),
                        offset: s.entry_offset(b),
                        what: format!("block {b}: the table says {have}, the journal says {want}"),
                    });
                }
            }
        }
        if differing > MAX_LISTED {
            rep.problems.push(Problem {
                file: spath.display().to_string(),
                offset: 0,
                what: format!(
                    "... and {} more entries differ from the journal",
                    differing - MAX_LISTED
                ),
            });
        }
        rep.blocks = n;
    }
    Ok(rep)
}

/// Reads every entry of the data log (hash, then contents against its CRC-32) and names every
/// run of bytes that is not one: damage with its file and offset, a crash's torn tail as a
/// warning.
fn check_kept(dir: &Path, rep: &mut CheckReport) {
    let k = match KeptData::open(dir) {
        Ok(Some(k)) => k,
        Ok(None) => return,
        Err(e) => return rep.add(e),
    };
    for d in k.damage() {
        if d.torn {
            rep.warnings.push(format!(
                "data log: torn tail in {} at offset {} ({} bytes, never synced: left by a crash; the next writer truncates it)",
                d.path.display(),
                d.offset,
                d.len
            ));
        } else {
            rep.problems.push(Problem {
                file: d.path.display().to_string(),
                offset: d.offset,
                what: format!(
                    "data log: {} bytes are not a valid entry ({}); no block is ever taken from them",
                    d.len, d.what
                ),
            });
        }
    }
    rep.kept = Some(KeptSummary {
        dir: k.dir().display().to_string(),
        segments: k.segments().len(),
        bytes: k.bytes(),
        entries: k.entries(),
        window: k
            .window()
            .map(|(a, b)| (crate::clock::rfc3339(a), crate::clock::rfc3339(b))),
    });
}
