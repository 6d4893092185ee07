//! The verification report: the contract's JSON object (docs/DESIGN.md, section 5, "Command
//! line and JSON"), its [`Outcome`], and the human summary and table. The findings in it are
//! [`crate::findings::Finding`]s, shared with the service's online detection.

use crate::clock::Micros;
use crate::device::{MediaRead, ReadMode};
use crate::findings::classify::Kind;
use crate::findings::Finding;
use crate::ledger::Ledger;
use serde::{Deserialize, Serialize};
use std::fmt::{self, Write as _};

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

/// What a verification concluded (the report's `result`; the CLI's exit status follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every tracked block holds its latest generation (findings that do not fail may remain).
    Clean,
    /// At least one finding fails verification.
    Findings,
    /// The state table failed its checks and was rebuilt for this run: nothing is settled.
    LedgerDamaged,
    /// The ledger tracks no block, so nothing was verified: not a clean bill.
    NothingTracked,
}

impl Outcome {
    /// The word written for it: `clean`, `findings`, `ledger-damaged`, `nothing-tracked`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Findings => "findings",
            Outcome::LedgerDamaged => "ledger-damaged",
            Outcome::NothingTracked => "nothing-tracked",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An outcome equals its word, so callers holding the JSON's text can compare with it.
impl PartialEq<&str> for Outcome {
    fn eq(&self, word: &&str) -> bool {
        self.name() == *word
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
    pub result: Outcome,
    /// Findings in block order.
    pub findings: Vec<Finding>,
    /// What opening the ledger found (torn tail, rebuilt state table).
    pub ledger_warnings: Vec<String>,
    /// When the verification ran (RFC 3339 in JSON).
    #[serde(with = "crate::clock::as_rfc3339")]
    pub time: Micros,
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
                Outcome::LedgerDamaged
            } else if failing {
                Outcome::Findings
            } else if blocks_tracked == 0 {
                Outcome::NothingTracked
            } else {
                Outcome::Clean
            },
            findings,
            ledger_warnings: ledger.recovery().warnings.clone(),
            time: crate::clock::now(),
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
            Outcome::LedgerDamaged => writeln!(
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
            Outcome::NothingTracked => writeln!(
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

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn outcomes_are_written_as_the_words_of_the_contract() {
        for (o, word) in [
            (Outcome::Clean, "clean"),
            (Outcome::Findings, "findings"),
            (Outcome::LedgerDamaged, "ledger-damaged"),
            (Outcome::NothingTracked, "nothing-tracked"),
        ] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{word}\""));
            assert_eq!((o.name(), o.to_string()), (word, word.to_string()));
            assert_eq!(o, word);
        }
        assert_ne!(Outcome::Clean, "findings");
    }
}
