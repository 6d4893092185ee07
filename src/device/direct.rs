//! Direct I/O for `serve --cache none`: the device's data moves between its media and aligned
//! buffers without passing through the host's page cache (a guest has its own; a host that
//! caches every disk again runs out of memory first). This file owns what that takes: deciding
//! whether O_DIRECT really reaches the media here ([`DirectIo::open`] refuses, naming why,
//! rather than falling back), aligned reads through a bounce buffer, and writes, where a range
//! not aligned to [`DIRECT_ALIGN`] is read, patched and written back whole (read-modify-write)
//! while its pages are held against every other write to them ([`RangeLocks`], shared with the service's block locks).
//!
//! O_DIRECT does not make a write durable (the drive has a cache of its own): FLUSH still
//! syncs the device, and FUA writes go through a descriptor opened O_DIRECT|O_DSYNC.

use super::{AlignedBuf, DIRECT_ALIGN};
use crate::locks::{RangeGuard, RangeLocks};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const A: u64 = DIRECT_ALIGN as u64;

/// A device's descriptors for direct I/O.
pub(super) struct DirectIo {
    /// Opened O_DIRECT.
    file: File,
    /// Opened O_DIRECT|O_DSYNC, for FUA writes (None when read-only).
    dsync: Option<File>,
    /// The device's size rounded down to [`DIRECT_ALIGN`]: the bytes past it (a file whose
    /// size is not a multiple) cannot be written directly without growing the file, and go
    /// through the caller's buffered descriptor.
    aligned_end: u64,
    /// The pages with a direct write in flight: the service's block locks order writes to
    /// one ledger block, these to one page, which a block smaller than a page shares with its
    /// neighbours and which a read-modify-write holds from its read to its write.
    pages: RangeLocks,
}

impl DirectIo {
    /// Opens `path` for direct I/O, or says why it cannot reach the media here: `refusal` is
    /// what the caller already knows (tmpfs, statx), and a first aligned read checks what an
    /// open alone does not (some filesystems accept O_DIRECT and fail every I/O).
    pub(super) fn open(
        path: &Path,
        writable: bool,
        size: u64,
        refusal: Option<String>,
    ) -> Result<DirectIo, String> {
        if let Some(why) = refusal {
            return Err(why);
        }
        let open = |extra: i32, write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(nix::libc::O_DIRECT | extra)
                .open(path)
        };
        let file =
            open(0, writable).map_err(|e| format!("the filesystem refused O_DIRECT ({e})"))?;
        let dsync = match writable {
            true => Some(
                open(nix::libc::O_DSYNC, true)
                    .map_err(|e| format!("opening with O_DIRECT|O_DSYNC failed ({e})"))?,
            ),
            false => None,
        };
        if size >= A {
            let mut probe = AlignedBuf::new(DIRECT_ALIGN);
            file.read_exact_at(probe.as_mut_slice(), 0)
                .map_err(|e| format!("a direct read of its first {A} bytes failed ({e})"))?;
        }
        Ok(DirectIo {
            file,
            dsync,
            aligned_end: size / A * A,
            pages: RangeLocks::default(),
        })
    }

    /// A second handle on the O_DIRECT descriptor (for the scrubber's media reads).
    pub(super) fn reader(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Holds the pages under `offset..offset + len` against every other direct write, zeroing
    /// or trim of them (the caller changing them some other way, with fallocate).
    pub(super) fn hold(&self, offset: u64, len: u64) -> RangeGuard<'_> {
        self.pages
            .lock(offset / A * A..(offset + len).div_ceil(A) * A)
    }

    /// Reads `buf.len()` bytes at `offset`; an unaligned buffer, offset or length goes
    /// through an aligned bounce buffer. A short read is the end of the device.
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_direct(&self.file, buf, offset)
    }

    /// Writes all of `buf` at `offset`, through `buffered` (FUA: `buffered_dsync`) for the
    /// part past the last aligned byte of the device, directly for the rest.
    pub(super) fn write(
        &self,
        buf: &[u8],
        offset: u64,
        fua: bool,
        buffered: &File,
        buffered_dsync: Option<&File>,
    ) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let split = end.min(self.aligned_end).max(offset);
        let (head, tail) = buf.split_at((split - offset) as usize);
        if !head.is_empty() {
            self.write_aligned(head, offset, fua)?;
        }
        if !tail.is_empty() {
            let f = match (fua, buffered_dsync) {
                (true, Some(d)) => d,
                _ => buffered,
            };
            let _g = self.hold(split, tail.len() as u64);
            f.write_all_at(tail, split)?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset`, which end at or before `aligned_end`: the pages it covers
    /// are written whole, those it covers in part read first.
    fn write_aligned(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let f = match (fua, &self.dsync) {
            (true, Some(d)) => d,
            _ => &self.file,
        };
        let end = offset + buf.len() as u64;
        let (start, stop) = (offset / A * A, end.div_ceil(A) * A);
        let _g = self.pages.lock(start..stop);
        if buf.as_ptr().align_offset(DIRECT_ALIGN) == 0 && start == offset && stop == end {
            return f.write_all_at(buf, offset);
        }
        let mut bounce = AlignedBuf::new((stop - start) as usize);
        let b = bounce.as_mut_slice();
        // Only the first and the last page can be partial: read those (once if they are one).
        if offset != start {
            self.file.read_exact_at(&mut b[..DIRECT_ALIGN], start)?;
        }
        if end != stop && (stop - A != start || offset == start) {
            let at = b.len() - DIRECT_ALIGN;
            self.file.read_exact_at(&mut b[at..], stop - A)?;
        }
        let from = (offset - start) as usize;
        b[from..from + buf.len()].copy_from_slice(buf);
        f.write_all_at(b, start)
    }
}

/// Reads with O_DIRECT from `direct`; an unaligned buffer, offset or length goes through an
/// aligned bounce buffer. A short read is the end of the device.
pub(super) fn read_direct(direct: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let aligned = buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
        && offset % A == 0
        && buf.len() % DIRECT_ALIGN == 0;
    if aligned {
        let got = read_full(direct, buf, offset)?;
        if got < buf.len() {
            return Err(short(offset, buf.len()));
        }
        return Ok(());
    }
    let start = offset / A * A;
    let end = (offset + buf.len() as u64).div_ceil(A) * A;
    let mut bounce = AlignedBuf::new((end - start) as usize);
    let bounce = bounce.as_mut_slice();
    let got = read_full(direct, bounce, start)?;
    let from = (offset - start) as usize;
    if got < from + buf.len() {
        return Err(short(offset, buf.len()));
    }
    buf.copy_from_slice(&bounce[from..from + buf.len()]);
    Ok(())
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn short(offset: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("direct read of {len} bytes at offset {offset}: the device ends first"),
    )
}
