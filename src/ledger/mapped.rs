//! The one room where `unsafe` lives: memory-mapped ledger tables.
//!
//! A mapped table file is a 4096-byte header page, an area of per-page check values, and the
//! data pages (docs/FORMAT.md, "Mapped tables"). All access to mapped memory goes through
//! atomics, so threads of the service may update entries concurrently without data races, and
//! a page is checksummed from a copy taken with atomic loads.
//!
//! The contract that makes the mapping sound: no other process truncates or rewrites the file
//! while it is mapped. lostwrite enforces it among its own processes with the ledger lock (one
//! writer, which maps shared; readers map private copy-on-write while no writer exists); a
//! foreign process truncating the file would make access fault (SIGBUS), which is why ledger
//! files belong to the sidecar's user only.
#![allow(unsafe_code)]

use crate::error::{Error, IoContext, Result};
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Page size of mapped tables (independent of the block size).
pub const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;

/// Check value of an all-zero page; stored check values are XORed with it so a page that was
/// never written and its never-written check value (both zero) agree: a new table needs no
/// sealing pass.
fn zero_page_crc() -> u32 {
    crc32fast::hash(&[0u8; PAGE])
}

/// A mapped table file.
pub struct MappedFile {
    path: PathBuf,
    _file: Option<File>,
    map: MmapMut,
    base: *mut u8,
    data_offset: usize,
    pages: usize,
    shared: bool,
}

// SAFETY: `base` points into `map`, which lives as long as the struct and is never remapped;
// every access through it is atomic (AtomicU64/AtomicU32), so sharing between threads is sound.
unsafe impl Send for MappedFile {}
// SAFETY: as above.
unsafe impl Sync for MappedFile {}

/// Byte layout of a table holding `data_bytes` of data: (data_offset, data_pages, file_len).
pub fn layout(data_bytes: u64) -> (u64, u64, u64) {
    let pages = data_bytes.div_ceil(PAGE as u64).max(1);
    let check_bytes = (pages * 4).div_ceil(PAGE as u64) * PAGE as u64;
    let data_offset = PAGE as u64 + check_bytes;
    (data_offset, pages, data_offset + pages * PAGE as u64)
}

