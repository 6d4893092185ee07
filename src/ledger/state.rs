//! The state table: for every block, what it should hold now (generation and checksum, or that
//! it is untracked or unknown), 8 bytes per block in a mapped file, protected by per-page check
//! values and stamped with the journal position it reflects (its checkpoint). Layout:
//! docs/FORMAT.md ("state").
//!
//! Entry: the low 32 bits are the CRC-32 of the block's expected contents; the high 32 bits are
//! `generation << 2 | status` (status 0 untracked, 1 tracked, 2 unknown). An all-zero entry is
//! an untracked block, so a new table is a sparse file. Generations have 30 bits and wrap from
//! 2^30-1 to 1 (the journal's LSN order is the real order; see docs/FORMAT.md).

use super::mapped::{MappedFile, PAGE};
use super::record::{Generation, Lsn};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// "LWSTATE\0".
pub const MAGIC: [u8; 8] = *b"LWSTATE\0";
/// State table format version written by this build (version 1, read too, has no boot id: see
/// docs/FORMAT.md, "state").
pub const VERSION: u32 = 2;
/// Largest generation before wrapping to 1.
pub const MAX_GENERATION: Generation = (1 << 30) - 1;
const ENTRIES_PER_PAGE: u64 = (PAGE / 8) as u64;
/// Header bytes of version 2 (boot id at 76, CRC at 92) and of version 1 (CRC at 76).
const HEADER_LEN: usize = 96;
const HEADER_LEN_V1: usize = 80;
/// Flag bits of the header.
const CLEAN: u32 = 1;
const SESSION_OPEN: u32 = 2;
const RUNNING: u32 = 4;

/// What a block should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Never written through the sidecar and not baselined, or trimmed: not judged.
    Untracked {
        /// Last generation consumed (0 if never written).
        generation: Generation,
    },
    /// Should hold contents with this checksum.
    Tracked {
        /// Current generation (0 = baseline).
        generation: Generation,
        /// CRC-32 of the expected contents.
        crc: u32,
    },
    /// The last write failed: contents unknown until the next write.
    Unknown {
        /// The generation whose write failed.
        generation: Generation,
    },
}

/// As the CLI prints a block's state everywhere: `tracked at generation 1 (crc e68b5f45)`.
impl std::fmt::Display for BlockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BlockState::Tracked { generation, crc } => {
                write!(f, "tracked at generation {generation} (crc {crc:08x})")
            }
            BlockState::Untracked { generation } => {
                write!(f, "untracked (last generation {generation})")
            }
            BlockState::Unknown { generation } => {
                write!(f, "unknown (the write of generation {generation} failed)")
            }
        }
    }
}

impl BlockState {
    /// The block's current generation.
    pub fn generation(self) -> Generation {
        match self {
            BlockState::Untracked { generation }
            | BlockState::Tracked { generation, .. }
            | BlockState::Unknown { generation } => generation,
        }
    }

    /// The generation the next change of this block gets.
    pub fn next_generation(self) -> Generation {
        let g = self.generation();
        if g >= MAX_GENERATION {
            1
        } else {
            g + 1
        }
    }

    fn encode(self) -> u64 {
        let (gen, status, crc) = match self {
            BlockState::Untracked { generation } => (generation, 0u64, 0u32),
            BlockState::Tracked { generation, crc } => (generation, 1, crc),
            BlockState::Unknown { generation } => (generation, 2, 0),
        };
        ((((gen & MAX_GENERATION) as u64) << 2 | status) << 32) | crc as u64
    }

    /// Decodes an entry; status 3 is not valid.
    fn decode(v: u64) -> Option<BlockState> {
        let word = (v >> 32) as u32;
        let generation = word >> 2;
        let crc = v as u32;
        match word & 3 {
            0 => Some(BlockState::Untracked { generation }),
            1 => Some(BlockState::Tracked { generation, crc }),
            2 => Some(BlockState::Unknown { generation }),
            _ => None,
        }
    }
}

/// The header of the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateHeader {
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks in the table.
    pub block_count: u64,
    /// The ledger it belongs to.
    pub ledger_id: [u8; 16],
    /// Every record with LSN <= this is reflected in the table.
    pub checkpoint_lsn: Lsn,
    /// Where the journal ended at the checkpoint: (segment, offset). Bytes before it were
    /// synced, so damage there is never mistaken for a torn tail.
    pub checkpoint_pos: (u64, u64),
    /// Last session number seen.
    pub last_session: u64,
    /// That session had not closed at the checkpoint.
    pub session_open: bool,
    /// The table is exactly the state at `checkpoint_lsn` and every page check is valid.
    /// Cleared while a writer changes entries.
    pub clean: bool,
    /// Written by a running writer (CLEAN unset) on the host boot with this id: the table, as
    /// that boot's page cache holds it, reflects every record up to `checkpoint_lsn`, and every
    /// page no later record changed passes its check. `None` in a version-1 header, a clean one,
    /// or one that promises nothing (a table being rebuilt). Not written with `clean`.
    pub running: Option<[u8; 16]>,
}

