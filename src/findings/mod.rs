//! Findings: what a block that lost its latest generation is judged to be, and the record kept
//! of it. This module owns the classification rules ([`classify`], the pure function of a
//! block's history, and [`classify_all`], which reads the journal once for a batch of blocks),
//! the [`Finding`] they produce with what found it ([`Source`]), and the findings log
//! ([`log`], `findings.jsonl`).
//!
//! It sits below both of its users so that neither imports the other: `verify` classifies the
//! mismatches of a whole-device scan, the service's detector (`service::detect`) those of a
//! client's read or the scrubber, and both must judge a block the same way and write the same
//! findings. It uses only the ledger (history, state) beneath it (docs/DESIGN.md, section 6).

pub mod classify;
mod finding;
pub mod log;

pub use finding::{BelongsTo, Finding, LostWrite, Source};

use crate::error::Result;
use crate::ledger::history;
use crate::ledger::Ledger;
use classify::Found;
use std::collections::HashSet;

/// Classifies mismatched blocks with one pass over the journal.
pub fn classify_all(ledger: &Ledger, mismatches: &[(u64, Found)]) -> Result<Vec<Finding>> {
    if mismatches.is_empty() {
        return Ok(Vec::new());
    }
    let blocks: HashSet<u64> = mismatches.iter().map(|m| m.0).collect();
    let crcs: HashSet<u32> = mismatches.iter().map(|m| m.1.crc).collect();
    let hist = history::collect(ledger, &blocks, &crcs)?;
    let zero = ledger.zero_crc();
    let empty = Vec::new();
    let geo = ledger.geometry();
    // Crashed sessions that may have lost journal records, as (last surviving LSN).
    let lossy: Vec<u64> = hist.lossy_crashes().map(|s| s.last_lsn).collect();
    let mut out = Vec::with_capacity(mismatches.len());
    let mut no_history = 0usize;
    for &(b, found) in mismatches {
        let events = hist.events.get(&b).unwrap_or(&empty);
        if events.is_empty() {
            no_history += 1;
        }
        let other = hist
            .crc_hits
            .get(&found.crc)
            .and_then(|hits| hits.iter().filter(|e| e.block != b).max_by_key(|e| e.lsn));
        let last_durable = events.iter().rev().find(|e| e.durable).map_or(0, |e| e.lsn);
        let crash_could_explain = lossy.iter().any(|&end| end > last_durable);
        let mut v = classify::classify(events, found, zero, other, crash_could_explain);
        if let (Some((_, t)), classify::Kind::Corrupt, None) = (hist.compacted, v.kind, &v.note) {
            // Older generations than the first retained one were folded away.
            v.note = Some(format!(
                "matches nothing in the history retained since {} (older history was compacted: these may be contents from before then)",
                crate::clock::rfc3339(t)
            ));
        }
        let expected = ledger.state(b);
        out.push(Finding::new(b, geo.offset(b), expected, events.last(), v));
    }
    if no_history > 0 {
        tracing::warn!(
            "{no_history} tracked blocks have no history in the journal (was the journal replaced?)"
        );
    }
    Ok(out)
}
