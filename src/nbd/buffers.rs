//! Request and reply buffers, reused across requests and connections.
//!
//! A fresh buffer per request is not free: a 1 MiB WRITE read into new memory cost about 60
//! page faults and a zero-fill of the whole payload (std's `read_to_end` initialises spare
//! capacity before handing it to a reader it cannot trust), on top of the copy itself. A
//! buffer taken from here has been written before, so reading into it is only the copy.
//!
//! What the pool keeps is bounded ([`POOL_BYTES`] in all); buffers beyond that are freed when
//! dropped, so an idle server does not pin the memory of its busiest moment.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Most bytes the pool keeps for reuse.
pub const POOL_BYTES: usize = 16 << 20;

/// A pool of byte buffers. Cheap to share: buffers go back to it when dropped.
#[derive(Default)]
pub struct Buffers {
    free: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Buffers {
    /// A buffer of exactly `len` bytes with unspecified contents (zeroes, or an earlier
    /// request's bytes): the caller overwrites all of it.
    pub fn get(self: &Arc<Self>, len: usize) -> Buf {
        let reused = {
            let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
            f.bufs.pop().inspect(|v| f.bytes -= v.len())
        };
        let v = match reused {
            Some(mut v) => {
                if v.len() < len {
                    v.resize(len, 0);
                }
                v
            }
            // Zeroed allocation: fresh pages from the kernel are zero already.
            None => vec![0u8; len],
        };
        Buf {
            v,
            len,
            home: Some(self.clone()),
        }
    }

    fn put(&self, v: Vec<u8>) {
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if f.bytes + v.len() <= POOL_BYTES {
            f.bytes += v.len();
            f.bufs.push(v);
        }
    }

    /// Bytes kept for reuse now.
    pub fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// A buffer of a fixed length, given back to its pool when dropped.
pub struct Buf {
    v: Vec<u8>,
    len: usize,
    home: Option<Arc<Buffers>>,
}

impl Buf {
    /// An empty buffer that belongs to no pool.
    pub fn empty() -> Buf {
        Buf {
            v: Vec::new(),
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
        &self.v[..self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v[..self.len]
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
    fn buffers_come_back_and_the_pool_stays_bounded() {
        let pool = Arc::new(Buffers::default());
        let mut a = pool.get(4096);
        a.fill(7);
        assert_eq!(a.len(), 4096);
        drop(a);
        assert_eq!(pool.kept(), 4096);
        // Reused and grown: the length asked for, whatever was there before.
        let b = pool.get(8192);
        assert_eq!(b.len(), 8192);
        assert_eq!(pool.kept(), 0);
        drop(b);
        assert_eq!(pool.kept(), 8192);
        // A reused larger buffer still reads as the length asked for.
        let c = pool.get(100);
        assert_eq!(c.len(), 100);
        drop(c);
        // More than the bound in flight at once: only the bound is kept.
        let many: Vec<Buf> = (0..(POOL_BYTES >> 20) + 4)
            .map(|_| pool.get(1 << 20))
            .collect();
        drop(many);
        assert!(pool.kept() <= POOL_BYTES, "kept {}", pool.kept());
        assert!(pool.kept() >= POOL_BYTES - (1 << 20));
    }
}
