//! The ledger: the record, kept apart from the device, of what every block should hold.
//!
//! A ledger is a directory (docs/FORMAT.md draws every byte):
//!
//! ```text
//! meta        which device, block size, size, identity          (meta.rs)
//! lock        flock: one writer at a time                       (lock.rs)
//! state       per-block generation + checksum, mapped, checked  (state.rs, mapped.rs)
//! baseline    generation-0 checksums from `init --baseline`     (baseline.rs)
//! journal/    append-only chained segments of checksummed frames (segment.rs, frame.rs,
//!             reader.rs, writer.rs)
//! compacted   what retention kept of the segments it deleted    (compact.rs, fold.rs)
//! findings.jsonl, scrub.json   what `serve` saw online, where the scrubber stands
//!             (verify/findings.rs, service/scrub.rs)
//! ```
//!
//! Which of these a ledger must have, and how their absence is named, is files.rs.
//!
//! This file is long (create, open and recover, record and flush rounds, replay) because those
//! jobs share the open ledger's private state; splitting it along them, with a write session
//! as a type of its own, is docs/DESIGN.md's "where the layering is going".
//!
//! This module opens and recovers a ledger (truncating a torn journal tail, replaying the journal
//! past the state table's checkpoint, rebuilding the table when it is damaged) and offers the
//! recording API the sidecar calls. The durability rules of docs/DESIGN.md (section 3, "The
//! durability protocol") are that API's contract:
//!
//! - a change is recorded (its frame is in the kernel) before the caller issues the device write;
//! - a failed device write is recorded as failed;
//! - [`Ledger::flush`] marks durable exactly the changes that had completed when it began, after
//!   the device and the journal were both synced;
//! - [`Ledger::record_fua`] marks one completed write durable, with its journal records synced;
//! - [`Ledger::close`] ends the session cleanly: everything synced, a session-close record.

pub mod baseline;
pub mod check;
pub mod codec;
pub mod compact;
pub mod files;
pub mod fold;
pub mod frame;
pub mod history;
pub mod identity;
mod lock;
pub mod mapped;
pub mod meta;
pub mod reader;
pub mod record;
pub mod segment;
pub mod state;
pub mod writer;

use crate::block::{self, Geometry};
use crate::clock;
use crate::device::{BlockDevice, DeviceIdentity};
use crate::error::{Error, IoContext, Result};
use baseline::Baseline;
use fold::{Fold, FoldChange, FoldEntry};
use identity::Identity;
use meta::Meta;
use reader::{JournalEnd, Start, TornTail};
use record::{Generation, Lsn, Record, SessionOpen};
use state::{BlockState, StateHeader, StateTable};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use writer::JournalWriter;

pub use lock::LOCK_FILE;

/// File names inside the ledger directory.
pub const META_FILE: &str = "meta";
/// State table file.
pub const STATE_FILE: &str = "state";
/// Baseline file.
pub const BASELINE_FILE: &str = "baseline";
/// Journal directory.
pub const JOURNAL_DIR: &str = "journal";

/// Where the ledger of a device lives unless `--ledger` says otherwise: `<DEVICE>.ledger`.
pub fn default_dir(device: &str) -> PathBuf {
    PathBuf::from(format!("{device}.ledger"))
}

/// How a ledger is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The one writer (serve, repair): exclusive lock, torn tails truncated, table repaired.
    Write,
    /// A consistent reader (verify, check): shared lock, refused while a writer runs; repairs
    /// happen in memory only.
    Read,
    /// A reader that tolerates a running writer (history, dump, status): reads the journal up to
    /// its last whole frame and does not judge the state table.
    Live,
}

/// Options for [`Ledger::open`].
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    /// Reader or writer.
    pub access: Access,
    /// Accept a device whose identity differs (same contents moved or copied).
    pub device_moved: bool,
    /// Start a new journal segment past this size.
    pub segment_bytes: u64,
    /// Most journal bytes one compaction pass folds (see [`compact::MAX_PASS_BYTES`]).
    pub fold_pass_bytes: u64,
    /// A writer repairing the ledger (`ledger check --repair`): bytes found after the journal's
    /// clean end, which no lostwrite process wrote, are moved aside to a file beside their
    /// segment instead of refusing the ledger.
    pub repair: bool,
}

impl OpenOptions {
    /// Options for `access` with defaults otherwise.
    pub fn new(access: Access) -> Self {
        OpenOptions {
            access,
            device_moved: false,
            segment_bytes: segment::DEFAULT_SEGMENT_BYTES,
            fold_pass_bytes: compact::MAX_PASS_BYTES,
            repair: false,
        }
    }
}

/// What opening the ledger found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// A torn journal tail (truncated by a writer, ignored by a reader).
    pub torn_tail: Option<TornTail>,
    /// Why the state table was rebuilt from the journal, if it was.
    pub state_rebuilt: Option<String>,
    /// Records replayed into the state table.
    pub replayed: u64,
    /// Whether the last session had closed cleanly.
    pub previous_clean: bool,
    /// Warnings for the operator.
    pub warnings: Vec<String>,
}

/// Where a new ledger's generation 0 comes from.
pub struct BaselineSource<'a> {
    /// The device to scan.
    pub device: &'a dyn BlockDevice,
    /// Scan threads.
    pub jobs: usize,
    /// Progress display.
    pub progress: Option<&'a indicatif::ProgressBar>,
}

/// What a block will hold after a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewContents {
    /// Contents with this checksum.
    Crc(u32),
    /// Zeroes.
    Zero,
}

