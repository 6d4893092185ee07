//! The findings log: every lost write the sidecar detects while running (on a client's read or
//! by the scrubber) is appended to `findings.jsonl` in the ledger directory, one JSON object per
//! line, and stays open until a later verification of that block passes (a read or scrub that
//! finds the block holding its latest generation, or `lostwrite verify`), which appends a
//! `cleared` line. The log is evidence: it is only appended to, each line synced.
//!
//! ```text
//! {"event":"found","time":"…","source":"read","block":12,"offset":49152,"kind":"reverted",…}
//! {"event":"cleared","time":"…","source":"scrub","block":12}
//! ```
//!
//! A torn last line (a crash mid-append) is ignored when read; any other unreadable line is
//! reported and skipped.

use super::report::Finding;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// File name inside the ledger directory.
pub const FINDINGS_FILE: &str = "findings.jsonl";

/// One line of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Entry {
    /// A block found not holding its latest generation.
    Found {
        /// When it was detected (RFC 3339).
        time: String,
        /// What detected it: `read`, `scrub`.
        source: String,
        /// The finding, classified as `verify` would.
        #[serde(flatten)]
        finding: Finding,
    },
    /// A later verification of the block passed.
    Cleared {
        /// When.
        time: String,
        /// What verified it: `read`, `scrub`, `verify`.
        source: String,
        /// The block.
        block: u64,
    },
}

/// The log, open for appending, with the findings still open.
pub struct FindingsLog {
    path: PathBuf,
    file: Mutex<File>,
    open: Mutex<BTreeMap<u64, Finding>>,
    open_count: AtomicUsize,
}

/// Reads every readable entry of a findings log (none when the file does not exist), with a
/// warning for each damaged line other than a torn last one.
pub fn read(dir: &Path) -> Result<(Vec<Entry>, Vec<String>)> {
    let path = dir.join(FINDINGS_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(Error::io(&path, "reading the findings log", e)),
    };
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let complete = text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|&c| c == b'\n').collect();
    let mut offset = 0usize;
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if !line.is_empty() {
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) => entries.push(e),
                Err(_) if last && !complete => warnings.push(format!(
                    "{}: torn last line at offset {offset} (a crash mid-append) ignored",
                    path.display()
                )),
                Err(e) => warnings.push(format!(
                    "{}: line {} at offset {offset} is not a findings entry ({e}); skipped",
                    path.display(),
                    i + 1
                )),
            }
        }
        offset += line.len() + 1;
    }
    Ok((entries, warnings))
}

/// The findings still open after replaying `entries`, by block.
pub fn open_findings(entries: &[Entry]) -> BTreeMap<u64, Finding> {
    let mut open = BTreeMap::new();
    for e in entries {
        match e {
            Entry::Found { finding, .. } => {
                open.insert(finding.block, finding.clone());
            }
            Entry::Cleared { block, .. } => {
                open.remove(block);
            }
        }
    }
    open
}

impl FindingsLog {
    /// Opens (creating if needed) the log of the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<FindingsLog> {
        let path = dir.join(FINDINGS_FILE);
        let (entries, warnings) = read(dir)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let open = open_findings(&entries);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ctx(&path, "opening the findings log for appending")?;
        Ok(FindingsLog {
            path,
            file: Mutex::new(file),
            open_count: AtomicUsize::new(open.len()),
            open: Mutex::new(open),
        })
    }

    fn append(&self, e: &Entry) -> Result<()> {
        let mut line = serde_json::to_vec(e).expect("entries serialise");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line with O_APPEND: lines from several processes never interleave.
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .ctx(&self.path, "appending to the findings log")
    }

    /// Records a finding unless the same one (block, kind, expected generation) is already
    /// open. Returns whether it was new.
    pub fn found(&self, source: &str, f: &Finding) -> Result<bool> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(&f.block).is_some_and(|o| {
            (o.kind, o.expected_generation, o.found_generation)
                == (f.kind, f.expected_generation, f.found_generation)
        }) {
            return Ok(false);
        }
        self.append(&Entry::Found {
            time: crate::clock::rfc3339(crate::clock::now()),
            source: source.into(),
            finding: f.clone(),
        })?;
        open.insert(f.block, f.clone());
        self.open_count.store(open.len(), Ordering::Relaxed);
        Ok(true)
    }

    /// Clears the open finding of `block`, if there is one, because a verification passed.
    pub fn cleared(&self, source: &str, block: u64) -> Result<bool> {
        if self.open_count.load(Ordering::Relaxed) == 0 {
            return Ok(false);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !open.contains_key(&block) {
            return Ok(false);
        }
        self.append(&Entry::Cleared {
            time: crate::clock::rfc3339(crate::clock::now()),
            source: source.into(),
            block,
        })?;
        open.remove(&block);
        self.open_count.store(open.len(), Ordering::Relaxed);
        Ok(true)
    }

    /// Whether any finding is open (cheap: for the read path).
    pub fn any_open(&self) -> bool {
        self.open_count.load(Ordering::Relaxed) > 0
    }

    /// The open findings, by block.
    pub fn still_open(&self) -> BTreeMap<u64, Finding> {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// After a whole-device verification: clears every open finding of the ledger in `dir` whose
/// block now holds its latest generation (tracked, and not among `report`'s findings). Returns
/// how many were cleared. A ledger without a findings log is left without one.
pub fn clear_verified(
    dir: &Path,
    ledger: &crate::ledger::Ledger,
    report: &super::report::Report,
) -> Result<usize> {
    if !dir.join(FINDINGS_FILE).exists() {
        return Ok(0);
    }
    let log = FindingsLog::open(dir)?;
    let still_bad: std::collections::HashSet<u64> =
        report.findings.iter().map(|f| f.block).collect();
    let mut n = 0;
    for block in log.still_open().into_keys() {
        let tracked = matches!(
            ledger.state(block),
            crate::ledger::state::BlockState::Tracked { .. }
        );
        if tracked && !still_bad.contains(&block) && log.cleared("verify", block)? {
            n += 1;
        }
    }
    Ok(n)
}