impl MappedFile {
    /// Creates a zero-filled table, with its space allocated, and maps it shared.
    pub fn create(path: &Path, data_bytes: u64) -> Result<MappedFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .ctx(path, "creating table file")?;
        let (_, _, len) = layout(data_bytes);
        // Allocated now, not sparse: a store into a mapped page the filesystem cannot allocate
        // (a full disk) would kill the process with SIGBUS. Better to fail here, or never.
        nix::fcntl::posix_fallocate(&file, 0, len as i64).map_err(|e| {
            Error::io(
                path,
                format!("allocating {len} bytes for the table"),
                e.into(),
            )
        })?;
        Self::map(path, file, data_bytes, true)
    }

    /// Opens an existing table. `writable` maps it shared (changes go to the file); otherwise
    /// the map is a private copy-on-write view that may be changed in memory only.
    pub fn open(path: &Path, data_bytes: u64, writable: bool) -> Result<MappedFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .ctx(path, "opening table file")?;
        let (_, _, want) = layout(data_bytes);
        let have = file.metadata().ctx(path, "stat")?.len();
        if have != want {
            return Err(Error::damaged(
                path,
                have.min(want),
                format!(
                    "the file is {have} bytes but this ledger's table needs {want} bytes ({})",
                    if have < want {
                        "short: truncated"
                    } else {
                        "too long"
                    }
                ),
            ));
        }
        Self::map(path, file, data_bytes, writable)
    }

    fn map(path: &Path, file: File, data_bytes: u64, shared: bool) -> Result<MappedFile> {
        let (data_offset, pages, len) = layout(data_bytes);
        // SAFETY: see the module comment: the ledger lock keeps other lostwrite processes from
        // changing the file while it is mapped, and the length was checked above.
        let mut map = unsafe {
            if shared {
                MmapOptions::new().len(len as usize).map_mut(&file)
            } else {
                MmapOptions::new().len(len as usize).map_copy(&file)
            }
        }
        .ctx(path, "mapping table file")?;
        let base = map.as_mut_ptr();
        Ok(MappedFile {
            path: path.to_path_buf(),
            _file: Some(file),
            map,
            base,
            data_offset: data_offset as usize,
            pages: pages as usize,
            shared,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of data pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Byte offset of the data area in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset as u64
    }

    fn words_at(&self, byte_offset: usize, count: usize) -> &[AtomicU64] {
        debug_assert!(byte_offset % 8 == 0 && byte_offset + count * 8 <= self.map.len());
        // SAFETY: in bounds of the live mapping (asserted by construction: callers pass areas
        // computed from `layout`), 8-byte aligned because the mapping is page aligned and the
        // offset is a multiple of 8, and only accessed atomically.
        unsafe { std::slice::from_raw_parts(self.base.add(byte_offset) as *const AtomicU64, count) }
    }

    /// The header page as 512 little-endian words.
    fn header_words(&self) -> &[AtomicU64] {
        self.words_at(0, WORDS_PER_PAGE)
    }

    /// Reads the header page.
    pub fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAGE);
        for w in self.header_words() {
            out.extend_from_slice(&w.load(Ordering::Acquire).to_ne_bytes());
        }
        out
    }

    /// Replaces the start of the header page with `bytes` (the rest stays zero).
    pub fn set_header(&self, bytes: &[u8]) {
        assert!(bytes.len() <= PAGE);
        let mut page = [0u8; PAGE];
        page[..bytes.len()].copy_from_slice(bytes);
        for (w, c) in self.header_words().iter().zip(page.chunks_exact(8)) {
            w.store(
                u64::from_ne_bytes(c.try_into().expect("8")),
                Ordering::Release,
            );
        }
    }

    /// The data area as 64-bit words.
    pub fn data64(&self) -> &[AtomicU64] {
        self.words_at(self.data_offset, self.pages * WORDS_PER_PAGE)
    }

    /// The data area as 32-bit words.
    pub fn data32(&self) -> &[AtomicU32] {
        let n = self.pages * PAGE / 4;
        // SAFETY: same area as `data64`, 4-byte aligned, accessed atomically only.
        unsafe {
            std::slice::from_raw_parts(self.base.add(self.data_offset) as *const AtomicU32, n)
        }
    }

    fn checks(&self) -> &[AtomicU32] {
        // SAFETY: the check area lies between the header page and the data area.
        unsafe { std::slice::from_raw_parts(self.base.add(PAGE) as *const AtomicU32, self.pages) }
    }

    fn page_crc(&self, page: usize) -> u32 {
        let words = &self.data64()[page * WORDS_PER_PAGE..(page + 1) * WORDS_PER_PAGE];
        let mut copy = [0u8; PAGE];
        for (c, w) in copy.chunks_exact_mut(8).zip(words) {
            c.copy_from_slice(&w.load(Ordering::Acquire).to_ne_bytes());
        }
        crc32fast::hash(&copy) ^ zero_page_crc()
    }

    /// True when data page `page` matches its stored check value.
    pub fn page_ok(&self, page: usize) -> bool {
        self.page_crc(page) == u32::from_le(self.checks()[page].load(Ordering::Acquire))
    }

    /// Offset of the first non-zero byte where the format leaves bytes unused (the header page
    /// after `header_used` bytes, the check area after the last page's value), if any.
    pub fn stray_byte(&self, header_used: usize) -> Option<u64> {
        let h = self.header();
        if let Some(i) = h[header_used..].iter().position(|&b| b != 0) {
            return Some((header_used + i) as u64);
        }
        let slots = (self.data_offset - PAGE) / 4;
        // SAFETY: the check area spans `slots` u32 values between the header page and the data.
        let area =
            unsafe { std::slice::from_raw_parts(self.base.add(PAGE) as *const AtomicU32, slots) };
        area[self.pages..]
            .iter()
            .position(|w| w.load(Ordering::Acquire) != 0)
            .map(|i| (PAGE + (self.pages + i) * 4) as u64)
    }

    /// File offset of the check value of `page` (for damage reports).
    pub fn check_offset(&self, page: usize) -> u64 {
        (PAGE + page * 4) as u64
    }

    /// Recomputes and stores the check value of `page`.
    pub fn seal_page(&self, page: usize) {
        let c = self.page_crc(page);
        self.checks()[page].store(c.to_le(), Ordering::Release);
    }

    /// Writes every change to the file and waits for it (no-op for a private map).
    pub fn flush(&self) -> Result<()> {
        if self.shared {
            self.map.flush().ctx(&self.path, "msync of table")?;
        }
        Ok(())
    }

    /// Writes the header page to the file and waits for it.
    pub fn flush_header(&self) -> Result<()> {
        if self.shared {
            self.map
                .flush_range(0, PAGE)
                .ctx(&self.path, "msync of table header")?;
        }
        Ok(())
    }

    /// A table in anonymous memory (no file), for rebuilding a state to compare against.
    pub fn anonymous(data_bytes: u64) -> Result<MappedFile> {
        let (data_offset, pages, len) = layout(data_bytes);
        let mut map = MmapOptions::new()
            .len(len as usize)
            .map_anon()
            .ctx("(anonymous memory)", "allocating a table")?;
        let base = map.as_mut_ptr();
        Ok(MappedFile {
            path: PathBuf::from("(memory)"),
            _file: None,
            map,
            base,
            data_offset: data_offset as usize,
            pages: pages as usize,
            shared: false,
        })
    }
}
