//! The service: one export — a device with its ledger — and the operations NBD requests map
//! to, each following the durability protocol of docs/DESIGN.md (section 3). The NBD layer
//! parses and replies; this layer decides what is recorded, in what order, and what the device
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

pub mod alert;
pub mod detect;
pub mod locks;
pub mod retain;
pub mod scrub;

use crate::block::{self, Geometry};
use crate::device::{BlockDevice, TrimOutcome};
use crate::error::Error;
use crate::ledger::state::BlockState;
use crate::ledger::{Ledger, NewContents, Ticket};
use crate::nbd::errno::{self, errno_of};
use crate::verify::classify::Found;
use crate::verify::findings::FindingsLog;
use detect::{Msg, Suspect};
use locks::RangeLocks;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// A failed operation: the NBD error value for the client (from [`crate::nbd::errno`]) and a
/// sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// NBD error value.
    pub errno: u32,
    /// What happened, for the log.
    pub why: String,
}

impl OpError {
    fn new(errno: u32, why: impl Into<String>) -> Self {
        OpError {
            errno,
            why: why.into(),
        }
    }
}

fn from_io(e: &io::Error, what: &str) -> OpError {
    OpError::new(errno_of(e), format!("{what}: {e}"))
}

fn from_ledger(e: Error) -> OpError {
    // A ledger that cannot record must refuse the write rather than let data through
    // unrecorded; a full ledger disk is ENOSPC for the client, anything else EIO.
    let code = match e.raw_os_error() {
        Some(os) if errno_of(&io::Error::from_raw_os_error(os)) == errno::ENOSPC => errno::ENOSPC,
        _ => errno::EIO,
    };
    OpError::new(code, format!("ledger: {e}"))
}

/// Most blocks one zeroing or trim records at once.
pub const CHUNK_BLOCKS: u64 = 1 << 16;

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

/// One export.
pub struct Export {
    name: String,
    device: Box<dyn BlockDevice>,
    ledger: Option<Ledger>,
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
    /// An export of `device`, recording into `ledger` (which must be open for writing with a
    /// session begun; `None` serves without recording, for measuring the ledger's cost).
    pub fn new(
        device: Box<dyn BlockDevice>,
        ledger: Option<Ledger>,
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

    /// Hands a stale block to the detection thread, if one runs (see [`detect::Detector`]).
    /// A client's read never waits for it (a full queue drops and counts the block); the
    /// scrubber, which has time, waits for room.
    fn suspect(&self, s: Suspect) {
        if let Some(tx) = self.suspects.get() {
            let sent = if s.source == "scrub" {
                tx.send(Msg::Suspect(s)).is_ok()
            } else {
                tx.try_send(Msg::Suspect(s)).is_ok()
            };
            if !sent {
                self.counters
                    .suspects_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A verification of `block` passed: its open finding, if any, is cleared.
    fn passed(&self, block: u64, source: &str) {
        if let Some(f) = &self.findings {
            if f.any_open() {
                if let Err(e) = f.cleared(source, block) {
                    tracing::error!("{e}");
                }
            }
        }
    }

    /// The ledger, if recording.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    fn check_range(&self, offset: u64, len: u64, beyond: u32) -> Result<(), OpError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(OpError::new(
                beyond,
                format!(
                    "request at offset {offset} length {len} goes beyond the export's {} bytes",
                    self.size()
                ),
            )),
        }
    }

