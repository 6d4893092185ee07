//! Opening a ledger, and recovering it on the way: the steps below run in the order docs/DESIGN.md
//! (Walk 2, step 2) gives — the lock, `meta` and the device check, the files the ledger must
//! have, the state table's checks, the journal replayed past the table's checkpoint (or the whole
//! table rebuilt from it), the torn tail — and, for the writer, the repairs made on disk and the
//! journal resumed for appending. [`Ledger::open`] gives a read view; [`LedgerWriter::open`] the
//! writer (session.rs).

use super::baseline::Baseline;
use super::fold::{self, Fold};
use super::identity::Identity;
use super::meta::Meta;
use super::reader::{self, JournalEnd, Resume, TornTail};
use super::record::Lsn;
use super::replay::{journal_start, scan_live, Replay};
use super::session::LedgerWriter;
use super::sessions::Sessions;
use super::state::{StateHeader, StateTable};
use super::summary;
use super::writer::{self, JournalWriter};
use super::{
    files, lock, segment, Access, Ledger, OpenOptions, Recovery, BASELINE_FILE, JOURNAL_DIR,
    META_FILE, STATE_FILE,
};
use crate::block::{self, Geometry};
use crate::device::DeviceIdentity;
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};

impl Ledger {
    /// Opens a ledger to read it. With `device`, checks that it is the device the ledger was
    /// made for (size, and identity unless `device_moved`).
    ///
    /// With [`Access::Write`] the ledger is opened as its writer would (exclusive lock, repairs
    /// made on disk) and then given back as a read view: to record, open a [`LedgerWriter`].
    pub fn open(
        dir: &Path,
        device: Option<(&DeviceIdentity, u64)>,
        opts: OpenOptions,
    ) -> Result<Ledger> {
        if opts.access == Access::Write {
            return LedgerWriter::open(dir, device, opts).map(LedgerWriter::into_ledger);
        }
        Ok(recover(dir, device, opts)?.ledger)
    }
}

impl LedgerWriter {
    /// Opens a ledger as its one writer (serve, repair, compaction): exclusive lock, torn tail
    /// truncated, table repaired and checkpointed, the journal resumed for appending. With
    /// `device`, checks it as [`Ledger::open`] does. `opts.access` is not consulted: a writer
    /// always opens with [`Access::Write`].
    pub fn open(
        dir: &Path,
        device: Option<(&DeviceIdentity, u64)>,
        opts: OpenOptions,
    ) -> Result<LedgerWriter> {
        let opts = OpenOptions {
            access: Access::Write,
            ..opts
        };
        let Recovered {
            mut ledger,
            mut end,
        } = recover(dir, device, opts)?;
        let jdir = dir.join(JOURNAL_DIR);
        if let Some(t) = end.torn.take() {
            cut_torn_tail(&jdir, &t)?;
        }
        let journal = resume_journal(&jdir, &ledger.meta, &end, opts.segment_bytes)?;
        // Summaries are derived: stale ones go, missing or unmatched ones are written again.
        if let Some(first) = end.segments.first() {
            summary::tidy(&jdir, first.number)?;
        }
        journal.summarise(summary::missing(&jdir, &ledger.meta.ledger_id, &end));
        let mut h = ledger.header();
        h.checkpoint_pos = journal.position();
        ledger.checkpoint(h)?;
        ledger.synced = Some(journal.synced_handle());
        Ok(LedgerWriter {
            ledger,
            journal,
            segment_times: Mutex::new(BTreeMap::new()),
            fold_pending: AtomicBool::new(false),
            fold_pass_bytes: opts.fold_pass_bytes.max(1),
        })
    }
}

/// A ledger opened and recovered as far as readers and the writer share (steps 1 to 6).
struct Recovered {
    /// The ledger, its header at the checkpoint the journal's end gives.
    ledger: Ledger,
    /// Where the journal ends, with its torn tail (for the writer to cut).
    end: JournalEnd,
}