impl StateHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&self.block_size.to_le_bytes());
        h.extend_from_slice(&self.block_count.to_le_bytes());
        h.extend_from_slice(&self.ledger_id);
        h.extend_from_slice(&self.checkpoint_lsn.to_le_bytes());
        h.extend_from_slice(&self.checkpoint_pos.0.to_le_bytes());
        h.extend_from_slice(&self.checkpoint_pos.1.to_le_bytes());
        h.extend_from_slice(&self.last_session.to_le_bytes());
        let mut flags = 0;
        if self.clean {
            flags |= CLEAN;
        }
        if self.session_open {
            flags |= SESSION_OPEN;
        }
        let running = self.running.filter(|_| !self.clean);
        if running.is_some() {
            flags |= RUNNING;
        }
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&running.unwrap_or_default());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(h.len(), HEADER_LEN);
        h
    }

    fn decode(b: &[u8]) -> std::result::Result<StateHeader, (u64, String)> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        if b[0..8] != MAGIC {
            return Err((0, "not a lostwrite state table (bad magic)".into()));
        }
        let version = u32_at(8);
        let len = match version {
            1 => HEADER_LEN_V1,
            VERSION => HEADER_LEN,
            v => {
                return Err((
                    8,
                    format!("state table version {v} (this build reads versions 1 and {VERSION})"),
                ))
            }
        };
        if crc32fast::hash(&b[..len - 4]) != u32_at(len - 4) {
            return Err((len as u64 - 4, "state header checksum mismatch".into()));
        }
        let flags = u32_at(72);
        let known = if version == 1 {
            CLEAN | SESSION_OPEN
        } else {
            CLEAN | SESSION_OPEN | RUNNING
        };
        if flags & !known != 0 {
            return Err((72, format!("unknown state header flags {flags:#x}")));
        }
        let boot: [u8; 16] = b[76..92].try_into().expect("16");
        let running = (version != 1 && flags & RUNNING != 0).then_some(boot);
        if version != 1 && running.is_none() && boot != [0; 16] {
            return Err((76, "a boot id without the RUNNING flag".into()));
        }
        Ok(StateHeader {
            block_size: u32_at(12),
            block_count: u64_at(16),
            ledger_id: b[24..40].try_into().expect("16"),
            checkpoint_lsn: u64_at(40),
            checkpoint_pos: (u64_at(48), u64_at(56)),
            last_session: u64_at(64),
            clean: flags & CLEAN != 0,
            session_open: flags & SESSION_OPEN != 0,
            running,
        })
    }
}

/// The id of the running host boot (`/proc/sys/kernel/random/boot_id`), or `None` where the
/// kernel does not give one. The page cache outlives a crashed process but not a host crash: a
/// running checkpoint is only trusted under the boot that wrote it.
pub fn boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: Vec<u8> = text.trim().bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        id[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    // All zeroes would read as "no boot id" in the header.
    (id != [0; 16]).then_some(id)
}

/// The mapped state table.
pub struct StateTable {
    map: MappedFile,
    block_count: u64,
    dirty: Vec<AtomicU64>,
    /// Every page is marked dirty (from `clear` until the next `seal_dirty`): a full replay
    /// then stores entries without a locked read-modify-write each, which waited for every
    /// store's cache miss and was three quarters of a replay's time.
    all_dirty: AtomicBool,
}

impl StateTable {
    /// Creates a table of untracked blocks with `header`.
    pub fn create(path: &Path, header: &StateHeader) -> Result<StateTable> {
        let map = MappedFile::create(path, header.block_count * 8)?;
        let t = StateTable::wrap(map, header.block_count);
        t.write_header(header)?;
        Ok(t)
    }

    /// Opens a table of `block_count` entries; `writable` maps it shared.
    pub fn open(path: &Path, block_count: u64, writable: bool) -> Result<StateTable> {
        let map = MappedFile::open(path, block_count * 8, writable)?;
        Ok(StateTable::wrap(map, block_count))
    }

    /// A table in memory only, all blocks untracked (to compare a replay against the file).
    pub fn anonymous(block_count: u64) -> Result<StateTable> {
        Ok(StateTable::wrap(
            MappedFile::anonymous(block_count * 8)?,
            block_count,
        ))
    }

