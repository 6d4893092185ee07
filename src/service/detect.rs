//! Online detection, off the I/O path: a block found stale on a read or by the scrubber is sent
//! here as a [`Suspect`]; this thread classifies it against the journal as `verify` would,
//! records it in the findings log, counts it by kind, and hands it to the alert hook. The read
//! that found it has already been answered (or refused with `--on-mismatch error`).

use super::Export;
use crate::findings::classify::Found;
use crate::findings::{Finding, Source};
use crate::ledger::state::BlockState;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Suspects queued before the read path starts dropping them (and counting the drops).
pub const QUEUE: usize = 4096;

/// A block that did not hold what the ledger expected when it was read.
#[derive(Clone, Copy, Debug)]
pub struct Suspect {
    /// The block.
    pub block: u64,
    /// What the ledger expected when it was read.
    pub expected: BlockState,
    /// What was found.
    pub found: Found,
    /// What found it: a read or the scrubber.
    pub source: Source,
}

pub(super) enum Msg {
    Suspect(Suspect),
    Finish,
}

/// Receives each classified finding (the alert hook, a test).
pub type Sink = Box<dyn Fn(&str, &Finding) + Send>;

/// The detection thread of one export.
pub struct Detector {
    tx: Sender<Msg>,
    handle: Option<JoinHandle<()>>,
}

impl Detector {
    /// Starts detection for `export` (which then sends its suspects here) and calls `sink`
    /// with every new finding.
    pub fn start(export: &Arc<Export>, sink: Option<Sink>) -> Detector {
        let (tx, rx) = bounded(QUEUE);
        // A second detector on one export would be a programming error; the first one wins.
        let _ = export.suspects.set(tx.clone());
        let weak = Arc::downgrade(export);
        let handle = std::thread::Builder::new()
            .name(format!("detect {}", export.name()))
            .spawn(move || run(weak, rx, sink))
            .expect("spawning the detection thread");
        Detector {
            tx,
            handle: Some(handle),
        }
    }

    /// Classifies everything queued so far, then stops.
    pub fn finish(mut self) {
        let _ = self.tx.send(Msg::Finish);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.tx.send(Msg::Finish);
            let _ = h.join();
        }
    }
}

/// How often, at most, dropped stale reads are logged and written to the findings log.
const DROPS_EVERY: Duration = Duration::from_secs(10);

/// Stale reads the read path dropped, and what has been said of them so far.
struct Drops {
    said: u64,
    last: Option<Instant>,
}

impl Drops {
    /// Logs and records the stale reads dropped since the last time, at most once per
    /// [`DROPS_EVERY`] unless `now` (at the end, everything is said).
    fn tell(&mut self, e: &Export, now: bool) {
        let total = e.counters.suspects_dropped.load(Ordering::Relaxed);
        let due = self.last.is_none_or(|t| t.elapsed() >= DROPS_EVERY);
        if total <= self.said || !(now || due) {
            return;
        }
        let n = total - self.said;
        tracing::warn!(
            export = e.log_name(),
            "{n} stale reads were not classified (the detection queue of {QUEUE} was full): \
             blocks are stale that no finding names; run `lostwrite verify` to judge every block"
        );
        if let Some(log) = e.findings_log() {
            if let Err(err) = log.unclassified(Source::Read, n) {
                tracing::error!("{err}");
            }
        }
        self.said = total;
        self.last = Some(Instant::now());
    }
}

/// New findings of one incident logged one line each; past these, they are summed up.
const LOUD: u64 = 20;

/// How often, at most, the findings past the first [`LOUD`] of an incident are summed up in
/// one line while the incident goes on.
const QUIET_EVERY: Duration = Duration::from_secs(10);

/// What the log has said of the current incident: a run of new findings with no second
/// without one. Counted across batches, because how many suspects a batch gathers depends on
/// how the threads are scheduled: a per-batch limit let a loaded machine log hundreds of
/// lines for one restored device.
struct Quiet {
    loud: u64,
    quiet: u64,
    last: Option<Instant>,
}

impl Quiet {
    /// Sums up the findings not logged one by one, at most once per [`QUIET_EVERY`] unless
    /// `now` (the incident is over, or the export closes).
    fn tell(&mut self, e: &Export, now: bool) {
        let due = self.last.is_none_or(|t| t.elapsed() >= QUIET_EVERY);
        if self.quiet == 0 || !(now || due) {
            return;
        }
        tracing::warn!(
            export = e.log_name(),
            "{} more new findings in this batch (since the last such line; all in findings.jsonl and the metrics)",
            self.quiet
        );
        self.quiet = 0;
        self.last = Some(Instant::now());
    }

