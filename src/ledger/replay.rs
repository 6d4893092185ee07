//! Replay: bringing a state table up to date from the compacted history and the journal.
//! [`apply`] is the one place a record changes the table (replay, rebuild and live recording
//! all use it); [`Replay`] seeds a cleared table from the compacted history and follows the
//! journal from an LSN on, following the sessions it passes (sessions.rs); [`scan_live`] reads the
//! journal of a ledger a running service holds, retrying when that service compacts meanwhile.

use super::baseline::Baseline;
use super::fold::{Fold, FoldChange, FoldEntry};
use super::reader::{self, JournalEnd, Resume, Start};
use super::record::{Lsn, Record};
use super::sessions::Sessions;
use super::state::{BlockState, StateTable};
use super::summary;
use super::JOURNAL_DIR;
use crate::error::{Error, Result};
use std::path::Path;

/// Where the journal starts given the compacted history.
pub(super) fn journal_start(fold: Option<&Fold>) -> Start {
    fold.map_or(Start::ORIGIN, |f| Start {
        segment: f.header.next_segment,
        lsn: f.header.through_lsn + 1,
        prev: (f.header.chain_crc, f.header.chain_len),
    })
}

/// The record a fold entry stands for.
fn fold_record(e: &FoldEntry) -> Record {
    let (block, generation) = (e.block, e.generation);
    match e.change {
        FoldChange::Write(crc) => Record::Write {
            block,
            generation,
            crc,
        },
        FoldChange::Zero => Record::Zero { block, generation },
        FoldChange::Trim => Record::Trim { block, generation },
        FoldChange::Failed => Record::Failed { block, generation },
    }
}

