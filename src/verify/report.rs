//! The verification report: the contract's JSON object (docs/DESIGN.md, section 5, "Command
//! line and JSON") and the human summary and table.

use super::classify::{Kind, Verdict};
use crate::clock::rfc3339;
use crate::device::{MediaRead, ReadMode};
use crate::ledger::history::Event;
use crate::ledger::record::Generation;
use crate::ledger::state::BlockState;
use crate::ledger::Ledger;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Counts per outcome.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Blocks holding their latest generation.
    pub ok: u64,
    /// Lost updates.
    pub reverted: u64,
    /// Allowed losses of unflushed writes in a crash.
    pub unflushed: u64,
    /// Another block's contents.
    pub misdirected: u64,
    /// Unexpected zeroes.
    pub zeroed: u64,
    /// Unknown contents a crash may explain.
    pub uncertain: u64,
    /// Contents matching nothing recorded.
    pub corrupt: u64,
    /// Blocks not tracked (never written through the sidecar and not baselined, or trimmed).
    pub untracked: u64,
    /// Blocks whose last write failed: contents unknown, not judged.
    pub unknown: u64,
}

impl Summary {
    /// Adds one finding of `kind`.
    pub fn count(&mut self, kind: Kind) {
        *match kind {
            Kind::Reverted => &mut self.reverted,
            Kind::Unflushed => &mut self.unflushed,
            Kind::Misdirected => &mut self.misdirected,
            Kind::Zeroed => &mut self.zeroed,
            Kind::Uncertain => &mut self.uncertain,
            Kind::Corrupt => &mut self.corrupt,
        } += 1;
    }

    /// Count of `kind`.
    pub fn get(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Reverted => self.reverted,
            Kind::Unflushed => self.unflushed,
            Kind::Misdirected => self.misdirected,
            Kind::Zeroed => self.zeroed,
            Kind::Uncertain => self.uncertain,
            Kind::Corrupt => self.corrupt,
        }
    }
}

/// A lost generation as reported.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostWrite {
    /// Generation.
    pub generation: Generation,
    /// When it was written (RFC 3339).
    pub time: String,
    /// Whether it had been made durable.
    pub durable: bool,
    /// Session that wrote it.
    pub session: u64,
    /// write, zero, trim or failed.
    #[serde(default)]
    pub change: String,
}

/// Where misdirected contents belong.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BelongsTo {
    /// The block whose contents these are.
    pub block: u64,
    /// Its generation.
    pub generation: Generation,
}

/// One finding.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Finding {
    /// Block number (in the ledger's block size).
    pub block: u64,
    /// Byte offset on the device.
    pub offset: u64,
    /// Kind.
    pub kind: Kind,
    /// The generation the block should hold.
    pub expected_generation: Generation,
    /// When that generation was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_time: Option<String>,
    /// The older generation found (reverted, unflushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_generation: Option<Generation>,
    /// When the found generation was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_time: Option<String>,
    /// Generations lost, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostWrite>,
    /// Misdirected: whose contents these are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub belongs_to: Option<BelongsTo>,
    /// Explanation, when the kind alone does not say enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Finding {
    /// Builds a finding from a verdict.
    pub fn new(
        block: u64,
        offset: u64,
        expected: BlockState,
        latest: Option<&Event>,
        v: Verdict,
    ) -> Finding {
        Finding {
            block,
            offset,
            kind: v.kind,
            expected_generation: expected.generation(),
            expected_time: latest.map(|e| rfc3339(e.time)),
            found_generation: v.found_generation,
            found_time: v.found_time.map(rfc3339),
            lost: v
                .lost
                .iter()
                .map(|l| LostWrite {
                    generation: l.generation,
                    time: rfc3339(l.time),
                    durable: l.durable,
                    session: l.session,
                    change: l.change.to_string(),
                })
                .collect(),
            belongs_to: v
                .belongs_to
                .map(|(block, generation)| BelongsTo { block, generation }),
            note: v.note,
        }
    }

    /// One line of detail for the human table.
    pub fn detail(&self) -> String {
        let mut s = String::new();
        match self.kind {
            Kind::Reverted | Kind::Unflushed => {
                match self.found_generation {
                    Some(g) => write!(
                        s,
                        "holds gen {g}, expected gen {}",
                        self.expected_generation
                    ),
                    None => write!(s, "expected gen {}", self.expected_generation),
                }
                .ok();
                let lost: Vec<String> = self
                    .lost
                    .iter()
                    .map(|l| {
                        format!(
                            "gen {} {}{}",
                            l.generation,
                            l.time,
                            if l.durable { " durable" } else { " unflushed" }
                        )
                    })
                    .collect();
                if !lost.is_empty() {
                    let shown = lost.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
                    write!(s, "; lost {shown}").ok();
                    if lost.len() > 3 {
                        write!(s, " and {} more", lost.len() - 3).ok();
                    }
                }
            }
            Kind::Misdirected => {
                if let Some(b) = &self.belongs_to {
                    write!(
                        s,
                        "holds block {} gen {}; expected gen {}",
                        b.block, b.generation, self.expected_generation
                    )
                    .ok();
                }
            }
            Kind::Zeroed | Kind::Corrupt | Kind::Uncertain => {
                write!(s, "expected gen {}", self.expected_generation).ok();
                if let Some(t) = &self.expected_time {
                    write!(s, " ({t})").ok();
                }
            }
        }
        if let Some(n) = &self.note {
            write!(s, "; {n}").ok();
        }
        s
    }
}