/// A recorded change whose device I/O is under way; hand it back to [`Ledger::complete`].
#[derive(Debug, Clone)]
pub struct Ticket {
    /// LSN of the first record.
    pub first: Lsn,
    /// LSN of the last record.
    pub last: Lsn,
    /// First block changed.
    pub first_block: u64,
    /// The generation given to each block, in block order.
    pub generations: Vec<Generation>,
}

struct Inflight {
    incomplete: BTreeMap<Lsn, Lsn>,
    completed: Vec<(Lsn, Lsn)>,
}

/// Flushes run in rounds, one at a time: a FLUSH that arrives while a round runs waits for the
/// next round, which begins after it arrived and so covers it; every FLUSH waiting then shares
/// that one round (one device sync, one journal record) instead of running its own in turn.
#[derive(Default)]
struct FlushRounds {
    started: u64,
    done: u64,
    running: bool,
    /// Rounds that failed, and why (the session is poisoned after any of them).
    failed: Vec<(u64, String)>,
}

struct Session {
    id: u64,
    strict: bool,
    inflight: Mutex<Inflight>,
    flushes: Mutex<FlushRounds>,
    flushed: std::sync::Condvar,
    device_failure: Mutex<Option<String>>,
}

/// An open ledger.
pub struct Ledger {
    dir: PathBuf,
    meta: Meta,
    geometry: Geometry,
    zero_crc: u32,
    state: StateTable,
    baseline: Option<Baseline>,
    header: Mutex<StateHeader>,
    journal: Option<JournalWriter>,
    session: Option<Session>,
    recovery: Recovery,
    /// The compacted history, if retention has folded any segments.
    fold: Mutex<Option<Fold>>,
    /// Held shared by whoever reads the journal, exclusively while compaction swaps the
    /// compacted history and deletes the segments it folded.
    gate: RwLock<()>,
    /// Last record time of sealed segments (they never change), for retention decisions.
    segment_times: Mutex<BTreeMap<u64, clock::Micros>>,
    /// A compaction pass stopped at its size cap: the next one goes on with the same batch.
    fold_pending: std::sync::atomic::AtomicBool,
    fold_pass_bytes: u64,
    _lock: Option<lock::LedgerLock>,
}

/// Opens the state table; a missing one is damage (rebuilt from the journal like any other).
fn open_state(path: &Path, block_count: u64, writable: bool) -> Result<StateTable> {
    if std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Err(Error::damaged(
            path,
            0,
            "the file is missing (derived data: `lostwrite ledger check --repair` writes it anew from the journal)",
        ));
    }
    StateTable::open(path, block_count, writable)
}

/// Where the journal starts given the compacted history.
fn journal_start(fold: Option<&Fold>) -> Start {
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

fn lock_mutex<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh ledger id from the kernel's random pool (getrandom(2), blocking until the pool is
/// seeded, so an id drawn early at boot is still unpredictable).
fn random_id() -> Result<[u8; 16]> {
    use rustix::rand::{getrandom, GetRandomFlags};
    let mut id = [0u8; 16];
    let mut filled = 0;
    // A signal can cut the call short or interrupt it; 16 bytes are otherwise drawn at once.
    while filled < id.len() {
        match getrandom(&mut id[filled..], GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::io(
                    "getrandom(2)",
                    "drawing a random ledger id",
                    e.into(),
                ))
            }
        }
    }
    Ok(id)
}

