//! What an export counts for an operator and the metrics endpoint: [`Counters`], updated with
//! relaxed atomics on the request path, the FLUSH duration [`Histogram`] with its fixed
//! [`FLUSH_BUCKETS`], and the [`Connections`] open on the export now (a registry the server
//! touches when a client connects and when it leaves, never per request). `crate::metrics`
//! renders them.

use crate::clock::Micros;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters an operator (and the metrics endpoint) can read.
#[derive(Default, Debug)]
pub struct Counters {
    /// Write requests (WRITE, WRITE_ZEROES, TRIM) completed.
    pub writes: AtomicU64,
    /// Bytes written by WRITE.
    pub written_bytes: AtomicU64,
    /// Read requests completed.
    pub reads: AtomicU64,
    /// FLUSH requests completed.
    pub flushes: AtomicU64,
    /// Blocks found stale on read.
    pub read_mismatches: AtomicU64,
    /// Findings classified, by kind (indexed by `Kind as usize`, in `Kind::ALL` order).
    pub findings: [AtomicU64; 6],
    /// Stale blocks not classified because the detection queue was full.
    pub suspects_dropped: AtomicU64,
    /// Blocks the scrubber has read and checked.
    pub scrub_blocks: AtomicU64,
    /// Where the scrubber's current pass stands (a block number).
    pub scrub_position: AtomicU64,
    /// Completed scrub passes.
    pub scrub_passes: AtomicU64,
    /// Connections in transmission on this export.
    pub clients: AtomicU64,
    /// Time each FLUSH took, device and ledger.
    pub flush_duration: Histogram,
    /// Requests that failed.
    pub errors: AtomicU64,
    /// When the last FLUSH completed (0: none since the export opened).
    pub last_flush: AtomicI64,
    /// How long the last FLUSH took, in nanoseconds.
    pub last_flush_nanos: AtomicU64,
    /// The connections in transmission on this export now.
    pub connections: Connections,
}

/// The connections in transmission on one export. A lock taken when a client connects, when
/// it leaves and when someone asks: the request path never touches it.
#[derive(Default, Debug)]
pub struct Connections(Mutex<BTreeMap<u64, Arc<Connection>>>);

impl Connections {
    /// Registers a connection that has entered transmission.
    pub fn add(&self, c: Arc<Connection>) {
        self.lock().insert(c.id, c);
    }

    /// Forgets connection `id` (its client left).
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The connections open now, oldest first.
    pub fn list(&self) -> Vec<Arc<Connection>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client connection in transmission, as `status` shows it. Its figures are stored by the
/// connection's own reader thread (plain stores on a line no other thread writes).
#[derive(Debug)]
pub struct Connection {
    /// The server's number for the connection (as its log lines name it).
    pub id: u64,
    /// Who is on the other end: a TCP address, or `unix socket`.
    pub peer: String,
    /// When it entered transmission.
    pub connected: Micros,
    /// Requests read on it.
    pub requests: AtomicU64,
    /// Bytes clients asked to read (READ lengths).
    pub read_bytes: AtomicU64,
    /// Bytes clients sent to write (WRITE payloads).
    pub written_bytes: AtomicU64,
}

impl Connection {
    /// A connection from `peer` that enters transmission now.
    pub fn new(id: u64, peer: String) -> Connection {
        Connection {
            id,
            peer,
            connected: crate::clock::now(),
            requests: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        }
    }
}

/// Upper bounds (seconds) of the FLUSH duration histogram's buckets; a last one is +Inf.
pub const FLUSH_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    pub buckets: [AtomicU64; FLUSH_BUCKETS.len() + 1],
    /// Sum of all observations, in nanoseconds.
    pub sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = FLUSH_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(FLUSH_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }
}
