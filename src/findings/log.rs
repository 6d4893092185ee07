//! The findings log: every lost write the sidecar detects while running (on a client's read or
//! by the scrubber) is appended to `findings.jsonl` in the ledger directory, one JSON object per
//! line, and stays open until a later verification of that block passes (a read or scrub that
//! finds the block holding its latest generation, or `lostwrite verify`), which appends a
//! `cleared` line. The log is evidence: it is only appended to, each line synced.
//!
//! ```text
//! {"event":"found","time":"…","source":"read","block":12,"offset":49152,"kind":"reverted",…}
//! {"event":"cleared","time":"…","source":"scrub","block":12}
//! {"event":"unclassified","time":"…","source":"read","count":10183}
//! {"event":"verified","time":"…"}
//! ```
//!
//! `unclassified` counts stale reads that the detection queue had no room to judge: they are
//! not findings, but they say that blocks were seen stale and that only a `verify` can say
//! which. A later whole-device `verify` writes `verified`, which settles them.
//!
//! A torn last line (a crash mid-append) is ignored when read; any other unreadable line (one
//! with a source, kind or time this version does not know among them) is reported and skipped.

use super::{Finding, Source};
use crate::clock::Micros;
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
        /// When it was detected (RFC 3339 in the log).
        #[serde(with = "crate::clock::as_rfc3339")]
        time: Micros,
        /// What detected it: `read`, `scrub`.
        source: Source,
        /// The finding, classified as `verify` would.
        #[serde(flatten)]
        finding: Finding,
    },
    /// A later verification of the block passed.
    Cleared {
        /// When.
        #[serde(with = "crate::clock::as_rfc3339")]
        time: Micros,
        /// What verified it: `read`, `scrub`, `verify`.
        source: Source,
        /// The block.
        block: u64,
    },
    /// Stale blocks seen that could not be classified (the detection queue was full).
    Unclassified {
        /// When they were counted.
        #[serde(with = "crate::clock::as_rfc3339")]
        time: Micros,
        /// What saw them: `read`.
        source: Source,
        /// How many stale reads were dropped since the last such line.
        count: u64,
    },
    /// A whole-device `verify` ran after earlier unclassified stale reads and settled them.
    Verified {
        /// When.
        #[serde(with = "crate::clock::as_rfc3339")]
        time: Micros,
    },
}

/// Stale reads dropped unclassified since the last whole-device verification: how many, and
/// when the last were counted.
pub fn unclassified_since_verify(entries: &[Entry]) -> (u64, Option<Micros>) {
    let mut count = 0;
    let mut last = None;
    for e in entries {
        match e {
            Entry::Unclassified { time, count: n, .. } => {
                count += n;
                last = Some(*time);
            }
            Entry::Verified { .. } => {
                count = 0;
                last = None;
            }
            _ => {}
        }
    }
    (count, last)
}

/// The log, open for appending, with the findings still open (and what found each).
pub struct FindingsLog {
    path: PathBuf,
    file: Mutex<File>,
    open: Mutex<BTreeMap<u64, (Source, Finding)>>,
    open_count: AtomicUsize,
}

/// Reads every readable entry of a findings log (none when the file does not exist), with a
/// warning for each damaged line other than a torn last one.
pub fn read(dir: &Path) -> Result<(Vec<Entry>, Vec<String>)> {
    let path = dir.join(FINDINGS_FILE);
    Ok(parse(&path, &read_bytes(&path)?))
}

/// The log's bytes (none when it does not exist).
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(path, "reading the findings log", e)),
    }
}

fn parse(path: &Path, text: &[u8]) -> (Vec<Entry>, Vec<String>) {
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
    (entries, warnings)
}

/// The findings still open after replaying `entries`, by block.
pub fn open_findings(entries: &[Entry]) -> BTreeMap<u64, Finding> {
    open_with_source(entries)
        .into_iter()
        .map(|(b, (_, f))| (b, f))
        .collect()
}

fn open_with_source(entries: &[Entry]) -> BTreeMap<u64, (Source, Finding)> {
    let mut open = BTreeMap::new();
    for e in entries {
        match e {
            Entry::Found {
                finding, source, ..
            } => {
                open.insert(finding.block, (*source, finding.clone()));
            }
            Entry::Cleared { block, .. } => {
                open.remove(block);
            }
            Entry::Unclassified { .. } | Entry::Verified { .. } => {}
        }
    }
    open
}

