//! The journal-sync thread of a write session: it syncs the journal beside a flush round's
//! device sync, and makes a round's confirmation durable within [`CONFIRM_DELAY`] when no other
//! journal sync (the next round's, a FUA write's) comes first. The protocol it serves is
//! `WriteSession::flush` (session.rs) and docs/DESIGN.md, "The durability protocol".

use super::lock_mutex;
use super::record::Lsn;
use super::session::LedgerWriter;
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest a flush confirmation waits in the kernel for a sync of the journal that would happen
/// anyway (the next round's, a FUA's) before the timer syncs it: the window after a FLUSH reply in
/// which a crash of the host leaves that FLUSH's writes unflushed (docs/VERIFY.md).
pub(super) const CONFIRM_DELAY: Duration = Duration::from_millis(100);

/// A thread that syncs the journal when asked: at once, so a flush round's journal sync runs
/// beside its device sync, or by a deadline, so a confirmation becomes durable without a sync
/// of its own when another one comes first.
pub(super) struct ConfirmTimer {
    shared: Arc<TimerShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct TimerShared {
    state: Mutex<TimerState>,
    wake: Condvar,
}

#[derive(Default)]
struct TimerState {
    /// Sync through this LSN by this instant.
    due: Option<(Lsn, Instant)>,
    stop: bool,
}

impl ConfirmTimer {
    pub(super) fn start(writer: Arc<LedgerWriter>) -> Result<ConfirmTimer> {
        let shared = Arc::new(TimerShared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lw-journal-sync".into())
            .spawn(move || s.run(&writer))
            .map_err(|e| {
                Error::io(
                    "journal sync thread",
                    "starting the thread that confirms flushes",
                    e,
                )
            })?;
        Ok(ConfirmTimer {
            shared,
            thread: Some(thread),
        })
    }

    /// Syncs the journal through `lsn` as soon as the thread wakes.
    pub(super) fn sync_now(&self, lsn: Lsn) {
        self.sync_by(lsn, Instant::now());
    }

    /// Syncs the journal through `lsn` by `when` (unless something else synced it first).
    pub(super) fn sync_by(&self, lsn: Lsn, when: Instant) {
        let mut g = lock_mutex(&self.shared.state);
        g.due = Some(match g.due {
            Some((l, w)) => (l.max(lsn), w.min(when)),
            None => (lsn, when),
        });
        self.shared.wake.notify_one();
    }
}

impl TimerShared {
    fn run(&self, writer: &LedgerWriter) {
        let j = writer.journal();
        let mut g = lock_mutex(&self.state);
        loop {
            if g.stop {
                return;
            }
            let Some((lsn, when)) = g.due else {
                g = self.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let now = Instant::now();
            if now < when {
                g = self
                    .wake
                    .wait_timeout(g, when - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            g.due = None;
            drop(g);
            if j.synced() < lsn {
                // A failure poisons the writer; the flush round waiting on this sync, or the
                // next caller, reports it.
                if let Err(e) = j.sync_to(lsn) {
                    tracing::debug!("journal sync for a flush: {e}");
                }
            }
            g = lock_mutex(&self.state);
        }
    }
}

impl Drop for ConfirmTimer {
    fn drop(&mut self) {
        lock_mutex(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
