//! What an export counts for an operator and the metrics endpoint: [`Counters`], updated with
//! relaxed atomics on the request path, and the FLUSH duration [`Histogram`] with its fixed
//! [`FLUSH_BUCKETS`]. `crate::metrics` renders them.

use std::sync::atomic::{AtomicU64, Ordering};

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
