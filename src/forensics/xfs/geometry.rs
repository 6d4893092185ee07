//! The XFS superblock (struct xfs_dsb): the geometry it gives, checked field by field before any
//! value read from it becomes an offset, and the arithmetic between linear block numbers (from
//! the region's start), fsblock numbers (AG number shifted above the AG block) and inode
//! numbers. It also names the blocks the superblock alone accounts for: the AG headers and the
//! internal log.

use super::structures::{ag_header, log_owner};
use crate::forensics::owner::Owner;

/// The geometry the primary superblock gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) block_size: u64,
    pub(super) blocks: u64,
    pub(super) ag_blocks: u64,
    pub(super) ag_count: u64,
    /// log2 of the AG size rounded up: the AG number's shift in an fsblock number.
    pub(super) ag_blk_log: u32,
    pub(super) inodes_per_block: u64,
    /// log2 of `inodes_per_block`.
    pub(super) inop_blog: u32,
    pub(super) sector_size: u64,
    /// First block of the internal log, as an fsblock number (0: external log).
    pub(super) log_start: u64,
    pub(super) log_blocks: u64,
}

pub(super) fn be16(b: &[u8], at: usize) -> u64 {
    u16::from_be_bytes([b[at], b[at + 1]]) as u64
}

pub(super) fn be32(b: &[u8], at: usize) -> u64 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4")) as u64
}

pub(super) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8"))
}

