//! Range locks: ranges (of blocks, or of a device's bytes) with a change in flight. The service
//! holds a write's blocks from the moment it is recorded until its device write completes, so
//! two writes to one block reach the device in the order their generations were given, and a
//! read can tell whether a block had a write in flight; direct I/O holds the pages a
//! read-modify-write spans. Kept below both, so neither has a copy.

use std::ops::Range;
use std::sync::{Condvar, Mutex};

/// The set of block ranges with a change in flight.
#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<Range<u64>>>,
    cv: Condvar,
}

/// Releases its range when dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: Range<u64>,
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl RangeLocks {
    /// Waits until no held range overlaps `range`, then holds it.
    pub fn lock(&self, range: Range<u64>) -> RangeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.iter().any(|h| overlaps(h, &range)) {
            held = self.cv.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.push(range.clone());
        RangeGuard { locks: self, range }
    }

    /// True when a change to any block of `range` is in flight.
    pub fn busy(&self, range: &Range<u64>) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().any(|h| overlaps(h, range))
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|h| *h == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.locks.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn overlapping_ranges_wait_for_each_other() {
        let locks = RangeLocks::default();
        let order = AtomicU32::new(0);
        let g = locks.lock(0..4);
        assert!(locks.busy(&(3..5)));
        assert!(!locks.busy(&(4..5)));
        std::thread::scope(|s| {
            s.spawn(|| {
                let _g = locks.lock(2..3);
                assert_eq!(order.fetch_add(1, Ordering::SeqCst), 1);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(order.fetch_add(1, Ordering::SeqCst), 0);
            drop(g);
        });
        assert!(!locks.busy(&(0..10)));
    }
}
