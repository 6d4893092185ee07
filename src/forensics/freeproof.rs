//! When a damaged block the current metadata calls free can be proven free at every generation
//! the ledger saw, and so harmless. The ledger keeps checksums, not contents: older metadata
//! cannot be read back, so "free now" alone proves nothing about the past. What can be proven
//! is that the allocation state never changed: on ext2/3/4, a block's group has one block
//! bitmap; if no ledger block holding that bitmap was written since the ledger began (only its
//! baseline generation, and no finding on it), no allocation or free in that group reached the
//! disk in the ledger's time, so a block the bitmap marks free now (or every free block of a
//! group whose bitmap was never initialised) was free throughout. A journal that still holds
//! transactions to replay, a superblock or descriptor block with a finding, or meta_bg
//! (descriptors spread over the disk) leave it unproven. For an LVM2 volume group the same
//! holds of its metadata: free extents of a VG whose label and metadata areas were never
//! written in the ledger's time were free throughout.

use super::le::{le16, le32};
use super::lvview::Layout;
use crate::device::BlockDevice;
use crate::ledger::state::BlockState;
use crate::ledger::Ledger;
use std::collections::HashSet;

const EXT4_MAGIC: u16 = 0xEF53;
/// s_feature_incompat: the journal holds transactions to replay.
const INCOMPAT_RECOVER: u32 = 0x4;
/// s_feature_incompat: descriptors in meta block groups (spread over the disk).
const INCOMPAT_META_BG: u32 = 0x10;
/// s_feature_incompat: 64-bit block numbers (descriptors of s_desc_size bytes).
const INCOMPAT_64BIT: u32 = 0x80;
/// s_feature_ro_compat: group descriptor checksums (uninit_bg, metadata_csum); without one
/// the BLOCK_UNINIT flag means nothing.
const RO_COMPAT_CSUM: u32 = 0x10 | 0x400;
/// bg_flags: the group's block bitmap was never initialised (every block not holding the
/// filesystem's own structures is free).
const BG_BLOCK_UNINIT: u16 = 0x2;

/// The bytes of a region (a partition, or a logical volume read through its layout) on the
/// disk being reported, and the ledger watching that disk.
pub(super) struct Watched<'a> {
    /// The disk.
    pub dev: &'a dyn BlockDevice,
    /// The region's first byte on the disk (for a region read in place).
    pub start: u64,
    /// The layout of a logical volume assembled from pieces.
    pub layout: Option<&'a Layout>,
    /// The ledger of the disk.
    pub ledger: &'a Ledger,
    /// The ledger blocks with a finding.
    pub findings: &'a HashSet<u64>,
}

impl Watched<'_> {
    /// The disk offset of region byte `off`, and how many bytes from there are contiguous; None
    /// when it lies on another disk.
    fn place(&self, off: u64) -> Option<(u64, u64)> {
        match self.layout {
            Some(l) => match l.to_device(off)? {
                (0, d, run) => Some((d, run)),
                _ => None,
            },
            None => Some((self.start.checked_add(off)?, u64::MAX)),
        }
    }

    /// `len` bytes at region byte `off`, if all are on this disk and readable.
    fn read(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        let mut b = vec![0u8; len];
        let mut done = 0usize;
        while done < len {
            let (d, run) = self.place(off + done as u64)?;
            let take = (len - done).min(usize::try_from(run).unwrap_or(usize::MAX));
            self.dev.read_at(&mut b[done..done + take], d).ok()?;
            done += take;
        }
        Some(b)
    }

    /// Whether region bytes [off, off + len) were never written since the ledger began: every
    /// ledger block holding them is at its baseline generation (or never written) and has no
    /// finding.
    pub fn unwritten(&self, off: u64, len: u64) -> bool {
        let bs = self.ledger.geometry().block_size as u64;
        let mut at = off;
        while at < off.saturating_add(len) {
            let Some((d, run)) = self.place(at) else {
                return false;
            };
            let (first, last) = (d / bs, (d + run.min(off + len - at) - 1) / bs);
            for b in first..=last {
                let never = match self.ledger.state(b) {
                    BlockState::Tracked { generation, .. }
                    | BlockState::Untracked { generation } => generation == 0,
                    BlockState::Unknown { .. } => false,
                };
                if !never || self.findings.contains(&b) {
                    return false;
                }
            }
            at = at.saturating_add(run.min(off + len - at));
        }
        true
    }
}