impl Geometry {
    /// Parses the superblock (struct xfs_dsb) of a filesystem in a region of `region_len`
    /// bytes, refusing values no XFS has: the error names the first bad field.
    pub(super) fn parse(sb: &[u8], region_len: u64) -> Result<Geometry, String> {
        if sb.len() < 128 || &sb[..4] != b"XFSB" {
            return Err("no XFS superblock".into());
        }
        let g = Geometry {
            block_size: be32(sb, 4),
            blocks: be64(sb, 8),
            log_start: be64(sb, 48),
            ag_blocks: be32(sb, 84),
            ag_count: be32(sb, 88),
            log_blocks: be32(sb, 96),
            sector_size: be16(sb, 102),
            inodes_per_block: be16(sb, 106),
            inop_blog: sb[123] as u32,
            ag_blk_log: sb[124] as u32,
        };
        let bad = |field: &str, why: String| {
            Err(format!(
                "the XFS superblock holds an impossible {field} ({why}; it may be damaged)"
            ))
        };
        let bs = g.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return bad(
                "block size",
                format!("{bs} bytes, not a power of two from 512 to 65536"),
            );
        }
        let ss = g.sector_size;
        if !ss.is_power_of_two() || ss < 512 || ss > bs {
            return bad(
                "sector size",
                format!("{ss} bytes, not a power of two from 512 to the block size {bs}"),
            );
        }
        // An inode is at least 256 bytes.
        if g.inop_blog > 8
            || g.inodes_per_block != 1 << g.inop_blog
            || g.inodes_per_block * 256 > bs
        {
            return bad(
                "inodes per block",
                format!("{} (log2 {})", g.inodes_per_block, g.inop_blog),
            );
        }
        if g.ag_blocks == 0
            || g.ag_blk_log >= 32
            || (1u64 << g.ag_blk_log) < g.ag_blocks
            || (g.ag_blk_log > 0 && (1u64 << (g.ag_blk_log - 1)) >= g.ag_blocks)
        {
            return bad(
                "AG size",
                format!("{} blocks, log2 rounded up {}", g.ag_blocks, g.ag_blk_log),
            );
        }
        // Every AG but the last is full: the block count lies within the last AG.
        let all = g.ag_count.saturating_mul(g.ag_blocks);
        if g.ag_count == 0 || g.blocks > all || g.blocks <= all - g.ag_blocks {
            return bad(
                "AG count",
                format!(
                    "{} AGs of {} blocks for {} blocks",
                    g.ag_count, g.ag_blocks, g.blocks
                ),
            );
        }
        if g.blocks.checked_mul(bs).is_none_or(|n| n > region_len) {
            return bad(
                "block count",
                format!(
                    "{} blocks of {bs} bytes, more than the region's {region_len} bytes",
                    g.blocks
                ),
            );
        }
        if g.log_start != 0 {
            let log = g.linear_checked(g.log_start);
            if log
                .and_then(|l| l.checked_add(g.log_blocks))
                .is_none_or(|end| g.log_blocks == 0 || end > g.blocks)
            {
                return bad(
                    "log position",
                    format!(
                        "{} blocks from fsblock {}, not inside the filesystem's {} blocks",
                        g.log_blocks, g.log_start, g.blocks
                    ),
                );
            }
        }
        Ok(g)
    }

    /// The linear block of fsblock `f`, when `f` names a block of the filesystem.
    pub(super) fn linear_checked(&self, f: u64) -> Option<u64> {
        let (ag, agbno) = (f >> self.ag_blk_log, f & ((1 << self.ag_blk_log) - 1));
        let b = (ag < self.ag_count && agbno < self.ag_blocks)
            .then(|| ag.checked_mul(self.ag_blocks)?.checked_add(agbno))??;
        (b < self.blocks).then_some(b)
    }

    /// The byte offset of the internal log's first block from the region's start.
    pub(super) fn log_offset(&self) -> Option<u64> {
        if self.log_start == 0 {
            return None;
        }
        self.linear_checked(self.log_start)?
            .checked_mul(self.block_size)
    }

    /// The fsblock number (AG number shifted above the AG block) of linear block `b`.
    pub(super) fn fsblock(&self, b: u64) -> u64 {
        ((b / self.ag_blocks) << self.ag_blk_log) | (b % self.ag_blocks)
    }

    /// The linear block of fsblock `f`.
    pub(super) fn linear(&self, f: u64) -> u64 {
        (f >> self.ag_blk_log)
            .saturating_mul(self.ag_blocks)
            .saturating_add(f & ((1 << self.ag_blk_log) - 1))
    }

    /// The inode numbers linear block `b` would hold if it is part of an inode chunk.
    pub(super) fn inodes_in(&self, b: u64) -> std::ops::Range<u64> {
        let (ag, agbno) = (b / self.ag_blocks, b % self.ag_blocks);
        let first = (ag << (self.ag_blk_log + self.inop_blog)) | (agbno << self.inop_blog);
        first..first + self.inodes_per_block
    }

    /// The owner of linear block `b` that the superblock alone tells: an AG's header sectors
    /// or the internal log.
    pub(super) fn fixed(&self, b: u64) -> Option<Owner> {
        let (ag, agbno) = (b / self.ag_blocks, b % self.ag_blocks);
        if ag < self.ag_count && agbno * self.block_size < 4 * self.sector_size {
            return Some(ag_header(ag));
        }
        let log = self.linear(self.log_start);
        if self.log_start != 0 && (log..log.saturating_add(self.log_blocks)).contains(&b) {
            return Some(log_owner());
        }
        None
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn fsblock_numbers_round_trip() {
        let g = sample();
        assert_eq!(g.fsblock(19200 + 10), 32768 + 10);
        assert_eq!(g.linear(65542), 38406);
        assert_eq!(g.inodes_in(19200 + 16).start, 262272);
        assert!(matches!(
            g.fixed(19200),
            Some(Owner::Structure {
                owner: "ag-header",
                ..
            })
        ));
        assert!(matches!(
            g.fixed(38406),
            Some(Owner::Structure { owner: "log", .. })
        ));
        assert_eq!(g.fixed(17), None);
    }

    /// The superblock of `g` (the fields `Geometry::parse` reads).
    fn superblock(g: &Geometry) -> Vec<u8> {
        let mut sb = vec![0u8; 512];
        sb[..4].copy_from_slice(b"XFSB");
        sb[4..8].copy_from_slice(&(g.block_size as u32).to_be_bytes());
        sb[8..16].copy_from_slice(&g.blocks.to_be_bytes());
        sb[48..56].copy_from_slice(&g.log_start.to_be_bytes());
        sb[84..88].copy_from_slice(&(g.ag_blocks as u32).to_be_bytes());
        sb[88..92].copy_from_slice(&(g.ag_count as u32).to_be_bytes());
        sb[96..100].copy_from_slice(&(g.log_blocks as u32).to_be_bytes());
        sb[102..104].copy_from_slice(&(g.sector_size as u16).to_be_bytes());
        sb[106..108].copy_from_slice(&(g.inodes_per_block as u16).to_be_bytes());
        sb[123] = g.inop_blog as u8;
        sb[124] = g.ag_blk_log as u8;
        sb
    }

    pub(in crate::forensics::xfs) fn sample() -> Geometry {
        Geometry {
            block_size: 4096,
            blocks: 76800,
            ag_blocks: 19200,
            ag_count: 4,
            ag_blk_log: 15,
            inodes_per_block: 8,
            inop_blog: 3,
            sector_size: 512,
            log_start: 65542,
            log_blocks: 16384,
        }
    }

    /// A change to a geometry, as a lost write to its superblock might make it.
    type Damage = fn(&mut Geometry);

    #[test]
    fn a_damaged_superblock_is_refused_naming_its_field() {
        let len = 76800 * 4096;
        let g = sample();
        assert_eq!(Geometry::parse(&superblock(&g), len), Ok(g.clone()));
        assert_eq!(g.log_offset(), Some(38406 * 4096));
        let cases: [(&str, Damage, u64); 13] = [
            ("block size", |g| g.block_size = 3000, len),
            ("block size", |g| g.block_size = 1 << 20, len),
            ("sector size", |g| g.sector_size = 8192, len),
            ("inodes per block", |g| g.inop_blog = 200, len),
            ("AG size", |g| g.ag_blocks = 0, len),
            ("AG size", |g| g.ag_blk_log = 200, len),
            ("AG count", |g| g.ag_count = 0, len),
            ("AG count", |g| g.ag_count = 400, len),
            ("block count", |_| (), len - 4096),
            // A log start up to 2^64: the multiplication that placed it overflowed.
            ("log position", |g| g.log_start = u64::MAX, len),
            ("log position", |g| g.log_start = 5 << 15, len),
            // The log runs past the last block.
            ("log position", |g| g.log_start = 3 << 15 | 19000, len),
            ("log position", |g| g.log_blocks = 0, len),
        ];
        for (field, damage, len) in cases {
            let mut d = g.clone();
            damage(&mut d);
            let e = Geometry::parse(&superblock(&d), len).expect_err(field);
            assert!(e.contains(&format!("impossible {field} (")), "{field}: {e}");
        }
        // An external log (no internal log start) is no error.
        let mut d = g.clone();
        d.log_start = 0;
        let d = Geometry::parse(&superblock(&d), len).expect("external log");
        assert_eq!(d.log_offset(), None);
        assert_eq!(d.fixed(38406), None);
    }

    #[test]
    fn random_superblocks_never_panic_nor_place_a_log_outside() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = superblock(&sample());
        for _ in 0..20000 {
            let mut sb = base.clone();
            // Damage a few of the bytes parse reads.
            for _ in 0..1 + next() % 4 {
                let at = [4, 8, 12, 48, 52, 84, 88, 96, 102, 106, 123, 124][next() as usize % 12];
                sb[at + (next() % 4) as usize] = next() as u8;
            }
            let len = next() % (1 << 40);
            if let Ok(g) = Geometry::parse(&sb, len) {
                if let Some(at) = g.log_offset() {
                    assert!(at + g.log_blocks * g.block_size <= len, "{g:?}");
                }
                for b in [0, g.blocks / 2, g.blocks - 1] {
                    let _ = (g.fixed(b), g.inodes_in(b), g.fsblock(b));
                    assert_eq!(g.linear_checked(g.fsblock(b)), Some(b));
                }
            }
        }
    }
}