/// Applies one record to the state table (used by replay, rebuild and live recording).
pub(super) fn apply(
    state: &StateTable,
    baseline: Option<&Baseline>,
    zero_crc: u32,
    lsn: Lsn,
    rec: &Record,
    path: &Path,
) -> Result<()> {
    let check = |block: u64| {
        if block >= state.block_count() {
            Err(Error::damaged(
                path,
                0,
                format!(
                    "record LSN {lsn} names block {block}, beyond the device's {} blocks",
                    state.block_count()
                ),
            ))
        } else {
            Ok(block)
        }
    };
    match *rec {
        Record::Write {
            block,
            generation,
            crc,
        } => state.set(check(block)?, BlockState::Tracked { generation, crc }),
        Record::Zero { block, generation } => state.set(
            check(block)?,
            BlockState::Tracked {
                generation,
                crc: zero_crc,
            },
        ),
        Record::Trim { block, generation } => {
            state.set(check(block)?, BlockState::Untracked { generation })
        }
        Record::Failed { block, generation } => {
            state.set(check(block)?, BlockState::Unknown { generation })
        }
        Record::Baseline { blocks } => {
            let b = baseline.ok_or_else(|| {
                Error::damaged(
                    path,
                    0,
                    format!("record LSN {lsn} is a baseline, but the ledger has no baseline file"),
                )
            })?;
            for blk in 0..blocks.min(b.block_count()) {
                state.set(
                    blk,
                    BlockState::Tracked {
                        generation: 0,
                        crc: b.get(blk),
                    },
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Bringing a state table up to date from the journal.
pub(super) struct Replay<'a> {
    /// The table brought up to date.
    pub state: &'a StateTable,
    /// The baseline a baseline record refers to.
    pub baseline: Option<&'a Baseline>,
    /// Checksum of a zero block.
    pub zero_crc: u32,
    /// The journal directory.
    pub jdir: &'a Path,
    /// The ledger's id, which every segment carries.
    pub ledger_id: &'a [u8; 16],
    /// Where the retained journal starts.
    pub start: Start,
    /// Skip sealed segments wholly before the first record applied when their summaries match.
    pub skim: bool,
}

impl Replay<'_> {
    /// Puts the state at the fold point into the (cleared) table: the folded baseline, then each
    /// block's latest folded change. Returns the sessions as they stood there.
    pub(super) fn seed(&self, fold: Option<&Fold>) -> Result<Sessions> {
        let Some(f) = fold else {
            return Ok(Sessions::default());
        };
        if f.header.baseline_lsn != 0 {
            let all = Record::Baseline { blocks: u64::MAX };
            apply(
                self.state,
                self.baseline,
                self.zero_crc,
                f.header.baseline_lsn,
                &all,
                &f.path,
            )?;
        }
        f.entries(&mut |e| {
            apply(
                self.state,
                self.baseline,
                self.zero_crc,
                e.lsn,
                &fold_record(e),
                &f.path,
            )
        })?;
        Ok(Sessions::from_fold(f))
    }

    /// Applies every record from LSN `from` on, following sessions; returns where the journal
    /// ends and how many records were applied.
    /// With `resume` (a replay from the table's checkpoint, which names where LSN `from` lies)
    /// and [`Replay::skim`], the last segment is read from there on (reader.rs, [`Resume`]).
    pub(super) fn run(
        &self,
        from: Lsn,
        protected: (u64, u64),
        resume: Option<Resume>,
        sessions: &mut Sessions,
    ) -> Result<(JournalEnd, u64)> {
        let mut n = 0u64;
        let mut each = |e: reader::Entry<'_>| {
            n += 1;
            sessions.see_bounds(e.lsn, e.time, e.record);
            apply(
                self.state,
                self.baseline,
                self.zero_crc,
                e.lsn,
                e.record,
                self.jdir,
            )
        };
        // A skimming reader's replay from a checkpoint in the last segment reads only that
        // segment's tail: the reader's own walk reads and checks the whole journal later.
        let tail = match resume.filter(|_| self.skim) {
            Some(r) => {
                reader::scan_tail(self.jdir, self.ledger_id, r, protected, &mut |p, pos, f| {
                    reader::decode(p, pos, f, from, &mut each)
                })?
            }
            None => None,
        };
        let end = if let Some(end) = tail {
            end
        } else if self.skim {
            // Only segments wholly before `from` are skipped, so no mark is ever handed over.
            let walk = summary::Walk {
                decode_from: from,
                protected,
                resume,
                wants: &|s| s.next_lsn > from,
                blocks: None,
            };
            summary::scan(
                self.jdir,
                self.ledger_id,
                self.start,
                &walk,
                &mut |seen| match seen {
                    summary::Seen::Record(e) => each(e),
                    summary::Seen::Touch(..) => Ok(()),
                },
            )?
        } else {
            reader::scan(
                self.jdir,
                self.ledger_id,
                self.start,
                u64::MAX,
                from,
                protected,
                &mut each,
            )?
        };
        Ok((end, n))
    }
}

/// What [`scan_live`] hands its records to: the fold with each record (the fold alone once,
/// before the first).
type LiveVisitor<'a> = dyn FnMut(Option<&Fold>, Option<reader::Entry<'_>>) -> Result<()> + 'a;

/// Reads the journal of a ledger a running service holds, from its compacted history on,
/// handing `visit` the fold once (with no entry) and then each record. A service compacting
/// between reading the fold and reading the segments shows as a missing segment: the read starts
/// again with the new fold, a few times.
pub(super) fn scan_live(
    dir: &Path,
    ledger_id: &[u8; 16],
    from: Lsn,
    visit: &mut LiveVisitor<'_>,
) -> Result<(Option<Fold>, JournalEnd)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let fold = Fold::read(dir, ledger_id)?;
        let start = journal_start(fold.as_ref());
        // A failed attempt has visited nothing: the fold is handed over only with the first
        // record, or at the end when no record follows.
        let mut buffered = true;
        let r = reader::scan(
            &dir.join(JOURNAL_DIR),
            ledger_id,
            start,
            u64::MAX,
            from,
            (0, 0),
            &mut |e| {
                if buffered {
                    buffered = false;
                    visit(fold.as_ref(), None)?;
                }
                visit(fold.as_ref(), Some(e))
            },
        );
        match r {
            Ok(end) => {
                if buffered {
                    visit(fold.as_ref(), None)?;
                }
                return Ok((fold, end));
            }
            Err(Error::Damaged { .. }) if buffered && attempt < 5 => {
                let now = Fold::read(dir, ledger_id)?;
                if journal_start(now.as_ref()) == start {
                    return r.map(|end| (fold, end));
                }
            }
            Err(e) => return Err(e),
        }
    }
}