    fn wrap(map: MappedFile, block_count: u64) -> StateTable {
        let dirty = (0..map.pages().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        StateTable {
            map,
            block_count,
            dirty,
            all_dirty: AtomicBool::new(false),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// Reads and checks the header (and that the bytes the format leaves unused are zero).
    pub fn header(&self) -> Result<StateHeader> {
        let page = self.map.header();
        let h = StateHeader::decode(&page)
            .map_err(|(off, why)| Error::damaged(self.path(), off, why))?;
        let used = if page[8] == 1 {
            HEADER_LEN_V1
        } else {
            HEADER_LEN
        };
        if let Some(off) = self.map.stray_byte(used) {
            return Err(Error::damaged(
                self.path(),
                off,
                "a byte the format leaves zero is not zero",
            ));
        }
        Ok(h)
    }

    /// Writes the header and waits until it is on disk.
    pub fn write_header(&self, h: &StateHeader) -> Result<()> {
        self.map.set_header(&h.encode());
        self.map.flush_header()
    }

    fn entries(&self) -> &[AtomicU64] {
        &self.map.data64()[..self.block_count as usize]
    }

    /// What block `b` should hold. An entry with an invalid status (only possible in a damaged
    /// page, which the page checks catch) reads as unknown.
    pub fn get(&self, block: u64) -> BlockState {
        let v = u64::from_le(self.entries()[block as usize].load(Ordering::Acquire));
        BlockState::decode(v).unwrap_or(BlockState::Unknown { generation: 0 })
    }

    /// Sets block `b`'s state and marks its page for resealing.
    pub fn set(&self, block: u64, s: BlockState) {
        self.entries()[block as usize].store(s.encode().to_le(), Ordering::Release);
        if self.all_dirty.load(Ordering::Acquire) {
            return;
        }
        let page = block / ENTRIES_PER_PAGE;
        self.dirty[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::AcqRel);
    }

    /// The page holding block `b`'s entry.
    pub fn page_of(block: u64) -> usize {
        (block / ENTRIES_PER_PAGE) as usize
    }

    /// File offset of block `b`'s entry.
    pub fn entry_offset(&self, block: u64) -> u64 {
        self.map.data_offset() + block * 8
    }

    /// Pages whose stored check value does not match, skipping pages marked dirty.
    pub fn bad_pages(&self) -> Vec<usize> {
        (0..self.map.pages())
            .filter(|&p| self.page_fails(p))
            .collect()
    }

    /// Whether page `page` fails its check (a page changed since the last seal does not).
    pub fn page_fails(&self, page: usize) -> bool {
        !self.is_dirty(page) && !self.map.page_ok(page)
    }

    fn is_dirty(&self, page: usize) -> bool {
        self.dirty[page / 64].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    /// File offset of a page's check value.
    pub fn check_offset(&self, page: usize) -> u64 {
        self.map.check_offset(page)
    }

    /// Recomputes the check values of pages changed since the last seal.
    pub fn seal_dirty(&self) {
        self.all_dirty.store(false, Ordering::SeqCst);
        for (i, w) in self.dirty.iter().enumerate() {
            let mut bits = w.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.map.seal_page(i * 64 + b);
            }
        }
    }

    /// Sets every entry to untracked (before a rebuild). The caller has the table to itself
    /// until the next `seal_dirty` (recovery in `open`, `rebuild_state`): until then `set`
    /// leaves the dirty marks alone, as every page is marked already.
    pub fn clear(&self) {
        for e in self.entries() {
            e.store(0, Ordering::Relaxed);
        }
        for p in 0..self.map.pages() {
            self.dirty[p / 64].fetch_or(1 << (p % 64), Ordering::AcqRel);
        }
        self.all_dirty.store(true, Ordering::Release);
    }

    /// Writes changed entries to the file and waits.
    pub fn flush(&self) -> Result<()> {
        self.map.flush()
    }

    /// Raw little-endian entries, for the verifier's scan loop.
    pub fn raw(&self) -> &[AtomicU64] {
        self.entries()
    }

    /// Decodes a raw entry loaded from [`StateTable::raw`].
    pub fn decode_raw(v: u64) -> BlockState {
        BlockState::decode(u64::from_le(v)).unwrap_or(BlockState::Unknown { generation: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(running: Option<[u8; 16]>) -> StateHeader {
        StateHeader {
            block_size: 4096,
            block_count: 77,
            ledger_id: [9; 16],
            checkpoint_lsn: 1234,
            checkpoint_pos: (3, 4567),
            last_session: 5,
            session_open: true,
            clean: running.is_none(),
            running,
        }
    }

    #[test]
    fn header_round_trip_and_version_1() {
        for h in [header(None), header(Some([0xab; 16]))] {
            let mut page = h.encode();
            page.resize(PAGE, 0);
            assert_eq!(StateHeader::decode(&page), Ok(h));
            let mut bad = page.clone();
            bad[80] ^= 1;
            assert!(StateHeader::decode(&bad).is_err());
        }
        // Version 1: the same fields up to the flags, its CRC at 76, no boot id.
        let h = header(None);
        let mut v1 = h.encode()[..76].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        v1.resize(PAGE, 0);
        assert_eq!(StateHeader::decode(&v1), Ok(h));
        assert!(boot_id().is_some(), "this kernel gives a boot id");
    }

    #[test]
    fn entry_round_trip() {
        for s in [
            BlockState::Untracked { generation: 0 },
            BlockState::Untracked { generation: 77 },
            BlockState::Tracked {
                generation: MAX_GENERATION,
                crc: u32::MAX,
            },
            BlockState::Tracked {
                generation: 0,
                crc: 0,
            },
            BlockState::Unknown { generation: 5 },
        ] {
            assert_eq!(BlockState::decode(s.encode()), Some(s));
        }
        assert_eq!(
            BlockState::decode(0),
            Some(BlockState::Untracked { generation: 0 })
        );
        assert_eq!(
            BlockState::Tracked {
                generation: MAX_GENERATION,
                crc: 1
            }
            .next_generation(),
            1
        );
    }
}
