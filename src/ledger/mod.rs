//! The ledger: the record, kept apart from the device, of what every block should hold.
//!
//! A ledger is a directory (docs/FORMAT.md draws every byte):
//!
//! ```text
//! meta        which device, block size, size, identity          (meta.rs, identity.rs)
//! lock        flock: one writer at a time                       (lock.rs)
//! state       per-block generation + checksum, mapped, checked  (state.rs, mapped.rs)
//! baseline    generation-0 checksums from `init --baseline`     (baseline.rs)
//! journal/    append-only chained segments of checksummed frames (segment.rs, frame.rs,
//!             reader.rs, writer.rs)
//! compacted   what retention kept of the segments it deleted    (compact.rs, fold.rs)
//! data/       kept contents of written blocks (`--keep-data`)   (kept/)
//! findings.jsonl, scrub.json   what `serve` saw online, where the scrubber stands
//!             (findings/log.rs, service/scrub.rs)
//! ```
//!
//! Which of these a ledger must have, and how their absence is named, is files.rs.
//!
//! The work on a ledger is split by job:
//!
//! - create.rs: [`Ledger::create`], a new ledger made atomically;
//! - open.rs: [`Ledger::open`] and [`LedgerWriter::open`], opening and recovering in named
//!   steps (lock, meta and the device, promised files, the state table, the journal replayed,
//!   the torn tail, and the writer's repairs);
//! - session.rs: writing — [`LedgerWriter`] (the one writer) and [`WriteSession`] (recording,
//!   flush rounds, close), types of their own so that a reader cannot record;
//! - replay.rs: bringing the state table up to date from the compacted history and the journal
//!   (`apply`, `Replay`, `scan_live`);
//! - sessions.rs: the sessions as the journal tells them, one reading for replay, compaction
//!   and history;
//! - history.rs: the journal read as history (sessions, events) for verify, history, report;
//! - compact.rs + fold.rs: retention; check.rs: `ledger check`.
//!
//! This file keeps [`Ledger`], the open ledger every reader (and, through the types above, the
//! writer) uses, with its read accessors.

pub mod baseline;
pub mod check;
mod checkpoint;
pub mod codec;
pub mod compact;
mod confirm;
mod create;
pub mod files;
pub mod fold;
pub mod frame;
pub mod history;
pub mod identity;
pub mod kept;
mod lock;
pub mod mapped;
pub mod meta;
mod open;
pub mod reader;
pub mod record;
mod replay;
pub mod segment;
mod session;
mod sessions;
pub mod state;
pub mod summary;
pub mod writer;

use crate::block::Geometry;
use baseline::Baseline;
use fold::Fold;
use meta::Meta;
use reader::{JournalEnd, TornTail};
use record::Lsn;
use state::{BlockState, StateHeader, StateTable};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::Result;
pub use create::BaselineSource;
pub use session::{LedgerWriter, NewContents, Ticket, WriteSession};

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
    /// A reader that asks about a few blocks (`history`): sealed journal segments whose
    /// summaries match them are not read in full (summary.rs), the segment being written is
    /// read from the state table's checkpoint on (the reader's own walk,
    /// [`Ledger::scan_history_skimming`], reads it whole), and the state table's pages are not
    /// checked at open: the reader checks those of its blocks with [`Ledger::page_damage`].
    pub skim: bool,
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
            skim: false,
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
    /// The LSN the replay started from: past the table's checkpoint, or the journal's start
    /// when the table was rebuilt whole (0: nothing was replayed: a live view).
    pub replayed_from: Lsn,
    /// Whether the last session had closed cleanly.
    pub previous_clean: bool,
    /// Warnings for the operator.
    pub warnings: Vec<String>,
}