impl FindingsLog {
    /// Opens (creating if needed) the log of the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<FindingsLog> {
        let path = dir.join(FINDINGS_FILE);
        let existed = path.exists();
        let text = read_bytes(&path)?;
        let (entries, warnings) = parse(&path, &text);
        for w in warnings {
            tracing::warn!("{w}");
        }
        let open = open_with_source(&entries);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ctx(&path, "opening the findings log for appending")?;
        // A torn last line is cut off, so the next entry starts on a line of its own.
        if !text.is_empty() && text.last() != Some(&b'\n') {
            let keep = text.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)
                .and_then(|()| file.sync_data())
                .ctx(&path, "cutting a torn last line")?;
        }
        if !existed {
            crate::ledger::writer::sync_dir(dir)?;
        }
        Ok(FindingsLog {
            path,
            file: Mutex::new(file),
            open_count: AtomicUsize::new(open.len()),
            open: Mutex::new(open),
        })
    }

    fn append(&self, e: &Entry) -> Result<()> {
        self.append_all(std::slice::from_ref(e))
    }

    fn append_all(&self, entries: &[Entry]) -> Result<()> {
        let mut lines = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut lines, e).expect("entries serialise");
            lines.push(b'\n');
        }
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write with O_APPEND: lines from several processes never interleave; one sync
        // for a whole batch.
        f.write_all(&lines)
            .and_then(|()| f.sync_data())
            .ctx(&self.path, "appending to the findings log")
    }

    /// Records a finding unless one for the same lost write (block and expected generation)
    /// is already open. Returns whether it was new.
    pub fn found(&self, source: Source, f: &Finding) -> Result<bool> {
        Ok(self.found_all(&[(source, f)])?[0])
    }

    /// Records a batch of findings with one write and one sync; says which were new.
    pub fn found_all(&self, items: &[(Source, &Finding)]) -> Result<Vec<bool>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let time = crate::clock::now();
        let mut new = Vec::with_capacity(items.len());
        let mut entries = Vec::new();
        for &(source, f) in items {
            // The same lost write is the same finding, however it is classified this time
            // (after a crash, say, a reverted block may come out uncertain).
            let same = open
                .get(&f.block)
                .is_some_and(|(_, o)| o.expected_generation == f.expected_generation);
            new.push(!same);
            if !same {
                entries.push(Entry::Found {
                    time,
                    source,
                    finding: f.clone(),
                });
            }
        }
        if !entries.is_empty() {
            self.append_all(&entries)?;
        }
        for (&(source, f), &n) in items.iter().zip(&new) {
            if n {
                open.insert(f.block, (source, f.clone()));
            }
        }
        self.open_count.store(open.len(), Ordering::Relaxed);
        Ok(new)
    }

    /// Clears the open finding of `block`, if there is one, because a verification passed.
    /// A client's read (which the page cache may serve) clears only what a read found: a
    /// finding of the scrubber, which read the media, waits for a scrub or `verify`.
    pub fn cleared(&self, source: Source, block: u64) -> Result<bool> {
        if self.open_count.load(Ordering::Relaxed) == 0 {
            return Ok(false);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get(&block) {
            None => return Ok(false),
            Some((by, _)) if source == Source::Read && *by != Source::Read => return Ok(false),
            Some(_) => {}
        }
        self.append(&Entry::Cleared {
            time: crate::clock::now(),
            source,
            block,
        })?;
        open.remove(&block);
        self.open_count.store(open.len(), Ordering::Relaxed);
        Ok(true)
    }

    /// Records that `count` stale reads from `source` were dropped without being classified.
    pub fn unclassified(&self, source: Source, count: u64) -> Result<()> {
        self.append(&Entry::Unclassified {
            time: crate::clock::now(),
            source,
            count,
        })
    }

    /// Whether any finding is open (cheap: for the read path).
    pub fn any_open(&self) -> bool {
        self.open_count.load(Ordering::Relaxed) > 0
    }

    /// The open findings, by block.
    pub fn still_open(&self) -> BTreeMap<u64, Finding> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(b, (_, f))| (*b, f.clone()))
            .collect()
    }
}