/// The whole verification result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Device path as given.
    pub device: String,
    /// How the device was read: "direct", "cache-dropped", "cached" or "nbd"
    /// (docs/VERIFY.md, "How the device is read").
    pub read: ReadMode,
    /// Why the device was not read with O_DIRECT, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_note: Option<String>,
    /// Ledger directory.
    pub ledger: String,
    /// Block size.
    pub block_size: u32,
    /// Blocks on the device.
    pub blocks_total: u64,
    /// Blocks the ledger tracks.
    pub blocks_tracked: u64,
    /// Blocks read.
    pub blocks_scanned: u64,
    /// Counts.
    pub summary: Summary,
    /// `--strict` in effect.
    pub strict: bool,
    /// "clean", "findings", "ledger-damaged", or "nothing-tracked" (the ledger tracks no
    /// block, so nothing was verified: not a clean bill).
    pub result: &'static str,
    /// Findings in block order.
    pub findings: Vec<Finding>,
    /// What opening the ledger found (torn tail, rebuilt state table).
    pub ledger_warnings: Vec<String>,
    /// When the verification ran.
    pub time: String,
}

impl Report {
    /// Assembles a report.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &str,
        read: MediaRead,
        ledger: &Ledger,
        blocks_total: u64,
        blocks_tracked: u64,
        summary: Summary,
        findings: Vec<Finding>,
        strict: bool,
    ) -> Report {
        let damaged = ledger.recovery().state_rebuilt.is_some();
        let failing = findings.iter().any(|f| f.kind.fails(strict));
        Report {
            device: device.to_string(),
            read: read.mode,
            read_note: read.note,
            ledger: ledger.dir().display().to_string(),
            block_size: ledger.geometry().block_size,
            blocks_total,
            blocks_tracked,
            blocks_scanned: blocks_total,
            summary,
            strict,
            result: if damaged {
                "ledger-damaged"
            } else if failing {
                "findings"
            } else if blocks_tracked == 0 {
                "nothing-tracked"
            } else {
                "clean"
            },
            findings,
            ledger_warnings: ledger.recovery().warnings.clone(),
            time: rfc3339(crate::clock::now()),
        }
    }

    /// Number of findings that fail verification.
    pub fn failing(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.kind.fails(self.strict))
            .count()
    }

    /// The human rendering: summary, verdict, and a table of at most `max_rows` findings.
    pub fn human(&self, max_rows: usize) -> String {
        let s = &self.summary;
        let mut out = String::new();
        writeln!(
            out,
            "device {}  ledger {}  block size {}",
            self.device, self.ledger, self.block_size
        )
        .ok();
        writeln!(
            out,
            "scanned {} blocks ({} tracked): {} ok, {} reverted, {} unflushed, {} misdirected, {} zeroed, {} uncertain, {} corrupt; {} untracked, {} unknown",
            self.blocks_scanned, self.blocks_tracked, s.ok, s.reverted, s.unflushed, s.misdirected, s.zeroed, s.uncertain, s.corrupt, s.untracked, s.unknown
        )
        .ok();
        writeln!(out, "{}", read_line(self.read, self.read_note.as_deref())).ok();
        for w in &self.ledger_warnings {
            writeln!(out, "warning: {w}").ok();
        }
        let failing = self.failing();
        match self.result {
            "ledger-damaged" => writeln!(
                out,
                "LEDGER DAMAGED: the state table failed its checks and was rebuilt from the journal for this run; run `lostwrite ledger check` (and `ledger check --repair`)"
            ),
            _ if failing > 0 => writeln!(
                out,
                "FAILED: {failing} {} what the ledger says",
                if failing == 1 {
                    "block no longer holds"
                } else {
                    "blocks no longer hold"
                }
            ),
            _ if !self.findings.is_empty() => writeln!(
                out,
                "OK: no lost writes; {} unflushed and {} uncertain block{} after a crash (allowed: a crash may lose unflushed writes and their records; --strict fails them)",
                self.summary.unflushed,
                self.summary.uncertain,
                if self.findings.len() == 1 { "" } else { "s" }
            ),
            "nothing-tracked" => writeln!(
                out,
                "NOTHING VERIFIED: the ledger tracks no block (it was made without --baseline and nothing has been written through serve since); `lostwrite init --baseline` on a new ledger records every block"
            ),
            _ => writeln!(out, "OK: every tracked block holds its latest generation"),
        }
        .ok();
        if !self.findings.is_empty() {
            writeln!(out).ok();
            writeln!(
                out,
                "{:>12}  {:>14}  {:<12} DETAIL",
                "BLOCK", "OFFSET", "KIND"
            )
            .ok();
            for f in self.findings.iter().take(max_rows) {
                writeln!(
                    out,
                    "{:>12}  {:>14}  {:<12} {}",
                    f.block,
                    f.offset,
                    f.kind.name(),
                    f.detail()
                )
                .ok();
            }
            if self.findings.len() > max_rows {
                writeln!(
                    out,
                    "... and {} more (use --json for all)",
                    self.findings.len() - max_rows
                )
                .ok();
            }
        }
        out
    }
}

/// The human line saying how the device was read.
pub fn read_line(mode: ReadMode, note: Option<&str>) -> String {
    match note {
        Some(n) => format!("read: {} ({n}): {}", mode.name(), mode.meaning()),
        None => format!("read: {}: {}", mode.name(), mode.meaning()),
    }
}
