//! Retention in the running service: one thread per export folds journal segments that
//! `--retain` / `--retain-bytes` no longer keep (ledger/compact.rs does the work, in batches of
//! a quarter of the retention). It wakes when
//! the writer starts a new segment, and at least once a second; with `--retain` it also seals
//! the segment being written once that is a quarter of the retention old, so history older than
//! the retention does not wait for a quiet journal to fill a segment. The same thread bounds the
//! data log of `--keep-data` (`KeptLog::prune`), with or without a journal retention.

use super::Export;
use crate::clock;
use crate::ledger::compact::Retention;
use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// The retention thread of one export.
pub struct Retainer {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl Retainer {
    /// Starts applying `keep` to `export`'s ledger (which must be recording).
    pub fn start(export: &Arc<Export>, keep: Retention) -> crate::Result<Retainer> {
        if export.ledger().is_none() {
            return Err(crate::Error::Usage(
                "retention needs a ledger (not --no-record)".into(),
            ));
        }
        let (stop, stopped) = bounded(1);
        let weak = Arc::downgrade(export);
        let handle = std::thread::Builder::new()
            .name(format!("retain {}", export.name()))
            .spawn(move || run(weak, keep, stopped))
            .map_err(|e| crate::Error::io("retention", "starting the thread", e))?;
        Ok(Retainer {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops after the compaction in hand.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Retainer {
    fn drop(&mut self) {
        self.join();
    }
}

fn run(export: Weak<Export>, keep: Retention, stopped: Receiver<()>) {
    let mut seen = 0;
    let mut backoff = Duration::ZERO;
    loop {
        if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
            return;
        }
        let Some(e) = export.upgrade() else { return };
        let Some(l) = e.ledger() else { return };
        let now = clock::now();
        let result = (|| {
            if let Some(age) = keep.age {
                let quarter = (age / 4).as_micros().min(i64::MAX as u128) as i64;
                if l.segment_started().is_some_and(|t| now - t >= quarter) {
                    l.seal_segment()?;
                }
            }
            if let Some(k) = l.kept() {
                match k.prune(now) {
                    Ok(Some(p)) => tracing::info!(
                        "export {:?}: data log: deleted segments {}..={} ({} bytes) that --keep-data no longer keeps",
                        e.name(),
                        p.segments.0,
                        p.segments.1,
                        p.freed
                    ),
                    Ok(None) => {}
                    Err(err) => tracing::error!(
                        "export {:?}: data log: could not delete what --keep-data no longer keeps (it keeps growing): {err}",
                        e.name()
                    ),
                }
            }
            if keep.is_none() {
                return Ok(None);
            }
            l.compact(keep, now, false)
        })();
        let more = matches!(&result, Ok(Some(c)) if c.more);
        match result {
            Ok(Some(c)) => {
                backoff = Duration::ZERO;
                tracing::info!(
                    "export {:?}: retention folded journal segments {}..={} (through LSN {}, {}) into the compacted history in {} ms: {} bytes freed, {} blocks' latest changes kept",
                    e.name(),
                    c.segments.0,
                    c.segments.1,
                    c.through_lsn,
                    clock::rfc3339(c.through_time),
                    c.took.as_millis(),
                    c.freed,
                    c.entries
                );
            }
            Ok(None) => backoff = Duration::ZERO,
            Err(err) => {
                // A full disk or a damaged segment: recording goes on, the journal grows, and
                // the operator hears of it once a minute at most.
                backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                tracing::error!(
                    "export {:?}: retention could not compact the ledger (the journal keeps growing; retrying in {}): {err}",
                    e.name(),
                    format!("{} s", backoff.as_secs())
                );
            }
        }
        if more {
            continue;
        } else if backoff.is_zero() {
            seen = l.wait_segment(seen, Duration::from_secs(1));
        } else {
            drop(e);
            if !matches!(
                stopped.recv_timeout(backoff),
                Err(crossbeam_channel::RecvTimeoutError::Timeout)
            ) {
                return;
            }
        }
    }
}
