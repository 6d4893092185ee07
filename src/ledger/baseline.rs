//! The baseline: generation 0 of every block, as `init --baseline` found it, 4 bytes per block
//! (the CRC-32) in a mapped file that is written once and then only read. The journal holds one
//! `Baseline` record saying when. Layout: docs/FORMAT.md ("baseline").

use super::mapped::MappedFile;
use super::record::Lsn;
use crate::clock::Micros;
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::Ordering;

/// "LWBASE\0\0".
pub const MAGIC: [u8; 8] = *b"LWBASE\0\0";
const HEADER_LEN: usize = 60;

/// The mapped baseline.
pub struct Baseline {
    map: MappedFile,
    block_count: u64,
    /// When the baseline was taken.
    pub time: Micros,
}

fn header(block_size: u32, block_count: u64, id: &[u8; 16], time: Micros, lsn: Lsn) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&block_size.to_le_bytes());
    h.extend_from_slice(&block_count.to_le_bytes());
    h.extend_from_slice(id);
    h.extend_from_slice(&time.to_le_bytes());
    h.extend_from_slice(&lsn.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

impl Baseline {
    /// Creates an empty baseline to be filled with [`Baseline::set`].
    pub fn create(path: &Path, block_count: u64) -> Result<Baseline> {
        Ok(Baseline {
            map: MappedFile::create(path, block_count * 4)?,
            block_count,
            time: 0,
        })
    }

    /// Records block `b`'s checksum.
    pub fn set(&self, block: u64, crc: u32) {
        self.map.data32()[block as usize].store(crc.to_le(), Ordering::Relaxed);
    }

    /// Seals every page, writes the header and syncs the file.
    pub fn finish(&mut self, block_size: u32, id: &[u8; 16], time: Micros, lsn: Lsn) -> Result<()> {
        for p in 0..self.map.pages() {
            self.map.seal_page(p);
        }
        self.map.flush()?;
        self.map
            .set_header(&header(block_size, self.block_count, id, time, lsn));
        self.map.flush_header()?;
        self.time = time;
        Ok(())
    }

    /// Opens and fully checks a baseline (header and every page).
    pub fn open(path: &Path, block_size: u32, block_count: u64, id: &[u8; 16]) -> Result<Baseline> {
        let map = MappedFile::open(path, block_count * 4, false)?;
        let h = map.header();
        if h[0..8] != MAGIC {
            return Err(Error::damaged(
                path,
                0,
                "not a lostwrite baseline (bad magic)",
            ));
        }
        let crc = u32::from_le_bytes(h[HEADER_LEN - 4..HEADER_LEN].try_into().expect("4"));
        if crc32fast::hash(&h[..HEADER_LEN - 4]) != crc {
            return Err(Error::damaged(
                path,
                HEADER_LEN as u64 - 4,
                "baseline header checksum mismatch",
            ));
        }
        let time = i64::from_le_bytes(h[40..48].try_into().expect("8"));
        let want = header(
            block_size,
            block_count,
            id,
            time,
            u64::from_le_bytes(h[48..56].try_into().expect("8")),
        );
        if h[..HEADER_LEN] != want[..] {
            return Err(Error::damaged(
                path,
                8,
                "baseline belongs to another ledger or geometry",
            ));
        }
        if let Some(off) = map.stray_byte(HEADER_LEN) {
            return Err(Error::damaged(
                path,
                off,
                "a byte the format leaves zero is not zero",
            ));
        }
        for p in 0..map.pages() {
            if !map.page_ok(p) {
                return Err(Error::damaged(
                    path,
                    map.data_offset() + (p * super::mapped::PAGE) as u64,
                    format!(
                        "baseline page {p} fails its check (blocks {}..{}): the generation-0 checksums there cannot be trusted and cannot be rebuilt; restore the ledger from a copy",
                        p * 1024,
                        (p + 1) * 1024
                    ),
                ));
            }
        }
        Ok(Baseline {
            map,
            block_count,
            time,
        })
    }

    /// Generation-0 checksum of block `b`.
    pub fn get(&self, block: u64) -> u32 {
        u32::from_le(self.map.data32()[block as usize].load(Ordering::Relaxed))
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }
}