/// Opens and recovers the ledger in `dir`, steps 1 to 6 (below, in order).
fn recover(
    dir: &Path,
    device: Option<(&DeviceIdentity, u64)>,
    opts: OpenOptions,
) -> Result<Recovered> {
    let lock = take_lock(dir, opts.access)?;
    let live = opts.access == Access::Live && lock.is_none();
    let writable = opts.access == Access::Write;
    let meta = read_meta(dir, device, opts.device_moved)?;
    let geometry = Geometry::new(meta.block_size, meta.device_size);
    let zero_crc = block::zero_checksum(meta.block_size);
    let mut fold = read_fold(dir, &meta, live)?;
    let (state, replaced) = open_state_table(dir, &meta, geometry, writable, live)?;
    let baseline = open_baseline(dir, &meta, geometry)?;
    if writable {
        tidy_after_compaction(dir, fold.as_ref())?;
    }
    let (header, rebuild) = judge_header(&state, &meta, geometry, replaced);
    let protected = header.map_or((0, 0), |h| h.checkpoint_pos);
    let mut recovery = Recovery::default();
    let jdir = dir.join(JOURNAL_DIR);
    let (end, sessions) = if live {
        let (f, e) = scan_live(dir, &meta.ledger_id, Lsn::MAX, &mut |_, _| Ok(()))?;
        fold = f;
        (e, Sessions::at_checkpoint(header.as_ref()))
    } else {
        let table = Replay {
            state: &state,
            baseline: baseline.as_ref(),
            zero_crc,
            jdir: &jdir,
            ledger_id: &meta.ledger_id,
            start: journal_start(fold.as_ref()),
            skim: opts.skim && !writable,
        };
        let state_path = dir.join(STATE_FILE);
        let (e, s) = replay_journal(
            &table,
            &state_path,
            fold.as_ref(),
            header,
            rebuild,
            &mut recovery,
        )?;
        if let Some(h) = header {
            if e.next_lsn - 1 < h.checkpoint_lsn {
                return Err(files::journal_short(&jdir, &e, &h));
            }
        }
        (e, s)
    };
    recovery.previous_clean = !sessions.open();
    // After a clean end no writer of ours appended past the checkpoint (a new segment's header
    // aside), so bytes there are no crash's torn tail.
    let foreign =
        !live && header.is_some_and(|h| h.clean) && end.torn.as_ref().is_some_and(|t| t.offset > 0);
    if let Some(t) = &end.torn {
        let msg = judge_torn_tail(t, foreign, live, writable, opts.repair)?;
        tracing::warn!("{msg}");
        recovery.warnings.push(msg);
        recovery.torn_tail = Some(t.clone());
    }
    let header_now = StateHeader {
        block_size: meta.block_size,
        block_count: geometry.block_count(),
        ledger_id: meta.ledger_id,
        checkpoint_lsn: end.next_lsn - 1,
        checkpoint_pos: protected,
        last_session: sessions.current,
        session_open: sessions.open(),
        clean: true,
        running: None,
    };
    let ledger = Ledger {
        dir: dir.to_path_buf(),
        meta,
        geometry,
        zero_crc,
        state,
        baseline,
        header: Mutex::new(header_now),
        recovery,
        fold: Mutex::new(fold),
        gate: RwLock::new(()),
        own_session: None,
        synced: None,
        skim: opts.skim && !writable,
        _lock: lock,
    };
    Ok(Recovered { ledger, end })
}

/// Step 1, the lock: exclusive for the writer, shared for a reader (refused while a writer
/// runs); a live view takes it shared when it can and goes on without it while a writer runs.
/// A directory without `meta` is no ledger at all.
fn take_lock(dir: &Path, access: Access) -> Result<Option<lock::LedgerLock>> {
    if !dir.join(META_FILE).exists() {
        return Err(files::no_ledger(dir));
    }
    Ok(match access {
        Access::Write => Some(lock::acquire(dir, true)?),
        Access::Read => Some(lock::acquire(dir, false)?),
        Access::Live => lock::acquire(dir, false).ok(),
    })
}

/// Step 2, `meta` and the device: reads and checks the metadata file, then refuses a device of
/// another size, and one of another identity unless `device_moved`.
fn read_meta(
    dir: &Path,
    device: Option<(&DeviceIdentity, u64)>,
    device_moved: bool,
) -> Result<Meta> {
    let meta = Meta::read(&dir.join(META_FILE))?;
    let Some((id, size)) = device else {
        return Ok(meta);
    };
    if size != meta.device_size {
        return Err(Error::DeviceMismatch {
            path: PathBuf::from(&id.path),
            detail: format!(
                "the device is {size} bytes but the ledger {} was made for {} bytes: it was resized, or this is another device. A ledger cannot follow a resize; make a new one with `lostwrite init` (keep the old one for its history)",
                dir.display(),
                meta.device_size
            ),
        });
    }
    if let Some(why) = meta.identity.differs(&Identity::of(id)) {
        if !device_moved {
            return Err(Error::DeviceMismatch {
                path: PathBuf::from(&id.path),
                detail: format!(
                    "this is not the device of ledger {}: {why}. If it holds the same disk's contents (moved, copied or restored), pass --device-moved",
                    dir.display()
                ),
            });
        }
    }
    Ok(meta)
}