/// Why ext2/3/4 block `blk` (of the region `w`) was free at every generation the ledger saw, or
/// None when that cannot be proven.
pub(super) fn ext4_free_throughout(w: &Watched, blk: u64) -> Option<String> {
    let sb = w.read(1024, 1024)?;
    if le16(&sb, 56) != EXT4_MAGIC {
        return None;
    }
    let first = le32(&sb, 20) as u64;
    let log = le32(&sb, 24);
    if log > 6 {
        return None;
    }
    let bs = 1024u64 << log;
    let per_group = le32(&sb, 32) as u64;
    let (incompat, ro_compat) = (le32(&sb, 96), le32(&sb, 100));
    if per_group == 0 || incompat & (INCOMPAT_RECOVER | INCOMPAT_META_BG) != 0 {
        return None;
    }
    // A superblock that reverted may be an old one that hid a journal to replay.
    if !w.unwritten_or_clean(1024, 1024) {
        return None;
    }
    let desc = if incompat & INCOMPAT_64BIT != 0 {
        (le16(&sb, 254) as u64).max(32)
    } else {
        32
    };
    let g = blk.checked_sub(first)? / per_group;
    let at = (first + 1)
        .checked_mul(bs)?
        .checked_add(g.checked_mul(desc)?)?;
    let d = w.read(at, desc as usize)?;
    if !w.unwritten_or_clean(at, desc) {
        return None;
    }
    let mut bitmap = le32(&d, 0) as u64;
    if desc >= 64 {
        bitmap |= (le32(&d, 0x20) as u64) << 32;
    }
    let bitmap_at = bitmap.checked_mul(bs)?;
    if !w.unwritten(bitmap_at, bs) {
        return None;
    }
    let how = if ro_compat & RO_COMPAT_CSUM != 0 && le16(&d, 0x12) & BG_BLOCK_UNINIT != 0 {
        "was never initialised (every block of the group outside the filesystem's own structures is free)"
    } else {
        let bit = (blk - first) % per_group;
        let byte = w.read(bitmap_at.checked_add(bit / 8)?, 1)?[0];
        if byte & (1 << (bit % 8)) != 0 {
            return None;
        }
        "marks it free"
    };
    Some(format!(
        "free at every generation the ledger saw: the block bitmap of group {g} (filesystem block {bitmap}) was never written since the ledger began and {how}, so no file owned this block in that time: harmless"
    ))
}

impl Watched<'_> {
    /// Whether region bytes [off, off + len) have no finding (written or not).
    fn unwritten_or_clean(&self, off: u64, len: u64) -> bool {
        let bs = self.ledger.geometry().block_size as u64;
        let Some((d, run)) = self.place(off) else {
            return false;
        };
        if run < len {
            return false;
        }
        (d / bs..=(d + len - 1) / bs).all(|b| !self.findings.contains(&b))
    }
}

/// Why free extents of an LVM2 volume group (its PV at region `w`, label and metadata areas
/// `metadata` as offsets and lengths from the PV's start) were free at every generation the
/// ledger saw, or None when that cannot be proven.
pub(super) fn lvm_free_throughout(
    w: &Watched,
    vg: &str,
    metadata: &[(u64, u64)],
) -> Option<String> {
    let label = (0u64, 2048u64);
    std::iter::once(&label)
        .chain(metadata)
        .all(|&(o, l)| w.unwritten(o, l))
        .then(|| format!(
            "free at every generation the ledger saw: the label and metadata of volume group {vg} on this physical volume were never written since the ledger began, so no logical volume used these extents in that time: harmless"
        ))
}