/// An open ledger: what a reader sees, and what the writer types (session.rs) build on.
pub struct Ledger {
    dir: PathBuf,
    meta: Meta,
    geometry: Geometry,
    zero_crc: u32,
    state: StateTable,
    baseline: Option<Baseline>,
    header: Mutex<StateHeader>,
    recovery: Recovery,
    /// The compacted history, if retention has folded any segments.
    fold: Mutex<Option<Fold>>,
    /// Held shared by whoever reads the journal, exclusively while compaction swaps the
    /// compacted history and deletes the segments it folded.
    gate: RwLock<()>,
    /// The session this process's writer began on this ledger, if it did.
    own_session: Option<u64>,
    /// Through which LSN this process's writer has synced the journal (`None` for a reader).
    synced: Option<Arc<AtomicU64>>,
    /// Opened with [`OpenOptions::skim`].
    skim: bool,
    _lock: Option<lock::LedgerLock>,
}

fn lock_mutex<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ledger {
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

    /// The first of the state table pages holding `blocks` that fails its check, described;
    /// `None` when they pass. A skimming open ([`OpenOptions::skim`]) checks no page: its
    /// caller asks this about the blocks it reads, and opens again without skimming when one
    /// fails (that open rebuilds the table from the journal and says why).
    pub fn page_damage(&self, blocks: &[u64]) -> Option<String> {
        blocks
            .iter()
            .filter(|&&b| b < self.state.block_count())
            .map(|&b| StateTable::page_of(b))
            .find(|&p| self.state.page_fails(p))
            .map(|p| {
                format!(
                    "page {p} of state table {} fails its check at offset {}",
                    self.dir.join(STATE_FILE).display(),
                    self.state.check_offset(p)
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
        self.synced.as_ref().map(|s| s.load(Ordering::Acquire))
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
            let (_, end) =
                replay::scan_live(&self.dir, &self.meta.ledger_id, from, &mut |f, e| match e {
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
            replay::journal_start(fold.as_ref()),
            u64::MAX,
            from,
            self.header().checkpoint_pos,
            visit,
        )
    }

    /// Like [`Ledger::scan_history`] from LSN 1, but sealed segments whose summaries match them
    /// and for which `wants` says no are not read: their non-change records and the last change
    /// record before each come from the summary. Of the segments read, only the change records
    /// of the blocks `blocks` passes are decoded and handed over, the others as the last one
    /// before each record handed over (`None`: every record). Without [`OpenOptions::skim`], or
    /// on a live view, every segment is read and every record handed over.
    pub fn scan_history_skimming(
        &self,
        folded: &mut dyn FnMut(Option<&Fold>) -> Result<()>,
        wants: &dyn Fn(&summary::Summary) -> bool,
        blocks: Option<&dyn Fn(u64) -> bool>,
        visit: &mut dyn FnMut(summary::Seen<'_>) -> Result<()>,
    ) -> Result<JournalEnd> {
        if !self.skim || self.is_live_view() {
            return self.scan_history(folded, 1, &mut |e| visit(summary::Seen::Record(e)));
        }
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let fold = lock_mutex(&self.fold).clone();
        folded(fold.as_ref())?;
        let jdir = self.dir.join(JOURNAL_DIR);
        let walk = summary::Walk {
            decode_from: 1,
            protected: self.header().checkpoint_pos,
            resume: None,
            wants,
            blocks,
        };
        let end = summary::scan(
            &jdir,
            &self.meta.ledger_id,
            replay::journal_start(fold.as_ref()),
            &walk,
            visit,
        )?;
        // A skimming open read the last segment only from the checkpoint on: this read of the
        // whole segment must end where that one did.
        let opened = self.header().checkpoint_lsn;
        if end.next_lsn - 1 != opened {
            return Err(crate::error::Error::damaged(
                &jdir,
                0,
                format!(
                    "the journal read whole ends at LSN {}, but read from the state table's checkpoint it ended at LSN {opened}: journal records are missing or were replaced; run `lostwrite ledger check`",
                    end.next_lsn - 1
                ),
            ));
        }
        Ok(end)
    }

    /// The compacted history's header and sessions, if retention folded any segments.
    pub fn fold(&self) -> Option<Fold> {
        lock_mutex(&self.fold).clone()
    }

    /// The session this process's writer has open on this ledger, if it began one (a
    /// [`WriteSession`] answers its own number).
    pub fn session_id(&self) -> Option<u64> {
        self.own_session
    }
}