/// Step 3, the files the ledger must have: reads the compacted history (a live view reads it
/// later, with the journal, as the running service may replace it), then checks that every file
/// `meta` and the history promise is there (`files::check_promised`).
fn read_fold(dir: &Path, meta: &Meta, live: bool) -> Result<Option<Fold>> {
    let fold = if live {
        None
    } else {
        Fold::read(dir, &meta.ledger_id)?
    };
    files::check_promised(dir, meta, fold.as_ref())?;
    Ok(fold)
}

/// Step 4a, the state table file: opens it; one of the wrong length (cut short, or another
/// ledger's) or a missing one is replaced by an empty table (on disk for the writer, in memory
/// for a reader) to be rebuilt from the journal: it is derived data. Returns the table and, when
/// it was replaced, why. A live view does not judge the table: its damage is an error.
fn open_state_table(
    dir: &Path,
    meta: &Meta,
    geometry: Geometry,
    writable: bool,
    live: bool,
) -> Result<(StateTable, Option<String>)> {
    let path = dir.join(STATE_FILE);
    match open_state(&path, geometry.block_count(), writable) {
        Ok(t) => Ok((t, None)),
        Err(Error::Damaged { offset, detail, .. }) if !live => {
            let why = format!("at offset {offset}: {detail}");
            if !writable {
                return Ok((StateTable::anonymous(geometry.block_count())?, Some(why)));
            }
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&path, "removing a damaged state table", e))
                }
                _ => {}
            }
            let h = StateHeader {
                block_size: meta.block_size,
                block_count: geometry.block_count(),
                ledger_id: meta.ledger_id,
                checkpoint_lsn: 0,
                checkpoint_pos: (0, 0),
                last_session: 0,
                session_open: false,
                clean: false,
                running: None,
            };
            Ok((StateTable::create(&path, &h)?, Some(why)))
        }
        Err(e) => Err(e),
    }
}

/// Opens the state table; a missing one is damage (rebuilt from the journal like any other).
pub(super) fn open_state(path: &Path, block_count: u64, writable: bool) -> Result<StateTable> {
    if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Err(Error::damaged(
            path,
            0,
            "the file is missing (derived data: `lostwrite ledger check --repair` writes it anew from the journal)",
        ));
    }
    StateTable::open(path, block_count, writable)
}