    fn check_writable(&self) -> Result<(), OpError> {
        if self.read_only {
            Err(OpError::new(errno::EPERM, "write to a read-only export"))
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

    /// Reads `len` bytes at `offset` into `buf` and checks whole blocks against the ledger.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OpError> {
        let r = self.read_inner(offset, buf, false).map(|_| ());
        self.fail(r)
    }

    /// Like [`Export::read`], but only if the data can be read without waiting for the device;
    /// `Ok(false)` means nothing was done and the read must be made with [`Export::read`].
    pub fn read_nowait(&self, offset: u64, buf: &mut [u8]) -> Result<bool, OpError> {
        let r = self.read_inner(offset, buf, true);
        self.fail(r)
    }

    fn read_inner(&self, offset: u64, buf: &mut [u8], nowait: bool) -> Result<bool, OpError> {
        let len = buf.len() as u64;
        self.check_range(offset, len, errno::EINVAL)?;
        let whole = self.whole_blocks(offset, len);
        // A change in flight over these blocks may have recorded its new contents before its
        // device write: the read cannot be judged (it is checked again on later reads).
        // The states first, then the locks: a change records its new state while holding its
        // lock, so states read before the locks were seen idle are on the device already.
        // (Checking the locks first left a window: a change locking and recording in between,
        // then completing during the read, looked like a stale block.)
        let before: Vec<BlockState> = match &self.ledger {
            Some(l) => {
                let states: Vec<BlockState> = whole.clone().map(|b| l.state(b)).collect();
                if self.locks.busy(&whole) {
                    Vec::new()
                } else {
                    states
                }
            }
            None => Vec::new(),
        };
        let what = || format!("reading {len} bytes at offset {offset}");
        if nowait {
            if !self
                .device
                .read_at_nowait(buf, offset)
                .map_err(|e| from_io(&e, &what()))?
            {
                return Ok(false);
            }
        } else {
            self.device
                .read_at(buf, offset)
                .map_err(|e| from_io(&e, &what()))?;
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        if let (Some(l), false) = (&self.ledger, before.is_empty()) {
            let bs = self.geo.block_size as u64;
            for (b, expected) in whole.zip(before) {
                let BlockState::Tracked { crc, generation } = expected else {
                    continue;
                };
                let start = (self.geo.offset(b) - offset) as usize;
                let data = &buf[start..start + self.geo.bytes_in(b)];
                let found = block::checksum_padded(data, bs as u32);
                if found == crc {
                    self.passed(b, "read");
                    continue;
                }
                // A change that began after our snapshot, or is in flight, explains it.
                if l.state(b) != expected || self.locks.busy(&(b..b + 1)) {
                    continue;
                }
                self.suspect(Suspect {
                    block: b,
                    expected,
                    found: Found::of(found, data, l.zero_crc()),
                    source: "read",
                });
                self.mismatch(b, generation, "read")?;
            }
        }
        Ok(true)
    }

    fn mismatch(&self, block: u64, generation: u32, how: &str) -> Result<(), OpError> {
        let n = self
            .counters
            .read_mismatches
            .fetch_add(1, Ordering::Relaxed);
        // A device restored from an old snapshot makes every read stale: the first ones are
        // logged each, then one in a thousand (the metrics and the findings log count them all).
        if n < 100 || n % 1000 == 0 {
            tracing::warn!(
                export = self.log_name(),
                "block {block} (offset {}) does not hold generation {generation} on {how}: a lost or misplaced write ({} stale reads so far; run `lostwrite verify` after stopping the service)",
                self.geo.offset(block),
                n + 1
            );
        }
        if self.on_mismatch == OnMismatch::Error && how == "read" {
            return Err(OpError::new(
                errno::EIO,
                format!("block {block} is stale; refusing to serve it (--on-mismatch error)"),
            ));
        }
        Ok(())
    }

    /// Splits a byte range at multiples of [`CHUNK_BLOCKS`] blocks, so one zeroing or trim of
    /// a whole device is recorded and done a piece at a time (bounded memory and frames).
    fn chunks(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
        let step = CHUNK_BLOCKS * self.geo.block_size as u64;
        let end = offset + len;
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let next = ((at / step + 1) * step).min(end);
            let piece = (at, next - at);
            at = next;
            Some(piece)
        })
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

    /// The checksum of every block of `blocks` after the change: `fill` overlays the part
    /// `[lo, hi)` of a block (device offsets) with the new contents. Partial blocks are read
    /// from the device first (and checked against the ledger on the way).
    fn new_contents(
        &self,
        blocks: Range<u64>,
        offset: u64,
        len: u64,
        zero: bool,
        data: Option<&[u8]>,
    ) -> Result<Vec<NewContents>, OpError> {
        let bs = self.geo.block_size as usize;
        let end = offset + len;
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut tmp = Vec::new();
        for b in blocks {
            let start = self.geo.offset(b);
            let on_dev = self.geo.bytes_in(b) as u64;
            let (lo, hi) = (offset.max(start), end.min(start + on_dev));
            let slice =
                |lo: u64, hi: u64| data.map(|d| &d[(lo - offset) as usize..(hi - offset) as usize]);
            if lo == start && hi == start + on_dev {
                out.push(match (zero, slice(lo, hi)) {
                    (true, _) => NewContents::Zero,
                    (false, Some(d)) => NewContents::Crc(block::checksum_padded(d, bs as u32)),
                    (false, None) => unreachable!("a write carries data"),
                });
                continue;
            }
            tmp.clear();
            tmp.resize(bs, 0);
            self.device
                .read_at(&mut tmp[..on_dev as usize], start)
                .map_err(|e| from_io(&e, &format!("reading block {b} to merge a partial write")))?;
            if let Some(l) = &self.ledger {
                // Counted and logged only: this write gives the block a new generation at
                // once, so there is nothing left for the detector to classify it against.
                if let BlockState::Tracked { crc, generation } = l.state(b) {
                    if block::checksum(&tmp) != crc {
                        self.mismatch(b, generation, "read-modify-write")?;
                    }
                }
            }
            let part = &mut tmp[(lo - start) as usize..(hi - start) as usize];
            match slice(lo, hi) {
                Some(d) if !zero => part.copy_from_slice(d),
                _ => part.fill(0),
            }
            out.push(NewContents::Crc(block::checksum(&tmp)));
        }
        Ok(out)
    }

    fn record(&self, first: u64, new: &[NewContents]) -> Result<Option<Ticket>, OpError> {
        match &self.ledger {
            Some(l) => l.record_contents(first, new).map(Some).map_err(from_ledger),
            None => Ok(None),
        }
    }

    /// Tells the ledger how the device I/O ended; returns the device error, if any.
    fn finish(
        &self,
        ticket: &Option<Ticket>,
        r: io::Result<()>,
        what: impl FnOnce() -> String,
    ) -> Result<(), OpError> {
        if let (Some(l), Some(t)) = (&self.ledger, ticket) {
            l.complete(t, r.is_ok()).map_err(from_ledger)?;
        }
        r.map_err(|e| from_io(&e, &what()))
    }

    /// The shape of every change: for each piece of the range (see [`Export::chunks`]), hold its
    /// blocks, record the change and issue the device I/O (`piece`, which returns the ticket
    /// and the I/O's outcome), then report the outcome to the ledger; with FUA, make it all
    /// durable (`device_durable`: the I/O itself was synchronous).
    fn change(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        device_durable: bool,
        what: &str,
        piece: impl Fn(Range<u64>, u64, u64) -> Result<(Option<Ticket>, io::Result<()>), OpError>,
    ) -> Result<(), OpError> {
        let mut tickets = Vec::new();
        for (off, n) in self.chunks(offset, len) {
            let blocks = self.geo.blocks_of(off, n);
            let _g = self.locks.lock(blocks.clone());
            let (ticket, r) = piece(blocks, off, n)?;
            self.finish(&ticket, r, || format!("{what} {n} bytes at offset {off}"))?;
            tickets.push(ticket);
        }
        if fua {
            self.durable(&tickets, device_durable)?;
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// FUA: makes a completed change durable with its records. `device_durable` says the
    /// device I/O itself was synchronous (an O_DSYNC write); otherwise the device is synced.
    fn durable(&self, tickets: &[Option<Ticket>], device_durable: bool) -> Result<(), OpError> {
        if !device_durable {
            if let Err(e) = self.device.flush() {
                if let Some(l) = &self.ledger {
                    l.poison_session(format!("device fdatasync for a FUA request failed: {e}"));
                }
                return Err(from_io(&e, "fdatasync for a FUA request"));
            }
        }
        if let Some(l) = &self.ledger {
            for t in tickets.iter().flatten() {
                l.record_fua(t).map_err(from_ledger)?;
            }
        }
        Ok(())
    }

    /// WRITE: `data` at `offset`; with `fua` durable (with its records) before returning.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), OpError> {
        let r = self.write_inner(offset, data, fua);
        self.fail(r)
    }

    fn write_inner(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), OpError> {
        self.check_writable()?;
        let len = data.len() as u64;
        self.check_range(offset, len, errno::ENOSPC)?;
        if len == 0 {
            return Ok(());
        }
        // An O_DSYNC write is durable when it returns; only its records need syncing for FUA.
        self.change(offset, len, fua, fua, "writing", |blocks, off, n| {
            let piece = &data[(off - offset) as usize..(off - offset + n) as usize];
            let new = self.new_contents(blocks.clone(), off, n, false, Some(piece))?;
            Ok((
                self.record(blocks.start, &new)?,
                self.device.write_at(piece, off, fua),
            ))
        })?;
        self.counters
            .written_bytes
            .fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Several WRITEs without FUA, read together from one connection: the outcome of each, in
    /// order. Whole-block writes that do not overlap are recorded with one journal append
    /// ([`Ledger::record_contents_many`]); anything else runs one write at a time.
    pub fn write_many(&self, writes: &[(u64, &[u8])]) -> Vec<Result<(), OpError>> {
        let one_by_one = || -> Vec<Result<(), OpError>> {
            writes
                .iter()
                .map(|&(off, data)| self.write(off, data, false))
                .collect()
        };
        let Some(l) = self
            .ledger
            .as_ref()
            .filter(|_| writes.len() > 1 && !self.read_only)
        else {
            return one_by_one();
        };
        let bs = self.geo.block_size as u64;
        let step = CHUNK_BLOCKS * bs;
        let mut ranges: Vec<Range<u64>> = Vec::with_capacity(writes.len());
        for &(off, data) in writes {
            let len = data.len() as u64;
            let fits = len > 0
                && off % bs == 0
                && len % bs == 0
                && self.check_range(off, len, errno::ENOSPC).is_ok()
                && off / step == (off + len - 1) / step;
            if !fits {
                return one_by_one();
            }
            ranges.push(self.geo.blocks_of(off, len));
        }
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_unstable_by_key(|&i| ranges[i].start);
        if order
            .windows(2)
            .any(|w| ranges[w[1]].start < ranges[w[0]].end)
        {
            return one_by_one();
        }
        // Held in block order, so two connections batching at once cannot deadlock.
        let _guards: Vec<_> = order
            .iter()
            .map(|&i| self.locks.lock(ranges[i].clone()))
            .collect();
        let mut news = Vec::with_capacity(writes.len());
        for (&(off, data), r) in writes.iter().zip(&ranges) {
            match self.new_contents(r.clone(), off, data.len() as u64, false, Some(data)) {
                Ok(n) => news.push(n),
                Err(e) => return vec![self.fail(Err(e)); writes.len()],
            }
        }
        let items: Vec<(u64, &[NewContents])> = ranges
            .iter()
            .zip(&news)
            .map(|(r, n)| (r.start, n.as_slice()))
            .collect();
        let tickets = match l.record_contents_many(&items) {
            Ok(t) => t,
            Err(e) => {
                let e = from_ledger(e);
                return writes.iter().map(|_| self.fail(Err(e.clone()))).collect();
            }
        };
        writes
            .iter()
            .zip(tickets)
            .map(|(&(off, data), t)| {
                let r = self.device.write_at(data, off, false);
                let n = data.len();
                let r = self.finish(&Some(t), r, || format!("writing {n} bytes at offset {off}"));
                if r.is_ok() {
                    self.counters.writes.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .written_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                self.fail(r)
            })
            .collect()
    }

    /// WRITE_ZEROES: `may_trim` unless NO_HOLE; `fast_only` for FAST_ZERO.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), OpError> {
        let r = self.write_zeroes_inner(offset, len, may_trim, fast_only, fua);
        self.fail(r)
    }

    fn write_zeroes_inner(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), OpError> {
        self.check_writable()?;
        self.check_range(offset, len, errno::ENOSPC)?;
        if len == 0 {
            return Ok(());
        }
        // Refused before anything is recorded where the device says it cannot (an NBD upstream
        // without FAST_ZERO); a file learns it on its first attempt.
        if fast_only
            && (self.fast_zero_unsupported.load(Ordering::Relaxed)
                || self.device.can_fast_zero() == Some(false))
        {
            return Err(OpError::new(
                errno::ENOTSUP,
                "fast zeroing is not supported here",
            ));
        }
        self.change(offset, len, fua, false, "zeroing", |blocks, off, n| {
            let new = self.new_contents(blocks.clone(), off, n, true, None)?;
            let ticket = self.record(blocks.start, &new)?;
            let r = self.device.write_zeroes(off, n, may_trim, fast_only);
            if fast_only
                && r.as_ref().err().is_some_and(|e| {
                    e.raw_os_error() == Some(nix::libc::ENOTSUP)
                        || e.kind() == io::ErrorKind::Unsupported
                })
            {
                self.fast_zero_unsupported.store(true, Ordering::Relaxed);
            }
            Ok((ticket, r))
        })
    }

    /// TRIM: discards the whole blocks of the range (partial blocks are left alone: trims are
    /// advisory). Where a trim is known to read back as zeroes (a hole in a file) it is
    /// recorded as zeroing those blocks; otherwise they become untracked until written.
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), OpError> {
        let r = self.trim_inner(offset, len, fua);
        self.fail(r)
    }

    fn trim_inner(&self, offset: u64, len: u64, fua: bool) -> Result<(), OpError> {
        self.check_writable()?;
        self.check_range(offset, len, errno::EINVAL)?;
        let whole = self.whole_blocks(offset, len);
        if whole.is_empty() {
            return Ok(());
        }
        let (start, end) = (
            self.geo.offset(whole.start),
            (self.geo.offset(whole.end)).min(self.size()),
        );
        let zeroes = self.device.trim_zeroes();
        self.change(
            start,
            end - start,
            fua,
            false,
            "trimming",
            |whole, off, n| {
                let count = whole.end - whole.start;
                let ticket = match (&self.ledger, zeroes) {
                    (None, _) => None,
                    (Some(_), true) => {
                        self.record(whole.start, &vec![NewContents::Zero; count as usize])?
                    }
                    (Some(l), false) => {
                        Some(l.record_trim(whole.start, count).map_err(from_ledger)?)
                    }
                };
                let r = match self.device.trim(off, n) {
                    Ok(TrimOutcome::Zeroed) => Ok(()),
                    // The record says zeroes; make it true.
                    Ok(_) if zeroes => self.device.write_zeroes(off, n, true, false),
                    // Untracked until written, whatever the device kept.
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                Ok((ticket, r))
            },
        )
    }

    /// FLUSH: every change completed before this call is durable, device and ledger.
    pub fn flush(&self) -> Result<(), OpError> {
        let started = std::time::Instant::now();
        let r = match &self.ledger {
            Some(l) => l.flush(|| self.device.flush()).map_err(|e| {
                let io_errno = e.raw_os_error();
                let mut o = from_ledger(e);
                if io_errno.is_some() {
                    o.errno = errno::EIO;
                }
                o
            }),
            None => self.device.flush().map_err(|e| from_io(&e, "fdatasync")),
        };
        if r.is_ok() {
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.counters.flush_duration.observe(started.elapsed());
        }
        self.fail(r)
    }

    /// CACHE: a hint that the range will be read.
    pub fn cache(&self, offset: u64, len: u64) -> Result<(), OpError> {
        self.check_range(offset, len, errno::EINVAL)?;
        self.device.will_need(offset, len);
        Ok(())
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
