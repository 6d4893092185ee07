//! Files a ledger promises. A missing one must never be read as "there is none": a ledger
//! without its baseline would call every block never written since `init` untracked (a block
//! reverted to its baseline contents would go unseen), and one without its compacted history
//! would lose everything before the retained journal. So a file the ledger's own records say
//! exists and that is gone is damage, named with what to do:
//!
//! - `journal/`: every ledger has one;
//! - `baseline`: when the journal's first frame holds the `Baseline` record `init --baseline`
//!   writes there, or the compacted history folded one;
//! - `compacted`: when `meta` says format 2 and the journal starts past segment 1 (format 2 with
//!   segment 1 still present is a compaction interrupted before it installed the file).
//!
//! A missing state table is not checked here: it is derived data, rebuilt from the journal and
//! reported as such by whoever opens the ledger. Missing journal segments are found by the
//! journal reader (a gap, or a chain that does not match).

use super::fold::{self, Fold};
use super::meta::Meta;
use super::reader::{JournalEnd, TornTail};
use super::record::{Lsn, Record};
use super::state::StateHeader;
use super::{frame, reader, segment, BASELINE_FILE, JOURNAL_DIR};
use crate::error::{Error, IoContext, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What to do about a lost file that cannot be rebuilt.
const RESTORE: &str =
    "restore the ledger directory from a copy (this file cannot be rebuilt from the others)";

/// Checks that every file the ledger in `dir` promises is there; the error names the first
/// missing one. `fold` is the compacted history as the caller read it (read again here when the
/// journal seems to start past it, in case a running service compacted in between).
pub fn check_promised(dir: &Path, meta: &Meta, fold: Option<&Fold>) -> Result<()> {
    let jdir = dir.join(JOURNAL_DIR);
    if !jdir.is_dir() {
        return Err(Error::damaged(
            &jdir,
            0,
            format!(
                "the journal directory is missing (every ledger has one, holding its history); {RESTORE}, or make a new ledger with `lostwrite init` (this one's history is lost)"
            ),
        ));
    }
    let first = reader::list_segments(&jdir)?.first().copied();
    let mut fold = fold.cloned();
    if fold.is_none() && first.is_some_and(|n| n > 1) {
        fold = Fold::read(dir, &meta.ledger_id)?;
        if fold.is_none() && meta.version >= 2 {
            return Err(Error::damaged(
                dir.join(fold::FOLD_FILE),
                0,
                format!(
                    "the compacted history is missing: meta says the ledger was compacted (format {}) and the journal starts at segment {}, so segments 1..{} were folded into this file; without it the history before the retained journal is lost; {RESTORE}",
                    meta.version,
                    first.unwrap_or(0),
                    first.unwrap_or(1) - 1
                ),
            ));
        }
    }
    let base = dir.join(BASELINE_FILE);
    if base.exists() {
        return Ok(());
    }
    let promised = match &fold {
        Some(f) => (f.header.baseline_lsn != 0).then_some(f.header.baseline_lsn),
        None => first_frame_baseline(&jdir, &meta.ledger_id)?,
    };
    match promised {
        Some(lsn) => Err(Error::damaged(
            &base,
            0,
            format!(
                "the baseline file is missing, but journal record LSN {lsn} says `lostwrite init --baseline` recorded generation 0 of every block in it; without it, blocks not written since then cannot be checked (a block reverted to its baseline contents would go unseen); {RESTORE}"
            ),
        )),
        None => Ok(()),
    }
}

/// The LSN of a `Baseline` record in the first frame of segment 1, where `init --baseline`
/// writes it. A segment 1 that is missing or has no valid first frame promises nothing here
/// (the journal reader judges it).
fn first_frame_baseline(jdir: &Path, ledger_id: &[u8; 16]) -> Result<Option<Lsn>> {
    let path = segment::path(jdir, 1);
    let Ok(f) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    let mut head = Vec::with_capacity(segment::HEADER_LEN + frame::HEADER_LEN);
    let want = (segment::HEADER_LEN + frame::HEADER_LEN) as u64;
    let mut f = f;
    if (&mut f).take(want).read_to_end(&mut head).is_err() || head.len() as u64 != want {
        return Ok(None);
    }
    let body_len =
        u32::from_le_bytes(head[segment::HEADER_LEN + 8..][..4].try_into().expect("4")) as usize;
    if body_len > frame::MAX_BODY {
        return Ok(None);
    }
    let mut buf = head;
    if f.take(body_len as u64).read_to_end(&mut buf).is_err() {
        return Ok(None);
    }
    let Ok(fr) = frame::parse(&buf[segment::HEADER_LEN..], ledger_id) else {
        return Ok(None);
    };
    let Ok(records) = fr.records() else {
        return Ok(None);
    };
    Ok(records
        .iter()
        .position(|r| matches!(r, Record::Baseline { .. }))
        .map(|i| fr.first_lsn + i as u64))
}

/// The error for bytes after the journal's clean end: the last writer closed cleanly and
/// synced the journal through the checkpoint, so no crash of ours left them.
pub fn foreign_tail(t: &TornTail) -> Error {
    Error::damaged(
        &t.path,
        t.offset,
        format!(
            "{} bytes after the journal's clean end ({}): the last writer closed the ledger cleanly, so no crash left them and no lostwrite process wrote them (another program, a restored or concatenated file, or a storage fault). Find out what wrote them; `lostwrite ledger check --repair` moves them aside to a file beside the segment",
            t.file_len - t.offset,
            t.reason
        ),
    )
}

/// Copies the bytes of a foreign tail to `SEGMENT.foreign-OFFSET` beside the segment (a name
/// the journal reader ignores), synced, so cutting them off destroys nothing.
pub fn save_foreign(t: &TornTail) -> Result<PathBuf> {
    let bytes = std::fs::read(&t.path).ctx(&t.path, "reading the journal segment")?;
    let tail = bytes.get(t.offset as usize..).unwrap_or_default();
    // A repair interrupted before it truncated left a copy already: that one stays too.
    let mut n = 0u32;
    let (kept, mut f) = loop {
        let mut name = t.path.clone().into_os_string();
        name.push(format!(".foreign-{}", t.offset));
        if n > 0 {
            name.push(format!(".{n}"));
        }
        let p = PathBuf::from(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            r => {
                let f = r.ctx(
                    &p,
                    "creating a file for bytes found after the journal's end",
                )?;
                break (p, f);
            }
        }
    };
    f.write_all(tail)
        .and_then(|_| f.sync_all())
        .ctx(&kept, "saving bytes found after the journal's end")?;
    // The copy's name must outlive a crash before the segment is truncated.
    if let Some(dir) = kept.parent() {
        super::writer::sync_dir(dir)?;
    }
    Ok(kept)
}

/// The error for a ledger path without a `meta` file, saying what is there instead.
pub fn no_ledger(dir: &Path) -> Error {
    let detail = match std::fs::metadata(dir) {
        Err(_) => "no ledger here: create one with `lostwrite init DEVICE --baseline`, or give its directory with --ledger".to_string(),
        Ok(m) if !m.is_dir() => "this is a file, not a directory: a ledger is a directory (made by `lostwrite init`, DEVICE.ledger by default); give that directory with --ledger".to_string(),
        Ok(_) if [super::STATE_FILE, JOURNAL_DIR, BASELINE_FILE]
            .iter()
            .any(|f| dir.join(f).exists()) =>
        {
            format!(
                "the ledger's {} file is missing (the directory holds other ledger files): without it nothing in the ledger can be read; {RESTORE}",
                super::META_FILE
            )
        }
        Ok(_) => "this directory is not a lostwrite ledger (no meta file); give the ledger directory (made by `lostwrite init`, DEVICE.ledger by default) with --ledger".to_string(),
    };
    Error::Ledger {
        path: dir.to_path_buf(),
        detail,
    }
}

/// Whether `init` may make a ledger at `dir`: `Ok(false)` when nothing is there, `Ok(true)`
/// for an empty directory (the new ledger takes its place); anything else is refused, and
/// nothing found there is ever written or removed.
pub fn creatable(dir: &Path) -> Result<bool> {
    let m = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(dir, "looking at the ledger path", e)),
        Ok(m) => m,
    };
    let refuse = |detail: String| Error::Ledger {
        path: dir.to_path_buf(),
        detail,
    };
    if m.file_type().is_symlink() {
        return Err(refuse(
            "this is a symbolic link; give the ledger directory's own path (or a new one) with --ledger".into(),
        ));
    }
    if !m.is_dir() {
        return Err(refuse(
            "this is a file, not a directory; a ledger is a directory of its own: give a new path with --ledger (the file is left alone)".into(),
        ));
    }
    if dir.join(super::META_FILE).exists() {
        return Err(refuse("a ledger already exists here; verify against it, or move it away to start a new one (its history would be lost)".into()));
    }
    let mut entries = std::fs::read_dir(dir).ctx(dir, "listing the ledger path")?;
    match entries.next() {
        None => Ok(true),
        Some(e) => {
            let name = e
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(refuse(format!(
                "this directory is not a ledger and holds other files (such as {name:?}); a ledger needs a directory of its own: give a new or empty one with --ledger (nothing here is touched)"
            )))
        }
    }
}

/// The error for a journal that ends before the state table's checkpoint: names the segment
/// the checkpoint lies in when that file is gone, else the journal.
pub fn journal_short(jdir: &Path, end: &JournalEnd, h: &StateHeader) -> Error {
    let last = end.segments.last().map_or(0, |s| s.number);
    let (segment, _) = h.checkpoint_pos;
    if segment > last {
        return Error::damaged(
            segment::path(jdir, segment),
            0,
            format!(
                "journal segment {segment} is missing: the state table was checkpointed at LSN {} in it, but the journal ends with segment {last} at LSN {}; {RESTORE}",
                h.checkpoint_lsn,
                end.next_lsn - 1
            ),
        );
    }
    Error::damaged(
        jdir,
        0,
        format!(
            "the journal ends at LSN {} but the state table was checkpointed at LSN {}: journal records are missing (a segment was truncated or restored from an older copy); {RESTORE}",
            end.next_lsn - 1,
            h.checkpoint_lsn
        ),
    )
}
