//! The write path of an [`Export`]: WRITE, a batch of WRITEs (`write_many`), WRITE_ZEROES,
//! TRIM and FLUSH, with FUA. Every change takes one shape (`change`): for each piece of the
//! range (`chunks`), lock its blocks, compute their new checksums (`new_contents`, which reads
//! the rest of a partial block), record them (`record`), issue the device I/O, and report its
//! outcome to the ledger (`finish`); FUA then makes it durable with its records (`durable`).

use super::error::OpError;
use super::Export;
use crate::block;
use crate::device::TrimOutcome;
use crate::ledger::state::BlockState;
use crate::ledger::{NewContents, Ticket};
use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;

/// Most blocks one zeroing or trim records at once.
pub const CHUNK_BLOCKS: u64 = 1 << 16;

impl Export {
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
        mut merged: Option<&mut Vec<u8>>,
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
                if let (Some(m), Some(d)) = (merged.as_deref_mut(), slice(lo, hi)) {
                    m.extend_from_slice(d);
                }
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
                .map_err(|e| {
                    OpError::device(e, format!("reading block {b} to merge a partial write"))
                })?;
            if let Some(l) = &self.ledger {
                // Counted and logged only: this write gives the block a new generation at
                // once, so there is nothing left for the detector to classify it against.
                if let BlockState::Tracked { crc, generation } = l.state(b) {
                    if block::checksum(&tmp) != crc {
                        self.mismatch(b, generation, crate::findings::Source::ReadModifyWrite)?;
                    }
                }
            }
            let part = &mut tmp[(lo - start) as usize..(hi - start) as usize];
            match slice(lo, hi) {
                Some(d) if !zero => part.copy_from_slice(d),
                _ => part.fill(0),
            }
            if let Some(m) = merged.as_deref_mut() {
                m.extend_from_slice(&tmp[..on_dev as usize]);
            }
            out.push(NewContents::Crc(block::checksum(&tmp)));
        }
        Ok(out)
    }

    fn record(&self, first: u64, new: &[NewContents]) -> Result<Option<Ticket>, OpError> {
        match &self.ledger {
            Some(l) => l
                .record_contents(first, new)
                .map(Some)
                .map_err(OpError::ledger),
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
            l.complete(t, r.is_ok()).map_err(OpError::ledger)?;
        }
        r.map_err(|e| OpError::device(e, what()))
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
                return Err(OpError::device(e, "fdatasync for a FUA request"));
            }
        }
        if let Some(l) = &self.ledger {
            for t in tickets.iter().flatten() {
                l.record_fua(t).map_err(OpError::ledger)?;
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
        self.check_range(offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        // An O_DSYNC write is durable when it returns; only its records need syncing for FUA.
        self.change(offset, len, fua, fua, "writing", |blocks, off, n| {
            let piece = &data[(off - offset) as usize..(off - offset + n) as usize];
            let keeper = self.ledger.as_ref().filter(|l| l.kept().is_some());
            // Partial blocks are kept whole: their contents merged with what the device held.
            let whole = off == self.geo.offset(blocks.start)
                && off + n
                    == self.geo.offset(blocks.end - 1) + self.geo.bytes_in(blocks.end - 1) as u64;
            let mut merged = (keeper.is_some() && !whole).then(Vec::new);
            let new =
                self.new_contents(blocks.clone(), off, n, false, Some(piece), merged.as_mut())?;
            let ticket = self.record(blocks.start, &new)?;
            if let (Some(l), Some(t)) = (keeper, &ticket) {
                l.keep(t, &new, merged.as_deref().unwrap_or(piece));
            }
            Ok((ticket, self.device.write_at(piece, off, fua)))
        })?;
        self.counters
            .written_bytes
            .fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Several WRITEs without FUA, read together from one connection: the outcome of each, in
    /// order. Whole-block writes that do not overlap are recorded with one journal append
    /// ([`crate::ledger::WriteSession::record_contents_many`]); anything else runs one write at
    /// a time.
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
                && self.check_range(off, len, true).is_ok()
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
            match self.new_contents(r.clone(), off, data.len() as u64, false, Some(data), None) {
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
                let e = OpError::ledger(e);
                return writes.iter().map(|_| self.fail(Err(e.clone()))).collect();
            }
        };
        if l.kept().is_some() {
            let kept: Vec<(&Ticket, &[NewContents], &[u8])> = tickets
                .iter()
                .zip(&news)
                .zip(writes)
                .map(|((t, n), &(_, data))| (t, n.as_slice(), data))
                .collect();
            l.keep_many(&kept);
        }
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
        self.check_range(offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        // Refused before anything is recorded where the device says it cannot (an NBD upstream
        // without FAST_ZERO); a file learns it on its first attempt.
        if fast_only
            && (self.fast_zero_unsupported.load(Ordering::Relaxed)
                || self.device.can_fast_zero() == Some(false))
        {
            return Err(OpError::FastZeroUnsupported);
        }
        self.change(offset, len, fua, false, "zeroing", |blocks, off, n| {
            let new = self.new_contents(blocks.clone(), off, n, true, None, None)?;
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
        self.check_range(offset, len, false)?;
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
                        Some(l.record_trim(whole.start, count).map_err(OpError::ledger)?)
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
            Some(l) => l
                .flush(|| self.device.flush())
                .map_err(|e| OpError::Flush(std::sync::Arc::new(e))),
            None => self
                .device
                .flush()
                .map_err(|e| OpError::device(e, "fdatasync")),
        };
        if r.is_ok() {
            let took = started.elapsed();
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.counters.flush_duration.observe(took);
            self.counters
                .last_flush
                .store(crate::clock::now(), Ordering::Relaxed);
            self.counters.last_flush_nanos.store(
                took.as_nanos().min(u64::MAX as u128) as u64,
                Ordering::Relaxed,
            );
        }
        self.fail(r)
    }
}
