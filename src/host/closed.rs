//! What stopping a host reports, as data: for each export, the figures of its session
//! ([`Summary`]) and how it ended ([`Outcome`]). The host logs each export's closing line from
//! these; its caller picks the exit status from them.

use crate::error::Error;
use crate::service::Export;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How one export ended when its host stopped.
#[derive(Debug)]
pub struct Closed {
    /// The export's name (empty for the unnamed export).
    pub name: String,
    /// What it served in this session.
    pub summary: Summary,
    /// Whether its session closed cleanly.
    pub outcome: Outcome,
}

impl Closed {
    /// Closed cleanly: the next start and `verify` see a session that ended well.
    pub fn is_clean(&self) -> bool {
        matches!(self.outcome, Outcome::Clean)
    }
}

/// The end of one export's session.
#[derive(Debug)]
pub enum Outcome {
    /// Device and ledger synced, the session closed.
    Clean,
    /// The session had failed (a failed sync poisons it) and is left unclosed on purpose, so
    /// the next start and `verify` treat it as a crash; why it failed.
    Unclosed(String),
    /// Closing itself failed (syncing the device or the ledger, writing SessionClose).
    CloseFailed(Error),
}

/// An export's figures over its session, as its closing line gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// WRITE requests.
    pub writes: u64,
    /// Bytes they wrote.
    pub written_bytes: u64,
    /// READ requests.
    pub reads: u64,
    /// FLUSH requests.
    pub flushes: u64,
    /// Reads that found a block without its latest write.
    pub stale_reads: u64,
    /// Of those, the ones never classified because the detection queue was full.
    pub unclassified: u64,
    /// Findings recorded (every verdict).
    pub findings: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Log lines the service's log queue dropped (process-wide).
    pub log_lines_dropped: u64,
}

impl Summary {
    /// The figures of `e` now.
    pub fn of(e: &Export) -> Summary {
        let c = &e.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            writes: load(&c.writes),
            written_bytes: load(&c.written_bytes),
            reads: load(&c.reads),
            flushes: load(&c.flushes),
            stale_reads: load(&c.read_mismatches),
            unclassified: load(&c.suspects_dropped),
            findings: c.findings.iter().map(load).sum(),
            errors: load(&c.errors),
            log_lines_dropped: crate::logsink::dropped(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unclassified = match self.unclassified {
            0 => String::new(),
            n => format!(
                " ({n} of them unclassified, the detection queue being full: run `lostwrite verify`)"
            ),
        };
        let logs = match self.log_lines_dropped {
            0 => String::new(),
            n => format!(", {n} log lines dropped (stderr full, closed or failing)"),
        };
        write!(
            f,
            "{} writes ({} bytes), {} reads, {} flushes, {} stale reads{unclassified}, {} findings, {} errors{logs}",
            self.writes,
            self.written_bytes,
            self.reads,
            self.flushes,
            self.stale_reads,
            self.findings,
            self.errors,
        )
    }
}
