//! Where the service's log lines go: a bounded queue drained by one writer thread. The I/O path
//! only formats a line and offers it to the queue; it never waits for stderr. A log that
//! cannot keep up (a pipe nobody reads), is closed (the reader died), or fails (a full disk)
//! loses lines, never requests: every line that could not be written is counted
//! ([`dropped`]), in the metrics and in the shutdown line. Commands other than `serve` log
//! straight to stderr and ignore failures the same way.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 4096;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static SENDER: OnceLock<Sender<Vec<u8>>> = OnceLock::new();

/// Log lines lost so far: the queue was full, or writing them failed.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A `tracing_subscriber` writer factory: each event becomes one queued line.
#[derive(Clone, Copy, Debug)]
pub struct QueuedStderr;

impl QueuedStderr {
    /// Starts the writer thread on stderr (once; later calls reuse it).
    pub fn start() -> QueuedStderr {
        SENDER.get_or_init(|| {
            let (tx, rx) = bounded(QUEUE_LINES);
            // Without the thread, lines would queue for ever: count them all as dropped.
            if std::thread::Builder::new()
                .name("log".into())
                .spawn(move || drain(rx))
                .is_err()
            {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            tx
        });
        QueuedStderr
    }

    /// Waits, at most `deadline`, until every queued line has been written or dropped (at
    /// exit, so that the last lines are not lost to a quick `exit`).
    pub fn flush(deadline: Duration) {
        let until = Instant::now() + deadline;
        while WRITTEN.load(Ordering::Relaxed) + DROPPED_IN_WRITER.load(Ordering::Relaxed)
            < QUEUED.load(Ordering::Relaxed)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Lines taken off the queue that failed to write (also counted in [`DROPPED`]).
static DROPPED_IN_WRITER: AtomicU64 = AtomicU64::new(0);

fn drain(rx: Receiver<Vec<u8>>) {
    let mut err = std::io::stderr();
    for line in rx {
        match err.write_all(&line) {
            Ok(()) => WRITTEN.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                DROPPED_IN_WRITER.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// One log line being formatted; offered to the queue when dropped.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        let sent = SENDER.get().map(|tx| tx.try_send(line));
        match sent {
            Some(Ok(())) => {
                QUEUED.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// Straight to stderr, for the short-lived commands: a failed write is counted, never raised.
#[derive(Clone, Copy, Debug)]
pub struct PlainStderr;

/// The writer [`PlainStderr`] hands out.
pub struct PlainLine;

impl Write for PlainLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for PlainStderr {
    type Writer = PlainLine;
    fn make_writer(&'a self) -> PlainLine {
        PlainLine
    }
}