    /// A second without a new suspect: the incident is over; the next one is logged afresh.
    fn over(&mut self, e: &Export) {
        self.tell(e, true);
        self.loud = 0;
        self.last = None;
    }
}

fn run(export: Weak<Export>, rx: Receiver<Msg>, sink: Option<Sink>) {
    let mut drops = Drops {
        said: 0,
        last: None,
    };
    let mut quiet = Quiet {
        loud: 0,
        quiet: 0,
        last: None,
    };
    let tell = |drops: &mut Drops, quiet: &mut Quiet, now: bool| {
        if let Some(e) = export.upgrade() {
            if now {
                quiet.over(&e);
            }
            drops.tell(&e, now);
        }
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Msg::Suspect(s)) => s,
            Ok(Msg::Finish) => return tell(&mut drops, &mut quiet, true),
            Err(RecvTimeoutError::Timeout) => {
                if export.strong_count() == 0 {
                    return;
                }
                if let Some(e) = export.upgrade() {
                    quiet.over(&e);
                }
                tell(&mut drops, &mut quiet, false);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return tell(&mut drops, &mut quiet, true),
        };
        // One pass over the journal classifies a whole batch.
        let mut batch = vec![first];
        let mut finish = false;
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(Msg::Suspect(s)) => batch.push(s),
                Ok(Msg::Finish) => {
                    finish = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let Some(e) = export.upgrade() else { return };
        classify(&e, batch, sink.as_ref(), &mut quiet);
        if finish {
            quiet.over(&e);
        } else {
            quiet.tell(&e, false);
        }
        drops.tell(&e, finish);
        drop(e);
        if finish {
            return;
        }
    }
}

fn classify(e: &Export, mut batch: Vec<Suspect>, sink: Option<&Sink>, quiet: &mut Quiet) {
    let Some(ledger) = e.ledger() else { return };
    // The newest suspect of each block is the one to judge.
    batch.reverse();
    batch.sort_by_key(|s| s.block);
    batch.dedup_by_key(|s| s.block);
    // A block written since it was found stale holds something new: nothing to judge.
    batch.retain(|s| ledger.state(s.block) == s.expected);
    if batch.is_empty() {
        return;
    }
    let mismatches: Vec<(u64, Found)> = batch.iter().map(|s| (s.block, s.found)).collect();
    let findings = match crate::findings::classify_all(ledger, &mismatches) {
        Ok(f) => f,
        Err(err) => {
            tracing::error!(
                export = e.log_name(),
                "classifying {} stale blocks failed: {err}",
                mismatches.len()
            );
            return;
        }
    };
    // One write and one sync for the whole batch: a storm of stale blocks must not cost a
    // sync each.
    let items: Vec<(Source, &Finding)> = findings
        .iter()
        .zip(&batch)
        .map(|(f, s)| (s.source, f))
        .collect();
    let fresh = match e.findings_log() {
        Some(log) => log.found_all(&items).unwrap_or_else(|err| {
            tracing::error!("{err}");
            vec![true; items.len()]
        }),
        None => vec![true; items.len()],
    };
    for ((f, s), new) in findings.iter().zip(&batch).zip(fresh) {
        if !new {
            tracing::debug!(
                export = e.log_name(),
                "block {} is still {} ({})",
                f.block,
                f.kind.name(),
                s.source
            );
            continue;
        }
        e.counters.findings[f.kind as usize].fetch_add(1, Ordering::Relaxed);
        // A whole device gone stale is a few lines in the log, not one per block: the
        // findings log and the metrics have every one.
        if quiet.loud >= LOUD {
            quiet.quiet += 1;
            if let Some(sink) = sink {
                sink(e.name(), f);
            }
            continue;
        }
        quiet.loud += 1;
        tracing::warn!(
            export = e.log_name(),
            "finding ({}): block {} (offset {}) is {}: {}",
            s.source,
            f.block,
            f.offset,
            f.kind.name(),
            f.detail()
        );
        if let Some(sink) = sink {
            sink(e.name(), f);
        }
    }
}