/// Applies one record to the state table (used by replay, rebuild and live recording).
fn apply(
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

impl Ledger {
    /// Creates a new ledger for a device (atomically: it appears complete or not at all), and
    /// with `baseline` records generation 0 of every block.
    pub fn create(
        dir: &Path,
        identity: &DeviceIdentity,
        device_size: u64,
        block_size: u32,
        baseline: Option<BaselineSource<'_>>,
    ) -> Result<()> {
        // An empty directory is used (replaced by the new ledger); anything else is refused.
        let replace_empty = files::creatable(dir)?;
        if device_size == 0 {
            return Err(Error::Usage(format!(
                "{}: the device is empty (0 bytes); there is nothing to track",
                identity.path
            )));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".lostwrite-init-")
            .tempdir_in(&parent)
            .ctx(&parent, "creating a temporary ledger directory")?;
        let t = tmp.path();
        let geometry = Geometry::new(block_size, device_size);
        let meta = Meta {
            ledger_id: random_id()?,
            block_size,
            device_size,
            identity: Identity::of(identity),
            created: clock::now(),
            software: concat!("lostwrite ", env!("CARGO_PKG_VERSION")).into(),
            version: meta::NEW_LEDGER_VERSION,
        };
        let meta_path = t.join(META_FILE);
        std::fs::write(&meta_path, meta.encode()).ctx(&meta_path, "writing ledger metadata")?;
        std::fs::File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .ctx(&meta_path, "fsync")?;
        let jdir = t.join(JOURNAL_DIR);
        std::fs::create_dir(&jdir).ctx(&jdir, "creating journal directory")?;
        writer::create_segment(&jdir, &meta.ledger_id, 1, 1, 0, 0)?;
        let mut header = StateHeader {
            block_size,
            block_count: geometry.block_count(),
            ledger_id: meta.ledger_id,
            checkpoint_lsn: 0,
            checkpoint_pos: (1, segment::HEADER_LEN as u64),
            last_session: 0,
            session_open: false,
            clean: false,
        };
        let state = StateTable::create(&t.join(STATE_FILE), &header)?;
        if let Some(src) = baseline {
            let mut base = Baseline::create(&t.join(BASELINE_FILE), geometry.block_count())?;
            let bs = block_size as usize;
            crate::scan::parallel(
                src.device,
                geometry,
                src.jobs,
                src.progress,
                || (),
                |_, first, data| {
                    for (i, blk) in data.chunks_exact(bs).enumerate() {
                        let b = first + i as u64;
                        let crc = block::checksum(blk);
                        base.set(b, crc);
                        state.set(b, BlockState::Tracked { generation: 0, crc });
                    }
                },
            )?;
            let w = JournalWriter::resume(
                &jdir,
                meta.ledger_id,
                writer::Resume {
                    segment: 1,
                    offset: segment::HEADER_LEN as u64,
                    content_crc: segment_header_crc(&jdir, 1)?,
                    next_lsn: 1,
                },
                0,
                segment::DEFAULT_SEGMENT_BYTES,
            )?;
            let now = clock::now();
            let (lsn, _) = w.append(
                &[Record::Baseline {
                    blocks: geometry.block_count(),
                }],
                now,
            )?;
            w.sync_all()?;
            base.finish(block_size, &meta.ledger_id, now, lsn)?;
            header.checkpoint_lsn = lsn;
            header.checkpoint_pos = w.position();
        }
        state.seal_dirty();
        state.flush()?;
        header.clean = true;
        state.write_header(&header)?;
        writer::sync_dir(t)?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            t,
            nix::fcntl::AT_FDCWD,
            dir,
            // rename(2) replaces only an empty directory, so files put there meanwhile stay.
            if replace_empty {
                nix::fcntl::RenameFlags::empty()
            } else {
                nix::fcntl::RenameFlags::RENAME_NOREPLACE
            },
        )
        .map_err(|e| Error::io(dir, "moving the new ledger into place", e.into()))?;
        // The directory now lives under its final name; nothing is left for TempDir to delete.
        let _ = tmp.keep();
        writer::sync_dir(&parent)?;
        Ok(())
    }

    /// Opens a ledger. With `device`, checks that it is the device the ledger was made for
    /// (size, and identity unless `device_moved`).
    pub fn open(
        dir: &Path,
        device: Option<(&DeviceIdentity, u64)>,
        opts: OpenOptions,
    ) -> Result<Ledger> {
        if !dir.join(META_FILE).exists() {
            return Err(files::no_ledger(dir));
        }
        let lock = match opts.access {
            Access::Write => Some(lock::acquire(dir, true)?),
            Access::Read => Some(lock::acquire(dir, false)?),
            Access::Live => lock::acquire(dir, false).ok(),
        };
        let live = opts.access == Access::Live && lock.is_none();
        let meta = Meta::read(&dir.join(META_FILE))?;
        if let Some((id, size)) = device {
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
                if !opts.device_moved {
                    return Err(Error::DeviceMismatch {
                        path: PathBuf::from(&id.path),
                        detail: format!(
                            "this is not the device of ledger {}: {why}. If it holds the same disk's contents (moved, copied or restored), pass --device-moved",
                            dir.display()
                        ),
                    });
                }
            }
        }
        let geometry = Geometry::new(meta.block_size, meta.device_size);
        let zero_crc = block::zero_checksum(meta.block_size);
        let writable = opts.access == Access::Write;
        let mut fold = if live {
            None
        } else {
            Fold::read(dir, &meta.ledger_id)?
        };
        files::check_promised(dir, &meta, fold.as_ref())?;
        let state_path = dir.join(STATE_FILE);
        // A state table of the wrong length (cut short, or another ledger's) or a missing one is
        // replaced by an empty one and rebuilt from the journal below: it is derived data.
        let mut replaced: Option<String> = None;
        let state = match open_state(&state_path, geometry.block_count(), writable) {
            Ok(t) => t,
            Err(Error::Damaged { offset, detail, .. }) if !live => {
                replaced = Some(format!("at offset {offset}: {detail}"));
                if writable {
                    match std::fs::remove_file(&state_path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(Error::io(&state_path, "removing a damaged state table", e))
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
                    };
                    StateTable::create(&state_path, &h)?
                } else {
                    StateTable::anonymous(geometry.block_count())?
                }
            }
            Err(e) => return Err(e),
        };
        let base_path = dir.join(BASELINE_FILE);
        let baseline = if base_path.exists() {
            Some(Baseline::open(
                &base_path,
                meta.block_size,
                geometry.block_count(),
                &meta.ledger_id,
            )?)
        } else {
            None
        };
        let jdir = dir.join(JOURNAL_DIR);
        let mut recovery = Recovery::default();
        if writable {
            tidy_after_compaction(dir, fold.as_ref())?;
        }

        // What the table claims, and whether it is believable.
        let mut rebuild: Option<String> = replaced;
        let header = match state.header() {
            _ if rebuild.is_some() => None,
            Ok(h)
                if h.ledger_id == meta.ledger_id
                    && h.block_size == meta.block_size
                    && h.block_count == geometry.block_count() =>
            {
                Some(h)
            }
            Ok(_) => {
                rebuild = Some("its header belongs to another ledger or geometry".into());
                None
            }
            Err(e) => {
                rebuild = Some(e.to_string());
                None
            }
        };
        let protected = header.map_or((0, 0), |h| h.checkpoint_pos);
        let mut sessions = SessionTrack {
            last: header.map_or(0, |h| h.last_session),
            open: header.is_some_and(|h| h.session_open),
        };
        let mut end: Option<JournalEnd> = None;
        // Why the table must be rebuilt from the whole journal although it is not damaged.
        let mut recover: Option<String> = None;
        if live {
            let (f, e) = scan_live(dir, &meta.ledger_id, Lsn::MAX, &mut |_, _| Ok(()))?;
            fold = f;
            end = Some(e);
        } else if let Some(h) = header {
            if !h.clean {
                // A writer died with the table half-updated. After a host crash the table may
                // even hold changes whose journal records were lost, so only a full replay of the
                // journal is trustworthy.
                recover = Some("the last writer did not close the ledger cleanly".into());
            } else if let Some(&p) = state.bad_pages().first() {
                rebuild = Some(format!(
                    "page {p} (blocks {}..{}) fails its check at offset {}",
                    p * 512,
                    (p + 1) * 512,
                    state.check_offset(p)
                ));
            } else if fold
                .as_ref()
                .is_some_and(|f| h.checkpoint_lsn < f.header.through_lsn)
            {
                recover = Some(
                    "the state table was checkpointed before the oldest retained journal record"
                        .into(),
                );
            } else {
                let from = Replay {
                    state: &state,
                    baseline: baseline.as_ref(),
                    zero_crc,
                    jdir: &jdir,
                    ledger_id: &meta.ledger_id,
                    start: journal_start(fold.as_ref()),
                };
                let (e, n) = from.run(h.checkpoint_lsn + 1, protected, &mut sessions)?;
                recovery.replayed = n;
                end = Some(e);
            }
        }
        if !live && (rebuild.is_some() || recover.is_some()) {
            if let Some(why) = &rebuild {
                let msg = format!(
                    "state table {} is damaged ({why}); rebuilt it from the journal",
                    state_path.display()
                );
                tracing::warn!("{msg}");
                recovery.warnings.push(msg);
                recovery.state_rebuilt = Some(why.clone());
            } else if let Some(why) = &recover {
                tracing::info!("{why}; rebuilding the state table from the journal");
            }
            state.clear();
            let all = Replay {
                state: &state,
                baseline: baseline.as_ref(),
                zero_crc,
                jdir: &jdir,
                ledger_id: &meta.ledger_id,
                start: journal_start(fold.as_ref()),
            };
            sessions = all.seed(fold.as_ref())?;
            let (e, n) = all.run(all.start.lsn, protected, &mut sessions)?;
            recovery.replayed = n;
            end = Some(e);
        }
        if let (Some(h), Some(e)) = (header, &end) {
            if !live && e.next_lsn - 1 < h.checkpoint_lsn {
                return Err(files::journal_short(&jdir, e, &h));
            }
        }
        let mut end = end.expect("journal scanned");
        recovery.previous_clean = !sessions.open;
        // After a clean end no writer of ours appended past the checkpoint (a new segment's
        // header aside), so bytes there are no crash's torn tail.
        let foreign = !live
            && header.is_some_and(|h| h.clean)
            && end.torn.as_ref().is_some_and(|t| t.offset > 0);
        if let Some(t) = &end.torn {
            let msg = if foreign {
                if !(writable && opts.repair) {
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
            };
            tracing::warn!("{msg}");
            recovery.warnings.push(msg);
            recovery.torn_tail = Some(t.clone());
        }

        let mut journal = None;
        if writable {
            if let Some(t) = end.torn.take() {
                if t.offset == 0 {
                    std::fs::remove_file(&t.path).ctx(&t.path, "removing a torn new segment")?;
                    writer::sync_dir(&jdir)?;
                } else {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&t.path)
                        .ctx(&t.path, "opening segment to truncate its torn tail")?;
                    f.set_len(t.offset).ctx(&t.path, "truncating torn tail")?;
                    f.sync_all().ctx(&t.path, "fsync after truncating")?;
                }
            }
            let last = end.segments.last().expect("at least one segment");
            let last_path = last.path.clone();
            std::fs::File::open(&last_path)
                .and_then(|f| f.sync_data())
                .ctx(&last_path, "fdatasync of journal")?;
            let w = JournalWriter::resume(
                &jdir,
                meta.ledger_id,
                writer::Resume {
                    segment: last.number,
                    offset: last.valid_len,
                    content_crc: last.content_crc,
                    next_lsn: end.next_lsn,
                },
                end.next_lsn - 1,
                opts.segment_bytes,
            )?;
            journal = Some(w);
        }
        let header_now = StateHeader {
            block_size: meta.block_size,
            block_count: geometry.block_count(),
            ledger_id: meta.ledger_id,
            checkpoint_lsn: end.next_lsn - 1,
            checkpoint_pos: journal.as_ref().map_or(protected, |w| w.position()),
            last_session: sessions.last,
            session_open: sessions.open,
            clean: true,
        };
        let ledger = Ledger {
            dir: dir.to_path_buf(),
            meta,
            geometry,
            zero_crc,
            state,
            baseline,
            header: Mutex::new(header_now),
            journal,
            session: None,
            recovery,
            fold: Mutex::new(fold),
            gate: RwLock::new(()),
            segment_times: Mutex::new(BTreeMap::new()),
            fold_pending: std::sync::atomic::AtomicBool::new(false),
            fold_pass_bytes: opts.fold_pass_bytes.max(1),
            _lock: lock,
        };
        if writable {
            ledger.checkpoint(header_now)?;
        }
        Ok(ledger)
    }

    /// Seals changed pages, syncs the table and writes `h` as its header.
    fn checkpoint(&self, h: StateHeader) -> Result<()> {
        self.state.seal_dirty();
        self.state.flush()?;
        self.state.write_header(&h)?;
        *lock_mutex(&self.header) = h;
        Ok(())
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The block geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Checksum of a zero block of this ledger's size.
    pub fn zero_crc(&self) -> u32 {
        self.zero_crc
    }

    /// What opening found and did.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The damage opening found in the state table, naming the file and where, and what to do;
    /// `None` when the table was sound (or not judged: a live view of a running service).
    pub fn state_damage(&self) -> Option<String> {
        self.recovery.state_rebuilt.as_ref().map(|why| {
            format!(
                "state table {} is damaged ({why}); this run used a view rebuilt from the journal; `lostwrite ledger check --repair` rewrites the file",
                self.dir.join(STATE_FILE).display()
            )
        })
    }

    /// What block `b` should hold now.
    pub fn state(&self, block: u64) -> BlockState {
        self.state.get(block)
    }

    /// The state table (for the verifier's scan loop).
    pub fn state_table(&self) -> &StateTable {
        &self.state
    }

    /// The baseline, if one was taken.
    pub fn baseline(&self) -> Option<&Baseline> {
        self.baseline.as_ref()
    }

    /// The LSN through which the journal is known durable (a writer's view; for power-cut
    /// simulations and diagnostics). `None` for a reader.
    pub fn journal_synced(&self) -> Option<Lsn> {
        self.journal.as_ref().map(|j| j.synced())
    }

    /// The current header values (checkpoint, sessions).
    pub fn header(&self) -> StateHeader {
        *lock_mutex(&self.header)
    }

    /// Bytes the journal's segment files hold now (not bytes moved aside beside them).
    pub fn journal_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.join(JOURNAL_DIR))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(segment::parse_name)
                            .is_some()
                    })
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// True when opened without the lock while a writer runs.
    pub fn is_live_view(&self) -> bool {
        self._lock.is_none()
    }

    /// Reads the journal again from the start, handing every record with LSN >= `from` to
    /// `visit`.
    pub fn scan_journal(
        &self,
        from: Lsn,
        visit: &mut dyn FnMut(reader::Entry<'_>) -> Result<()>,
    ) -> Result<JournalEnd> {
        self.scan_history(&mut |_| Ok(()), from, visit)
    }

    /// Reads the whole history consistently: first the compacted history (`folded` gets it, or
    /// `None`), then every retained journal record with LSN >= `from`. Compaction in this
    /// process waits until it is done; a live view retries when a running service compacted
    /// in between.
    pub fn scan_history(
        &self,
        folded: &mut dyn FnMut(Option<&Fold>) -> Result<()>,
        from: Lsn,
        visit: &mut dyn FnMut(reader::Entry<'_>) -> Result<()>,
    ) -> Result<JournalEnd> {
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.is_live_view() {
            // scan_live hands over the fold alone once, before any record.
            let (_, end) = scan_live(&self.dir, &self.meta.ledger_id, from, &mut |f, e| match e {
                None => folded(f),
                Some(e) => visit(e),
            })?;
            return Ok(end);
        }
        let fold = lock_mutex(&self.fold).clone();
        folded(fold.as_ref())?;
        reader::scan(
            &self.dir.join(JOURNAL_DIR),
            &self.meta.ledger_id,
            journal_start(fold.as_ref()),
            u64::MAX,
            from,
            self.header().checkpoint_pos,
            visit,
        )
    }

    /// The compacted history's header and sessions, if retention folded any segments.
    pub fn fold(&self) -> Option<Fold> {
        lock_mutex(&self.fold).clone()
    }

    // ---- recording (writer only) ----

    fn writer(&self) -> Result<(&JournalWriter, &Session)> {
        let j = self.journal.as_ref().ok_or_else(|| {
            Error::Usage("the ledger was opened read-only; recording needs Access::Write".into())
        })?;
        let s = self.session.as_ref().ok_or_else(|| {
            Error::Usage("no session: call begin_session before recording".into())
        })?;
        if let Some(why) = lock_mutex(&s.device_failure).as_ref() {
            return Err(Error::Poisoned {
                path: PathBuf::from(&self.meta.identity.path),
                detail: why.clone(),
            });
        }
        Ok((j, s))
    }

    /// Starts a service session: appends a session-open record (saying whether the previous
    /// session ended cleanly), syncs it, and marks the table as being changed.
    pub fn begin_session(&mut self, strict: bool) -> Result<u64> {
        let j = self.journal.as_ref().ok_or_else(|| {
            Error::Usage("the ledger was opened read-only; a session needs Access::Write".into())
        })?;
        let mut h = self.header();
        // The table stops claiming a clean end before anything is appended: a clean header
        // then means no writer appended past its checkpoint, so bytes found there were written
        // by no crash of ours (docs/FORMAT.md, "Recovery").
        h.clean = false;
        self.state.write_header(&h)?;
        let id = h.last_session + 1;
        let (lsn, _) = j.append(
            &[Record::SessionOpen(SessionOpen {
                session: id,
                previous_clean: self.recovery.previous_clean,
                strict,
                pid: std::process::id(),
                software: concat!("lostwrite ", env!("CARGO_PKG_VERSION")).into(),
            })],
            clock::now(),
        )?;
        j.sync_to(lsn)?;
        h.checkpoint_lsn = lsn;
        h.checkpoint_pos = j.position();
        h.last_session = id;
        h.session_open = true;
        h.clean = false;
        self.state.write_header(&h)?;
        *lock_mutex(&self.header) = h;
        self.session = Some(Session {
            id,
            strict,
            inflight: Mutex::new(Inflight {
                incomplete: BTreeMap::new(),
                completed: Vec::new(),
            }),
            flushes: Mutex::new(FlushRounds::default()),
            flushed: std::sync::Condvar::new(),
            device_failure: Mutex::new(None),
        });
        Ok(id)
    }

    /// The current session number, if a session is open.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    fn record_changes(
        &self,
        first_block: u64,
        count: u64,
        make: impl Fn(u64, Generation) -> (Record, BlockState),
    ) -> Result<Ticket> {
        let mut t = self.record_ranges(&[(first_block, count)], |_, b, g| make(b, g))?;
        Ok(t.pop().expect("one range, one ticket"))
    }

    /// Records changes of several block ranges (first block, count) with one journal append,
    /// one ticket per range; `make(i, block, generation)` gives the record and new state of a
    /// block of range `i`. The ranges must not overlap.
    fn record_ranges(
        &self,
        ranges: &[(u64, u64)],
        make: impl Fn(usize, u64, Generation) -> (Record, BlockState),
    ) -> Result<Vec<Ticket>> {
        let (j, s) = self.writer()?;
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(first, count) in ranges {
            let end = first
                .checked_add(count)
                .filter(|&e| e <= self.geometry.block_count() && count > 0)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "blocks {first}..+{count} are not within the device's {} blocks",
                        self.geometry.block_count()
                    ))
                })?;
            spans.push((first, end));
        }
        if spans.len() > 1 {
            spans.sort_unstable();
            if spans.windows(2).any(|w| w[1].0 < w[0].1) {
                return Err(Error::Usage(
                    "changes recorded together must not overlap".into(),
                ));
            }
        }
        let mut records = Vec::with_capacity(ranges.iter().map(|r| r.1 as usize).sum());
        let mut tickets = Vec::with_capacity(ranges.len());
        for (i, &(first, count)) in ranges.iter().enumerate() {
            let mut generations = Vec::with_capacity(count as usize);
            for b in first..first + count {
                let g = self.state.get(b).next_generation();
                records.push(make(i, b, g).0);
                generations.push(g);
            }
            tickets.push(Ticket {
                first: 0,
                last: 0,
                first_block: first,
                generations,
            });
        }
        let last = {
            let mut inf = lock_mutex(&s.inflight);
            let (mut lsn, last) = j.append(&records, clock::now())?;
            for t in &mut tickets {
                t.first = lsn;
                t.last = lsn + t.generations.len() as u64 - 1;
                lsn = t.last + 1;
                inf.incomplete.insert(t.first, t.last);
            }
            last
        };
        for (i, t) in tickets.iter().enumerate() {
            for (b, &g) in (t.first_block..).zip(&t.generations) {
                self.state.set(b, make(i, b, g).1);
            }
        }
        if s.strict {
            j.sync_to(last)?;
        }
        Ok(tickets)
    }

    /// Records that blocks `first_block..` are being written with contents whose checksums are
    /// `crcs`. Call before issuing the device write; the records are in the kernel (and with
    /// `--journal-sync strict`, durable) when this returns.
    pub fn record_write(&self, first_block: u64, crcs: &[u32]) -> Result<Ticket> {
        let new: Vec<NewContents> = crcs.iter().map(|&c| NewContents::Crc(c)).collect();
        self.record_contents(first_block, &new)
    }

    /// Records a change of blocks `first_block..` where each block either gets contents with
    /// a checksum or becomes zeroes (a write-zeroes whose edges are partial blocks).
    pub fn record_contents(&self, first_block: u64, new: &[NewContents]) -> Result<Ticket> {
        self.record_changes(first_block, new.len() as u64, |b, g| {
            self.contents_change(b, g, new[(b - first_block) as usize])
        })
    }

    /// The record and the new state of block `b` getting generation `g` with contents `nc`.
    fn contents_change(&self, b: u64, g: Generation, nc: NewContents) -> (Record, BlockState) {
        match nc {
            NewContents::Crc(crc) => (
                Record::Write {
                    block: b,
                    generation: g,
                    crc,
                },
                BlockState::Tracked { generation: g, crc },
            ),
            NewContents::Zero => (
                Record::Zero {
                    block: b,
                    generation: g,
                },
                BlockState::Tracked {
                    generation: g,
                    crc: self.zero_crc,
                },
            ),
        }
    }

    /// Records several changes as [`Ledger::record_contents`] would one after the other, but
    /// with one journal append (one write(2) for all of them): what a connection's pipelined
    /// WRITEs cost. The ranges must not overlap. Every record is in the kernel when this returns,
    /// before the caller issues any of the device writes.
    pub fn record_contents_many(&self, items: &[(u64, &[NewContents])]) -> Result<Vec<Ticket>> {
        let ranges: Vec<(u64, u64)> = items
            .iter()
            .map(|&(first, new)| (first, new.len() as u64))
            .collect();
        self.record_ranges(&ranges, |i, b, g| {
            let (first, new) = items[i];
            self.contents_change(b, g, new[(b - first) as usize])
        })
    }

    /// Like [`Ledger::record_write`], checksumming `data` (whole blocks) itself.
    pub fn record_write_data(&self, first_block: u64, data: &[u8]) -> Result<Ticket> {
        let bs = self.meta.block_size as usize;
        if data.len() % bs != 0 {
            return Err(Error::Usage(format!(
                "{} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let crcs: Vec<u32> = data.chunks_exact(bs).map(block::checksum).collect();
        self.record_write(first_block, &crcs)
    }

    /// Records that blocks are being zeroed (they will read back as zeroes).
    pub fn record_zero(&self, first_block: u64, count: u64) -> Result<Ticket> {
        self.record_contents(first_block, &vec![NewContents::Zero; count as usize])
    }

    /// Records that blocks were discarded with undefined contents: untracked until written.
    pub fn record_trim(&self, first_block: u64, count: u64) -> Result<Ticket> {
        self.record_changes(first_block, count, |b, g| {
            (
                Record::Trim {
                    block: b,
                    generation: g,
                },
                BlockState::Untracked { generation: g },
            )
        })
    }

    /// Reports how the device I/O of a ticket ended. A failure is recorded (the blocks' contents
    /// become unknown until their next write); the ticket then counts as completed for flushes.
    pub fn complete(&self, t: &Ticket, ok: bool) -> Result<()> {
        let (j, s) = match (&self.journal, &self.session) {
            (Some(j), Some(s)) => (j, s),
            _ => return Err(Error::Usage("complete() without a session".into())),
        };
        let mut inf = lock_mutex(&s.inflight);
        let mut result = Ok(());
        if !ok {
            let records: Vec<Record> = t
                .generations
                .iter()
                .enumerate()
                .map(|(i, &g)| Record::Failed {
                    block: t.first_block + i as u64,
                    generation: g,
                })
                .collect();
            if let Err(e) = j.append(&records, clock::now()) {
                // The journal still says these writes happened. The session must not close
                // cleanly (which would make them durable): it will count as crashed, and its
                // unflushed writes as allowed losses.
                self.poison_session(format!(
                    "a failed device write could not be recorded as failed: {e}"
                ));
                result = Err(e);
            }
            for (i, &g) in t.generations.iter().enumerate() {
                self.state.set(
                    t.first_block + i as u64,
                    BlockState::Unknown { generation: g },
                );
            }
        }
        inf.incomplete.remove(&t.first);
        inf.completed.push((t.first, t.last));
        result
    }

    /// Marks a completed FUA write durable: appends a durable record and syncs the journal
    /// through it (group commit). Call after [`Ledger::complete`] and after the device write,
    /// made with FUA, returned.
    pub fn record_fua(&self, t: &Ticket) -> Result<()> {
        let (j, _) = self.writer()?;
        let (lsn, _) = j.append(
            &[Record::Durable {
                first: t.first,
                last: t.last,
            }],
            clock::now(),
        )?;
        j.sync_to(lsn)
    }

    /// A FLUSH: every change completed before this call becomes durable. `device_flush` syncs
    /// the device; then a flush record is appended and the journal synced through it. A failed
    /// device flush poisons the session: later writes are refused, and the session will not
    /// close cleanly (its unflushed writes stay non-durable).
    ///
    /// Concurrent calls share rounds (see `FlushRounds`): a call may return after another
    /// caller's `device_flush` ran, so every caller must pass a flush of the same device.
    pub fn flush(&self, device_flush: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        let (j, s) = self.writer()?;
        let mut g = lock_mutex(&s.flushes);
        // The first round to begin after this call covers it.
        let need = g.started + 1;
        while g.running && g.done < need {
            g = s.flushed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.done >= need {
            return match g.failed.iter().find(|(r, _)| *r == need) {
                Some((_, why)) => Err(Error::Poisoned {
                    path: self.dir.clone(),
                    detail: why.clone(),
                }),
                None => Ok(()),
            };
        }
        g.running = true;
        g.started += 1;
        let round = g.started;
        drop(g);
        let r = self.flush_round(j, s, device_flush);
        let mut g = lock_mutex(&s.flushes);
        g.running = false;
        g.done = round;
        if let Err(e) = &r {
            g.failed.push((round, e.to_string()));
        }
        s.flushed.notify_all();
        r
    }

    /// One flush round: what has completed becomes durable.
    fn flush_round(
        &self,
        j: &JournalWriter,
        s: &Session,
        device_flush: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<()> {
        // Rounds run one at a time: a round that finds nothing new to record must not reply
        // before the round that took the completed writes has synced its record; and after a
        // failed device sync, a later "successful" one proves nothing (the kernel reports a
        // writeback error once), so the failure is checked again here.
        self.writer()?;
        let (covers, extra, changed) = {
            let mut inf = lock_mutex(&s.inflight);
            let covers = match inf.incomplete.first_key_value() {
                Some((&first, _)) => first - 1,
                None => j.next_lsn() - 1,
            };
            // Nothing completed since the last flush: nothing new becomes durable.
            let changed = !inf.completed.is_empty();
            let mut extra: Vec<(Lsn, Lsn)> = inf
                .completed
                .drain(..)
                .filter(|&(first, _)| first > covers)
                .collect();
            extra.sort_unstable();
            let mut extra = merge_ranges(extra);
            // Bounded, so the record fits a frame; writes left out are only not marked durable
            // by this flush (the next one covers them).
            extra.truncate(MAX_FLUSH_RANGES);
            (covers, extra, changed)
        };
        if let Err(e) = device_flush() {
            self.poison_session(format!("device flush (fdatasync) failed: {e}"));
            return Err(Error::io(
                &self.meta.identity.path,
                "fdatasync of device",
                e,
            ));
        }
        if changed {
            let (lsn, _) = j.append(
                &[Record::Flush {
                    session: s.id,
                    covers,
                    extra,
                }],
                clock::now(),
            )?;
            j.sync_to(lsn)
        } else {
            j.sync_all()
        }
    }

    /// Why the session refuses writes (the device failed to make data durable), if it does.
    pub fn session_failure(&self) -> Option<String> {
        self.session
            .as_ref()
            .and_then(|s| lock_mutex(&s.device_failure).clone())
    }

    /// Records that the device failed to make data durable (a failed fdatasync outside
    /// [`Ledger::flush`], e.g. for a FUA zeroing): later writes are refused and the session will
    /// not close cleanly.
    pub fn poison_session(&self, why: String) {
        if let Some(s) = &self.session {
            let mut f = lock_mutex(&s.device_failure);
            if f.is_none() {
                tracing::error!("session poisoned: {why}");
                *f = Some(why);
            }
        }
    }

    /// Ends the session cleanly: the device is flushed with `device_flush`, a session-close
    /// record is synced, and the state table is checkpointed. If the session was poisoned by a
    /// device failure it is left unclosed, so it counts as crashed.
    pub fn close(self, device_flush: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        let (Some(j), Some(s)) = (&self.journal, &self.session) else {
            return Ok(());
        };
        let failed = lock_mutex(&s.device_failure).clone();
        let mut h = self.header();
        if failed.is_none() {
            device_flush().ctx(&self.meta.identity.path, "fdatasync of device at shutdown")?;
            let (lsn, _) = j.append(&[Record::SessionClose { session: s.id }], clock::now())?;
            j.sync_to(lsn)?;
            h.checkpoint_lsn = lsn;
            h.session_open = false;
            h.clean = true;
        } else {
            j.sync_all()?;
            h.checkpoint_lsn = j.next_lsn() - 1;
            h.clean = true;
        }
        h.checkpoint_pos = j.position();
        self.checkpoint(h)
    }

    /// Rewrites the state table from the journal and checkpoints it (`ledger check --repair`).
    pub fn rebuild_state(&mut self) -> Result<()> {
        if self.journal.is_none() {
            return Err(Error::Usage("rebuild needs Access::Write".into()));
        }
        let jdir = self.dir.join(JOURNAL_DIR);
        self.state.clear();
        let fold = self.fold();
        let all = Replay {
            state: &self.state,
            baseline: self.baseline.as_ref(),
            zero_crc: self.zero_crc,
            jdir: &jdir,
            ledger_id: &self.meta.ledger_id,
            start: journal_start(fold.as_ref()),
        };
        let mut sessions = all.seed(fold.as_ref())?;
        let (end, _) = all.run(all.start.lsn, (0, 0), &mut sessions)?;
        let mut h = self.header();
        h.checkpoint_lsn = end.next_lsn - 1;
        h.last_session = sessions.last;
        h.session_open = sessions.open;
        h.clean = true;
        self.checkpoint(h)
    }
}

/// Bringing a state table up to date from the journal.
struct Replay<'a> {
    state: &'a StateTable,
    baseline: Option<&'a Baseline>,
    zero_crc: u32,
    jdir: &'a Path,
    ledger_id: &'a [u8; 16],
    start: Start,
}

impl Replay<'_> {
    /// Puts the state at the fold point into the (cleared) table: the folded baseline, then each
    /// block's latest folded change. Returns the sessions as they stood there.
    fn seed(&self, fold: Option<&Fold>) -> Result<SessionTrack> {
        let Some(f) = fold else {
            return Ok(SessionTrack::default());
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
        Ok(SessionTrack {
            last: f.header.last_session,
            open: f.header.session_open,
        })
    }

    /// Applies every record from LSN `from` on, following sessions; returns where the journal
    /// ends and how many records were applied.
    fn run(
        &self,
        from: Lsn,
        protected: (u64, u64),
        sessions: &mut SessionTrack,
    ) -> Result<(JournalEnd, u64)> {
        let mut n = 0u64;
        let end = reader::scan(
            self.jdir,
            self.ledger_id,
            self.start,
            u64::MAX,
            from,
            protected,
            &mut |e| {
                n += 1;
                sessions.see(e.record);
                apply(
                    self.state,
                    self.baseline,
                    self.zero_crc,
                    e.lsn,
                    e.record,
                    self.jdir,
                )
            },
        )?;
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
fn scan_live(
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

/// Removes what an interrupted compaction left: its temporary file, and segments the compacted
/// history already covers.
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
            removed = true;
        }
    }
    if removed {
        writer::sync_dir(&jdir)?;
    }
    Ok(())
}

/// Most out-of-order completed ranges one flush record lists.
const MAX_FLUSH_RANGES: usize = 4096;

fn merge_ranges(sorted: Vec<(Lsn, Lsn)>) -> Vec<(Lsn, Lsn)> {
    let mut out: Vec<(Lsn, Lsn)> = Vec::with_capacity(sorted.len());
    for (a, b) in sorted {
        match out.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Reads the header of a freshly created segment back to seed the running content checksum.
fn segment_header_crc(jdir: &Path, number: u64) -> Result<u32> {
    let p = segment::path(jdir, number);
    let b = std::fs::read(&p).ctx(&p, "reading segment header")?;
    Ok(crc32fast::hash(&b[..segment::HEADER_LEN.min(b.len())]))
}

#[derive(Default)]
struct SessionTrack {
    last: u64,
    open: bool,
}

impl SessionTrack {
    fn see(&mut self, r: &Record) {
        match r {
            Record::SessionOpen(o) => {
                self.last = o.session;
                self.open = true;
            }
            Record::SessionClose { .. } => self.open = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge_ranges(vec![(1, 2), (3, 5), (7, 7), (8, 9), (20, 21)]),
            vec![(1, 5), (7, 9), (20, 21)]
        );
    }
}