/// After a whole-device verification: clears every open finding of the ledger in `dir` whose
/// block now holds its latest generation (tracked, and not among the verification's
/// `findings`). Returns how many were cleared, and settles stale reads that were dropped
/// unclassified before it. A ledger without a findings log is left without one.
pub fn clear_verified(
    dir: &Path,
    ledger: &crate::ledger::Ledger,
    findings: &[Finding],
) -> Result<usize> {
    if !dir.join(FINDINGS_FILE).exists() {
        return Ok(0);
    }
    let log = FindingsLog::open(dir)?;
    let still_bad: std::collections::HashSet<u64> = findings.iter().map(|f| f.block).collect();
    let mut n = 0;
    for block in log.still_open().into_keys() {
        let tracked = matches!(
            ledger.state(block),
            crate::ledger::state::BlockState::Tracked { .. }
        );
        if tracked && !still_bad.contains(&block) && log.cleared(Source::Verify, block)? {
            n += 1;
        }
    }
    let (entries, _) = read(dir)?;
    if unclassified_since_verify(&entries).0 > 0 {
        log.append(&Entry::Verified {
            time: crate::clock::now(),
        })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::classify::Kind;

    fn finding(block: u64) -> Finding {
        Finding {
            block,
            offset: block * 4096,
            kind: Kind::Reverted,
            expected_generation: 2,
            expected_time: None,
            found_generation: Some(1),
            found_time: None,
            lost: Vec::new(),
            belongs_to: None,
            note: None,
        }
    }

    #[test]
    fn a_torn_line_is_cut_and_reads_clear_only_what_reads_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = FindingsLog::open(dir.path()).unwrap();
        assert!(log.found(Source::Scrub, &finding(7)).unwrap());
        assert!(
            !log.found(Source::Scrub, &finding(7)).unwrap(),
            "the same finding twice"
        );
        assert!(log.found(Source::Read, &finding(9)).unwrap());
        // The page cache may serve a right copy of what the media lost.
        assert!(!log.cleared(Source::Read, 7).unwrap());
        assert!(log.cleared(Source::Read, 9).unwrap());
        drop(log);
        // A crash mid-append leaves half a line.
        let path = dir.path().join(FINDINGS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"event\":\"found\",\"ti").unwrap();
        let (_, warnings) = read(dir.path()).unwrap();
        assert!(warnings[0].contains("torn last line"), "{warnings:?}");
        let log = FindingsLog::open(dir.path()).unwrap();
        assert_eq!(log.still_open().keys().copied().collect::<Vec<_>>(), [7]);
        assert!(log.cleared(Source::Scrub, 7).unwrap());
        let (entries, warnings) = read(dir.path()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(entries.len(), 4);
        assert!(open_findings(&entries).is_empty());
    }

    #[test]
    fn lines_written_before_read_back_as_the_same_bytes_and_unknown_words_are_skipped() {
        let old = [
            r#"{"event":"found","time":"2026-11-25T14:03:11.123456Z","source":"read","block":12,"offset":49152,"kind":"reverted","expected_generation":3,"found_generation":1,"lost":[{"generation":3,"time":"2026-11-25T14:03:10.000001Z","durable":true,"session":2,"change":"write"}]}"#,
            r#"{"event":"found","time":"2026-11-25T14:03:12.000000Z","source":"scrub","block":13,"offset":53248,"kind":"corrupt","expected_generation":1,"expected_time":"2026-11-25T14:00:00.000000Z"}"#,
            r#"{"event":"cleared","time":"2026-11-25T14:04:00.999999Z","source":"scrub","block":13}"#,
            r#"{"event":"unclassified","time":"2026-11-25T14:05:00.000000Z","source":"read","count":10183}"#,
            r#"{"event":"cleared","time":"2026-11-25T14:05:30.000000Z","source":"fsck","block":12}"#,
            r#"{"event":"found","time":"yesterday","source":"read","block":14,"offset":57344,"kind":"zeroed","expected_generation":1}"#,
            r#"{"event":"verified","time":"2026-11-25T14:06:00.000000Z"}"#,
        ];
        let text = old.join("\n") + "\n";
        let (entries, warnings) = parse(Path::new("findings.jsonl"), text.as_bytes());
        assert_eq!(entries.len(), 5, "{warnings:?}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("line 5") && warnings[0].contains("skipped"));
        assert!(warnings[1].contains("line 6") && warnings[1].contains("skipped"));
        let again: Vec<String> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let kept: Vec<&str> = [0, 1, 2, 3, 6].iter().map(|&i| old[i]).collect();
        assert_eq!(again, kept);
        assert_eq!(
            open_findings(&entries).keys().copied().collect::<Vec<_>>(),
            [12]
        );
        assert_eq!(unclassified_since_verify(&entries), (0, None));
        assert_eq!(
            unclassified_since_verify(&entries[..4]),
            (
                10183,
                Some(crate::clock::parse("2026-11-25T14:05:00Z").unwrap())
            )
        );
    }
}
