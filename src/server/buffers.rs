//! Request and reply buffers, reused across requests and connections.
//!
//! A fresh buffer per request is not free: a 1 MiB WRITE read into new memory cost about 60
//! page faults and a zero-fill of the whole payload (std's `read_to_end` initialises spare
//! capacity before handing it to a reader it cannot trust), on top of the copy itself. A
//! buffer taken from here has been written before, so reading into it is only the copy.
//!
//! What the pool keeps is bounded ([`POOL_BYTES`] in all); buffers beyond that are freed when
//! dropped, so an idle server does not pin the memory of its busiest moment.
//!
//! Pooled buffers start at a page boundary ([`DIRECT_ALIGN`]), or put one at a chosen offset
//! ([`Buffers::get_aligned_at`]: a READ's data after its reply header), so that `--cache none`
//! reads and writes them with O_DIRECT as they are, without an aligned copy of each.

use crate::device::DIRECT_ALIGN;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Most bytes the pool keeps for reuse.
pub const POOL_BYTES: usize = 16 << 20;

/// Requests shorter than this get a buffer of their own: malloc serves them well, and a
/// reply header must not hold a large pooled buffer for the length of a FLUSH.
const MIN_POOLED: usize = 4 << 10;

/// Requests longer than this get a buffer of their own, freed after use (rare, and one
/// would crowd everything else out of the pool).
const MAX_POOLED: usize = 4 << 20;

/// Size classes: powers of two from `MIN_POOLED` to `MAX_POOLED`.
const CLASSES: usize = (MAX_POOLED.trailing_zeros() - MIN_POOLED.trailing_zeros() + 1) as usize;

/// A pool of byte buffers in power-of-two size classes. Cheap to share: buffers go back to
/// it when dropped.
#[derive(Default)]
pub struct Buffers {
    free: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

/// The class of a request of `len` bytes, if pooled.
fn class(len: usize) -> Option<usize> {
    (MIN_POOLED..=MAX_POOLED)
        .contains(&len)
        .then(|| (len.next_power_of_two().trailing_zeros() - MIN_POOLED.trailing_zeros()) as usize)
}

impl Buffers {
    /// A buffer of exactly `len` bytes with unspecified contents (zeroes, or an earlier
    /// request's bytes): the caller overwrites all of it before using it.
    pub fn get(self: &Arc<Self>, len: usize) -> Buf {
        self.get_aligned_at(len, 0)
    }

    /// Like [`Buffers::get`], with byte `at` of the buffer on a [`DIRECT_ALIGN`] boundary when
    /// the buffer is pooled (`at` below `len`).
    pub fn get_aligned_at(self: &Arc<Self>, len: usize, at: usize) -> Buf {
        let Some(c) = class(len) else {
            return Buf {
                v: vec![0u8; len],
                skip: 0,
                len,
                home: None,
            };
        };
        let reused = {
            let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let v = f.classes[c].pop();
            if let Some(v) = &v {
                f.bytes -= v.len();
            }
            v
        };
        // A new buffer is zeroed by the allocator (fresh pages from the kernel), and the
        // pages past `len` are never touched. One page more than the class leaves room to
        // move the start to where `at` is aligned.
        let v = reused.unwrap_or_else(|| vec![0u8; (MIN_POOLED << c) + DIRECT_ALIGN]);
        let skip = v.as_ptr().wrapping_add(at).align_offset(DIRECT_ALIGN);
        Buf {
            v,
            skip,
            len,
            home: Some(self.clone()),
        }
    }

    fn put(&self, v: Vec<u8>) {
        let Some(c) = v.len().checked_sub(DIRECT_ALIGN).and_then(class) else {
            return;
        };
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if f.bytes + v.len() > POOL_BYTES {
            // The workload changed size: what the other classes keep is of no use now.
            for (i, k) in f.classes.iter_mut().enumerate() {
                if i != c {
                    k.clear();
                }
            }
            f.bytes = f.classes[c].iter().map(Vec::len).sum();
            if f.bytes + v.len() > POOL_BYTES {
                return;
            }
        }
        f.bytes += v.len();
        f.classes[c].push(v);
    }

    /// Bytes kept for reuse now.
    pub fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// A buffer of a fixed length, given back to its pool when dropped.
pub struct Buf {
    v: Vec<u8>,
    /// Where the buffer starts in `v`.
    skip: usize,
    len: usize,
    home: Option<Arc<Buffers>>,
}

impl Buf {
    /// An empty buffer that belongs to no pool.
    pub fn empty() -> Buf {
        Buf {
            v: Vec::new(),
            skip: 0,
            len: 0,
            home: None,
        }
    }

    /// Shortens the buffer to `len` bytes (no effect if it is already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v[self.skip..self.skip + self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.skip..self.skip + self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            home.put(std::mem::take(&mut self.v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_buffers_are_page_aligned_where_asked() {
        let pool = Arc::new(Buffers::default());
        for len in [4096, 5000, 1 << 20] {
            let b = pool.get(len);
            assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0, "{len}");
            drop(b);
            let b = pool.get_aligned_at(len + 16, 16);
            assert_eq!(b.len(), len + 16);
            assert_eq!(b[16..].as_ptr() as usize % DIRECT_ALIGN, 0, "{len}+16");
        }
    }

    #[test]
    fn buffers_come_back_by_size_and_the_pool_stays_bounded() {
        // What the pool counts per buffer: its class and the page kept for alignment.
        const P: usize = DIRECT_ALIGN;
        let pool = Arc::new(Buffers::default());
        let mut a = pool.get(4096);
        a.fill(7);
        assert_eq!(a.len(), 4096);
        drop(a);
        assert_eq!(pool.kept(), 4096 + P);
        // Another size class does not take it.
        let b = pool.get(1 << 20);
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(pool.kept(), 4096 + P);
        drop(b);
        assert_eq!(pool.kept(), 4096 + (1 << 20) + 2 * P);
        // A request within a class reuses that class's buffer, at the length asked for.
        let c = pool.get((1 << 20) - 100);
        assert_eq!(c.len(), (1 << 20) - 100);
        assert_eq!(pool.kept(), 4096 + P);
        drop(c);
        // Small and huge requests are not pooled.
        drop(pool.get(16));
        drop(pool.get(32 << 20));
        assert_eq!(pool.kept(), 4096 + (1 << 20) + 2 * P);
        // More than the bound in flight at once: only the bound is kept, and the class in use
        // pushes the others out.
        let many: Vec<Buf> = (0..(POOL_BYTES >> 21) + 4)
            .map(|_| pool.get(2 << 20))
            .collect();
        drop(many);
        let each = (2 << 20) + P;
        assert_eq!(pool.kept(), POOL_BYTES / each * each);
    }
}
