//! Verification: hold the device against the ledger. Workers scan the device in parallel and
//! compare each tracked block's checksum with the state table (scan.rs does the reading); the
//! few mismatched blocks are then classified against the journal's history, read once for all
//! of them ([`crate::findings::classify_all`], shared with the service's online detection),
//! and the verdicts become a report (report.rs). The device is read from the media where it
//! allows (O_DIRECT); the report says how it was read.

pub mod report;

use crate::block;
use crate::device::BlockDevice;
use crate::error::Result;
use crate::findings::classify::Found;
use crate::findings::classify_all;
use crate::ledger::state::{BlockState, StateTable};
use crate::ledger::Ledger;
use report::{Report, Summary};
use std::sync::atomic::Ordering;

/// How to verify.
#[derive(Clone, Debug)]
pub struct Options {
    /// Scan threads.
    pub jobs: usize,
    /// `unflushed` and `uncertain` fail too.
    pub strict: bool,
    /// Show a progress bar (only drawn on a terminal).
    pub progress: bool,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    tracked: u64,
    untracked: u64,
    unknown: u64,
    mismatches: Vec<(u64, Found)>,
}

/// Scans `dev` and classifies every block that does not hold what `ledger` says.
pub fn run(ledger: &Ledger, dev: &dyn BlockDevice, opts: &Options) -> Result<Report> {
    let geo = ledger.geometry();
    let bs = geo.block_size as usize;
    let table = ledger.state_table().raw();
    let pb = if opts.progress {
        crate::scan::progress_bar(geo.device_size, "verify")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let zero = ledger.zero_crc();
    let tallies = crate::scan::parallel(
        dev,
        geo,
        opts.jobs,
        Some(&pb),
        Tally::default,
        |t, first, data| {
            for (i, blk) in data.chunks_exact(bs).enumerate() {
                let b = first + i as u64;
                match StateTable::decode_raw(table[b as usize].load(Ordering::Relaxed)) {
                    BlockState::Tracked { crc, .. } => {
                        t.tracked += 1;
                        let found = block::checksum(blk);
                        if found == crc {
                            t.ok += 1;
                        } else {
                            t.mismatches.push((b, Found::of(found, blk, zero)));
                        }
                    }
                    BlockState::Untracked { .. } => t.untracked += 1,
                    BlockState::Unknown { .. } => t.unknown += 1,
                }
            }
        },
    )?;
    pb.finish_and_clear();
    let mut total = Tally::default();
    for t in tallies {
        total.ok += t.ok;
        total.tracked += t.tracked;
        total.untracked += t.untracked;
        total.unknown += t.unknown;
        total.mismatches.extend(t.mismatches);
    }
    total.mismatches.sort_unstable_by_key(|m| m.0);
    let findings = classify_all(ledger, &total.mismatches)?;
    let mut summary = Summary {
        ok: total.ok,
        untracked: total.untracked,
        unknown: total.unknown,
        ..Summary::default()
    };
    for f in &findings {
        summary.count(f.kind);
    }
    Ok(Report::new(
        dev.name(),
        dev.media_read(),
        ledger,
        geo.block_count(),
        total.tracked,
        summary,
        findings,
        opts.strict,
    ))
}
