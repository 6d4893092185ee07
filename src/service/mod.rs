//! The service: one export — a device with its ledger — and the operations NBD requests map
//! to, each following the durability protocol of docs/DESIGN.md (section 3). The server
//! (`crate::server`) parses and replies; this layer decides what is recorded, in what order, and what the device
//! is asked to do:
//!
//! - a change is recorded (its journal frame in the kernel; with `--journal-sync strict`,
//!   durable) before the device write is issued, while the blocks' range lock orders it
//!   against other changes of the same blocks;
//! - a partial-block change reads the rest of the block (read-modify-write) so the ledger
//!   always holds the checksum of the full block;
//! - a failed device write is recorded as failed (contents unknown);
//! - FLUSH syncs the device, then records and syncs a flush record (group commit);
//! - FUA makes the change and its records durable before the reply;
//! - a read of whole blocks with no change in flight is checked against the ledger (online
//!   detection), and with `--on-mismatch error` a stale block is refused with EIO.
//!
//! The files, one job each:
//!
//! - `mod.rs`: [`Export`], its construction ([`Export::new`], [`ExportOptions`],
//!   [`OnMismatch`]) and accessors, the checks every request shares, and [`Export::close`];
//! - `read.rs`: READ with the online check, stale blocks, the hand-off of suspects to
//!   [`detect`], and CACHE;
//! - `write.rs`: WRITE, `write_many`, WRITE_ZEROES, TRIM, FLUSH and FUA;
//! - `error.rs`: [`OpError`], what failed (the server chooses the NBD value it answers);
//! - `counters.rs`: [`Counters`], the FLUSH [`Histogram`] and the open [`Connections`];
//! - beside the request path, each its own thread: [`detect`] (online classification),
//!   [`scrub`], [`alert`] (`--on-finding`) and [`retain`].

pub mod alert;
pub mod detect;
pub mod retain;
pub mod scrub;

mod counters;
mod error;
mod read;
mod write;

pub use counters::{Connection, Connections, Counters, Histogram, FLUSH_BUCKETS};
pub use error::OpError;
pub use write::CHUNK_BLOCKS;

use crate::block::{self, Geometry};
use crate::device::BlockDevice;
use crate::error::Error;
use crate::findings::log::FindingsLog;
use crate::ledger::WriteSession;
use crate::locks::RangeLocks;
use detect::Msg;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// What to do when a read finds a block that does not hold its latest generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMismatch {
    /// Log it and serve the data.
    #[default]
    Log,
    /// Refuse the read with EIO.
    Error,
}

/// One export.
pub struct Export {
    name: String,
    device: Box<dyn BlockDevice>,
    ledger: Option<WriteSession>,
    geo: Geometry,
    read_only: bool,
    on_mismatch: OnMismatch,
    locks: RangeLocks,
    fast_zero_unsupported: AtomicBool,
    findings: Option<FindingsLog>,
    suspects: OnceLock<crossbeam_channel::Sender<Msg>>,
    /// Counters.
    pub counters: Counters,
}

/// How an export is set up.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Export name clients ask for ("" is the default export).
    pub name: String,
    /// Refuse writes.
    pub read_only: bool,
    /// What a stale read does.
    pub on_mismatch: OnMismatch,
}

impl Export {
    /// An export of `device`, recording into `ledger` (a ledger's write session; `None` serves
    /// without recording, for measuring the ledger's cost).
    pub fn new(
        device: Box<dyn BlockDevice>,
        ledger: Option<WriteSession>,
        opts: ExportOptions,
    ) -> Export {
        let geo = match &ledger {
            Some(l) => l.geometry(),
            None => Geometry::new(block::DEFAULT_BLOCK_SIZE, device.size()),
        };
        // Detections are evidence worth keeping, but a findings log that cannot be opened must
        // not keep the disk from being served: the log says so, loudly.
        let findings = ledger
            .as_ref()
            .and_then(|l| match FindingsLog::open(l.dir()) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!("findings will not be kept: {e}");
                    None
                }
            });
        Export {
            name: opts.name,
            device,
            findings,
            suspects: OnceLock::new(),
            ledger,
            geo,
            read_only: opts.read_only,
            on_mismatch: opts.on_mismatch,
            locks: RangeLocks::default(),
            fast_zero_unsupported: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    /// Why the device can no longer be used, if it cannot (see [`BlockDevice::failure`]).
    pub fn device_failure(&self) -> Option<String> {
        self.device.failure()
    }

    /// The device's name (path or URI), for messages.
    pub fn device_name(&self) -> &str {
        self.device.name()
    }

    /// Export name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a log field: none for the unnamed export, so that a line does not end in an
    /// empty `export=`.
    pub fn log_name(&self) -> Option<&str> {
        (!self.name.is_empty()).then_some(self.name.as_str())
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.geo.device_size
    }

    /// The ledger's block size (the preferred I/O size advertised to clients).
    pub fn block_size(&self) -> u32 {
        self.geo.block_size
    }

    /// The device's smallest unit of I/O (advertised to clients as the minimum block size).
    pub fn min_io(&self) -> u32 {
        self.device.min_io()
    }

    /// Whether small writes may run on the connection's thread ([`BlockDevice::quick_writes`]).
    pub fn quick_writes(&self) -> bool {
        self.device.quick_writes()
    }

    /// Read-only export.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The findings log (with the findings still open), if recording.
    pub fn findings_log(&self) -> Option<&FindingsLog> {
        self.findings.as_ref()
    }

    /// The ledger's write session, if recording (it dereferences to the ledger).
    pub fn ledger(&self) -> Option<&WriteSession> {
        self.ledger.as_ref()
    }

    // The checks and the error count shared by the read and the write path.

    /// The range must lie within the export; `writing` says the request would write data
    /// there (WRITE, WRITE_ZEROES), which the client is told differently (see [`OpError`]).
    fn check_range(&self, offset: u64, len: u64, writing: bool) -> Result<(), OpError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(OpError::OutOfRange {
                offset,
                len,
                size: self.size(),
                writing,
            }),
        }
    }

    fn check_writable(&self) -> Result<(), OpError> {
        if self.read_only {
            Err(OpError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn fail<T>(&self, r: Result<T, OpError>) -> Result<T, OpError> {
        if r.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Blocks wholly inside the byte range (a partial last block counts when the range reaches
    /// the end of the device).
    fn whole_blocks(&self, offset: u64, len: u64) -> Range<u64> {
        let bs = self.geo.block_size as u64;
        let end = offset + len;
        let first = offset.div_ceil(bs);
        let last = if end == self.size() {
            self.geo.block_count()
        } else {
            end / bs
        };
        first..last.max(first)
    }

    /// Ends the export cleanly: device synced, session closed, state table checkpointed.
    pub fn close(self) -> crate::Result<()> {
        match self.ledger {
            Some(l) => {
                let dev = self.device;
                l.close(|| dev.flush())
            }
            None => self
                .device
                .flush()
                .map_err(|e| Error::io(self.device.name(), "fdatasync at shutdown", e)),
        }
    }
}
