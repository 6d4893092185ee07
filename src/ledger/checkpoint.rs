//! Running checkpoints: while a session records, the state table's header is moved forward now
//! and then to an LSN through which the table is complete, so that opening the ledger after the
//! writer crashed replays only the journal after it (open.rs, `replay_journal`) instead of the
//! whole journal.
//!
//! What a running checkpoint at LSN X promises (docs/FORMAT.md, "state"): the table, as the
//! page cache of the host boot named in the header holds it, reflects every record up to X; every
//! page that no record after X changed passes its check; and the journal is synced through X.
//! The order that makes it true: every record's entries are stored in the table while the
//! recorder holds the gate shared, so with the gate held exclusively for an instant no record up
//! to X is half applied; then the journal is synced through X, the changed pages are sealed, and
//! only then is the header written. The promise is about the page cache, not the disk: a table
//! page may reach the disk before the journal records it reflects (the kernel writes mapped pages
//! back when it likes), so after a host crash the table can hold changes the journal lost.
//! Opening under another boot therefore rebuilds the table from the whole journal.

use super::lock_mutex;
use super::record::Lsn;
use super::session::WriteSession;
use crate::clock::{self, Micros};
use crate::error::Result;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

/// A running checkpoint is due once this many records followed the last one ...
pub(super) const EVERY_RECORDS: u64 = 1 << 19;
/// ... or this long after it (µs), or once the journal started a new segment (retention folds
/// whole segments, and a checkpoint older than the fold is no use), whichever comes first,
/// when records follow it at all.
pub(super) const EVERY_MICROS: Micros = 5_000_000;

/// The running checkpoints of one session.
pub(super) struct Checkpoints {
    /// Held shared from a record's append until its entries are in the table; exclusively, for
    /// an instant, by a checkpoint finding an LSN through which the table is complete.
    gate: RwLock<()>,
    due_lsn: AtomicU64,
    due_time: AtomicI64,
    /// The journal's segment count at the last checkpoint.
    rolls: AtomicU64,
    /// One checkpoint at a time; a recorder finding one under way goes on.
    taking: Mutex<()>,
    /// The host boot the session runs under; `None` (no boot id) takes no running checkpoints.
    boot: Option<[u8; 16]>,
}

impl Checkpoints {
    /// Checkpoints for a session whose table is complete through `lsn` at `now`.
    pub(super) fn new(lsn: Lsn, now: Micros, boot: Option<[u8; 16]>) -> Checkpoints {
        Checkpoints {
            gate: RwLock::new(()),
            due_lsn: AtomicU64::new(lsn + EVERY_RECORDS),
            due_time: AtomicI64::new(now + EVERY_MICROS),
            rolls: AtomicU64::new(0),
            taking: Mutex::new(()),
            boot,
        }
    }

    /// Held by a recorder from its append until its entries are in the table.
    pub(super) fn applying(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn due(&self, last: Lsn, rolls: u64) -> bool {
        self.boot.is_some()
            && (last >= self.due_lsn.load(Ordering::Relaxed)
                || rolls != self.rolls.load(Ordering::Relaxed)
                || clock::now() >= self.due_time.load(Ordering::Relaxed))
    }
}

impl WriteSession {
    /// Takes a running checkpoint when one is due; called by the recording path after the
    /// entries of records up to `last` are in the table. The checkpoint's cost (sealing the
    /// pages changed since the last one, one journal sync, one header page written) falls on
    /// the one caller that finds it due; a failure is logged, not the caller's.
    pub(super) fn checkpoint_if_due(&self, last: Lsn) {
        let c = self.checkpoints();
        let rolls = self.journal().rolls();
        if !c.due(last, rolls) {
            return;
        }
        let Ok(_one) = c.taking.try_lock() else {
            return;
        };
        if !c.due(last, rolls) {
            return;
        }
        if let Err(e) = self.checkpoint_running() {
            tracing::warn!("running checkpoint of the state table failed (a restart after a crash replays more of the journal): {e}");
        }
    }

    /// Moves the running checkpoint to the journal's end now (see the module comment for the
    /// order). Returns the checkpoint LSN.
    pub fn checkpoint_running(&self) -> Result<Lsn> {
        let c = self.checkpoints();
        let Some(boot) = c.boot else {
            return Ok(self.header().checkpoint_lsn);
        };
        let j = self.journal();
        let rolls = j.rolls();
        let (lsn, pos) = {
            let _all = c.gate.write().unwrap_or_else(|p| p.into_inner());
            j.end()
        };
        c.rolls.store(rolls, Ordering::Relaxed);
        j.sync_to(lsn)?;
        self.state.seal_dirty();
        c.due_lsn.store(lsn + EVERY_RECORDS, Ordering::Relaxed);
        c.due_time
            .store(clock::now() + EVERY_MICROS, Ordering::Relaxed);
        let mut h = self.header();
        if lsn <= h.checkpoint_lsn {
            return Ok(h.checkpoint_lsn);
        }
        h.checkpoint_lsn = lsn;
        h.checkpoint_pos = pos;
        h.clean = false;
        h.running = Some(boot);
        self.state.write_header(&h)?;
        *lock_mutex(&self.header) = h;
        Ok(lsn)
    }
}
