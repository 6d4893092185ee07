//! The read path of an [`Export`]: READ (and its no-wait form) with the online check of whole
//! blocks against the ledger; a stale block (`mismatch`: counted, logged, and with
//! `--on-mismatch error` refused); the hand-off of suspects to the detection thread and of
//! passed checks to the findings log (both also used by the scrubber); and CACHE.

use super::detect::{Msg, Suspect};
use super::error::OpError;
use super::{Export, OnMismatch};
use crate::block;
use crate::findings::classify::Found;
use crate::findings::Source;
use crate::ledger::state::BlockState;
use std::sync::atomic::Ordering;

impl Export {
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
        self.check_range(offset, len, false)?;
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
                .map_err(|e| OpError::device(e, what()))?
            {
                return Ok(false);
            }
        } else {
            self.device
                .read_at(buf, offset)
                .map_err(|e| OpError::device(e, what()))?;
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
                    self.passed(b, Source::Read);
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
                    source: Source::Read,
                });
                self.mismatch(b, generation, Source::Read)?;
            }
        }
        Ok(true)
    }

    /// A block that does not hold its latest generation, found on a read or a read-modify-write
    /// (`how`): counted and logged; on a read under `--on-mismatch error`, refused with EIO.
    pub(super) fn mismatch(&self, block: u64, generation: u32, how: Source) -> Result<(), OpError> {
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
        if self.on_mismatch == OnMismatch::Error && how == Source::Read {
            return Err(OpError::Stale { block });
        }
        Ok(())
    }

    /// Hands a stale block to the detection thread, if one runs (see [`super::detect::Detector`]).
    /// A client's read never waits for it (a full queue drops and counts the block); the
    /// scrubber, which has time, waits for room.
    pub(super) fn suspect(&self, s: Suspect) {
        if let Some(tx) = self.suspects.get() {
            let sent = if s.source == Source::Scrub {
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
    pub(super) fn passed(&self, block: u64, source: Source) {
        if let Some(f) = &self.findings {
            if f.any_open() {
                if let Err(e) = f.cleared(source, block) {
                    tracing::error!("{e}");
                }
            }
        }
    }

    /// CACHE: a hint that the range will be read.
    pub fn cache(&self, offset: u64, len: u64) -> Result<(), OpError> {
        self.check_range(offset, len, false)?;
        self.device.will_need(offset, len);
        Ok(())
    }
}