/// Step 4b, the baseline, if `init --baseline` took one: checked against the ledger's id and
/// geometry.
fn open_baseline(dir: &Path, meta: &Meta, geometry: Geometry) -> Result<Option<Baseline>> {
    let path = dir.join(BASELINE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    Baseline::open(
        &path,
        meta.block_size,
        geometry.block_count(),
        &meta.ledger_id,
    )
    .map(Some)
}

/// Step 4c, the table's header: what the table claims (checkpoint, sessions) and whether it is
/// believable — it must name this ledger and its geometry. Returns the header when it is, and
/// why the table must be rebuilt when it is not (or was replaced in step 4a).
fn judge_header(
    state: &StateTable,
    meta: &Meta,
    geometry: Geometry,
    replaced: Option<String>,
) -> (Option<StateHeader>, Option<String>) {
    if replaced.is_some() {
        return (None, replaced);
    }
    match state.header() {
        Ok(h)
            if h.ledger_id == meta.ledger_id
                && h.block_size == meta.block_size
                && h.block_count == geometry.block_count() =>
        {
            (Some(h), None)
        }
        Ok(_) => (
            None,
            Some("its header belongs to another ledger or geometry".into()),
        ),
        Err(e) => (None, Some(e.to_string())),
    }
}

/// Step 5, the journal: replays it into the table from the checkpoint on when the table is
/// sound — closed cleanly, or left by a writer that crashed under this host boot after a running
/// checkpoint (checkpoint.rs); otherwise clears the table and rebuilds it from the compacted
/// history and the whole journal — when it is damaged (`rebuild`, or a page failing its check: a
/// warning), when the last writer did not close cleanly and its checkpoint cannot be trusted (a
/// version-1 table, or another boot: after a host crash the table may even hold changes whose
/// journal records were lost), or when retention folded records past its checkpoint. Returns
/// where the journal ends and the sessions it saw.
fn replay_journal(
    table: &Replay<'_>,
    state_path: &Path,
    fold: Option<&Fold>,
    header: Option<StateHeader>,
    mut rebuild: Option<String>,
    recovery: &mut Recovery,
) -> Result<(JournalEnd, Sessions)> {
    let state = table.state;
    // Why the table must be rebuilt from the whole journal although it is not damaged.
    let mut recover: Option<String> = None;
    if let Some(h) = header {
        let trusted = if h.clean {
            Ok(())
        } else {
            running_checkpoint(&h)
        };
        if let Err(why) = trusted {
            recover = Some(why);
        } else if let Some(why) = (h.clean && !table.skim)
            .then(|| first_bad_page(state))
            .flatten()
        {
            rebuild = Some(why);
        } else if fold.is_some_and(|f| h.checkpoint_lsn < f.header.through_lsn) {
            recover = Some(
                "the state table was checkpointed before the oldest retained journal record".into(),
            );
        } else {
            let mut sessions = Sessions::at_checkpoint(Some(&h));
            let from = h.checkpoint_lsn + 1;
            let resume = Resume {
                segment: h.checkpoint_pos.0,
                offset: h.checkpoint_pos.1,
                lsn: from,
            };
            let (e, n) = table.run(from, h.checkpoint_pos, Some(resume), &mut sessions)?;
            // A crashed writer's table is checked after the tail is in: every page the tail did
            // not change must pass the check the running checkpoint sealed. A skimming reader
            // checks only the pages it reads (`Ledger::page_damage`).
            match (!h.clean && !table.skim)
                .then(|| first_bad_page(state))
                .flatten()
            {
                Some(why) => rebuild = Some(why),
                None => {
                    recovery.replayed = n;
                    recovery.replayed_from = from;
                    tracing::info!(
                        "state table {}: replayed {n} records from LSN {from} (the {})",
                        state_path.display(),
                        if h.clean {
                            "checkpoint of a clean close"
                        } else {
                            "running checkpoint of the crashed writer"
                        }
                    );
                    return Ok((e, sessions));
                }
            }
        }
    }
    if let Some(why) = &rebuild {
        let msg = format!(
            "state table {} is damaged ({why}); rebuilt it from the journal",
            state_path.display()
        );
        tracing::warn!("{msg}");
        recovery.warnings.push(msg);
        recovery.state_rebuilt = Some(why.clone());
    }
    state.clear();
    let mut sessions = table.seed(fold)?;
    let protected = header.map_or((0, 0), |h| h.checkpoint_pos);
    let (e, n) = table.run(table.start.lsn, protected, None, &mut sessions)?;
    recovery.replayed = n;
    recovery.replayed_from = table.start.lsn;
    tracing::info!(
        "state table {}: replayed {n} records from LSN {} (the whole journal: {})",
        state_path.display(),
        table.start.lsn,
        rebuild
            .as_deref()
            .or(recover.as_deref())
            .unwrap_or("no checkpoint to start from")
    );
    Ok((e, sessions))
}

/// Whether the checkpoint of a table its writer did not close can be trusted: only a running
/// checkpoint taken under this host boot (checkpoint.rs says why). The error says why not.
pub(super) fn running_checkpoint(h: &StateHeader) -> std::result::Result<(), String> {
    match (h.running, super::state::boot_id()) {
        (None, _) => Err(
            "the last writer did not close the ledger cleanly and left no running checkpoint"
                .into(),
        ),
        (Some(_), None) => Err(
            "the last writer did not close the ledger cleanly, and this host gives no boot id to trust its running checkpoint by".into(),
        ),
        (Some(theirs), Some(ours)) if theirs != ours => Err(
            "the last writer did not close the ledger cleanly and the host has restarted since: the table may hold changes whose journal records were lost".into(),
        ),
        _ => Ok(()),
    }
}

/// The first data page (not changed since the last seal) failing its check, described.
fn first_bad_page(state: &StateTable) -> Option<String> {
    state.bad_pages().first().map(|&p| {
        format!(
            "page {p} (blocks {}..{}) fails its check at offset {}",
            p * 512,
            (p + 1) * 512,
            state.check_offset(p)
        )
    })
}

/// Step 6, the torn tail: bytes after the journal's last whole frame. Left by a crash, they are
/// reported (and truncated by the writer); being appended by the running service, they are
/// ignored by a live view; found after a clean end (`foreign`), no lostwrite process wrote
/// them, and the ledger is refused unless a repairing writer moves them aside. Returns the
/// warning to give.
fn judge_torn_tail(
    t: &TornTail,
    foreign: bool,
    live: bool,
    writable: bool,
    repair: bool,
) -> Result<String> {
    Ok(if foreign {
        if !(writable && repair) {
            return Err(files::foreign_tail(t));
        }
        let kept = files::save_foreign(t)?;
        format!(
            "journal {} held {} bytes at offset {} after its clean end, written by no lostwrite process; moved them to {}",
            t.path.display(),
            t.file_len - t.offset,
            t.offset,
            kept.display()
        )
    } else if live {
        format!(
            "journal {} ends in {} bytes at offset {} that are not yet a whole frame (the running service is appending); ignoring them",
            t.path.display(),
            t.file_len - t.offset,
            t.offset
        )
    } else {
        format!(
            "journal {} has a torn tail at offset {} ({}; {} bytes after the last whole frame, never synced: left by a crash){}",
            t.path.display(),
            t.offset,
            t.reason,
            t.file_len - t.offset,
            if writable { "; truncated it" } else { "; ignoring it" }
        )
    })
}

/// Step 7 (writer), the repair on disk: a torn new segment (not even a whole header) is
/// removed, any other torn tail truncated, and the result synced.
fn cut_torn_tail(jdir: &Path, t: &TornTail) -> Result<()> {
    if t.offset == 0 {
        std::fs::remove_file(&t.path).ctx(&t.path, "removing a torn new segment")?;
        return writer::sync_dir(jdir);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.path)
        .ctx(&t.path, "opening segment to truncate its torn tail")?;
    f.set_len(t.offset).ctx(&t.path, "truncating torn tail")?;
    f.sync_all().ctx(&t.path, "fsync after truncating")
}

/// Step 8 (writer), the journal resumed: the last segment synced (what a crashed writer left
/// in the page cache becomes durable before anything is appended after it) and the appender
/// positioned at its end, its running checksum and next LSN carried on.
fn resume_journal(
    jdir: &Path,
    meta: &Meta,
    end: &JournalEnd,
    segment_bytes: u64,
) -> Result<JournalWriter> {
    let last = end.segments.last().expect("at least one segment");
    std::fs::File::open(&last.path)
        .and_then(|f| f.sync_data())
        .ctx(&last.path, "fdatasync of journal")?;
    JournalWriter::resume(
        jdir,
        meta.ledger_id,
        writer::Resume {
            segment: last.number,
            offset: last.valid_len,
            content_crc: last.content_crc,
            next_lsn: end.next_lsn,
        },
        end.next_lsn - 1,
        segment_bytes,
    )
}

/// Removes what an interrupted compaction left: its temporary file, and segments the compacted
/// history already covers (writer only, before the journal is read).
fn tidy_after_compaction(dir: &Path, fold: Option<&Fold>) -> Result<()> {
    let tmp = fold::tmp_path(dir);
    if tmp.exists() {
        std::fs::remove_file(&tmp).ctx(&tmp, "removing an unfinished compacted history")?;
    }
    let Some(f) = fold else { return Ok(()) };
    let jdir = dir.join(JOURNAL_DIR);
    let mut removed = false;
    for n in reader::list_segments(&jdir)? {
        if n < f.header.next_segment {
            let p = segment::path(&jdir, n);
            tracing::info!(
                "removing journal segment {} (compacted, its removal was interrupted)",
                p.display()
            );
            std::fs::remove_file(&p).ctx(&p, "removing a compacted segment")?;
            summary::remove(&jdir, n)?;
            removed = true;
        }
    }
    if removed {
        writer::sync_dir(&jdir)?;
    }
    Ok(())
}
