//! The filesystem seam of the block-to-file mapping: what a region holds ([`detect`]: a
//! filesystem lostwrite reads, one it only recognises by its magic, or nothing it knows), the
//! readers behind one interface ([`Filesystem`]: ext2/3/4 through debugfs, XFS through xfs_db),
//! and the owner of a filesystem block they all answer with
//! ([`Owner`], defined in `owner.rs` below them all). A third filesystem is one more
//! [`Detected`] and [`Filesystem`] variant and a module answering `owners`.

use super::ext4::{self, ExtFs};
pub use super::owner::Owner;
use super::partition::Region;
use super::xfs::{self, XfsFs};
use crate::device::BlockDevice;
use std::collections::{BTreeSet, HashMap};

/// A filesystem (or volume format) lostwrite recognises but cannot map to files, with what the
/// user can do instead.
#[derive(Debug)]
pub struct Foreign {
    /// Its name: "btrfs", "swap", ...
    pub name: &'static str,
    /// What lostwrite can say, and the tool that can map its blocks.
    pub advice: &'static str,
}

/// What a region holds.
#[derive(Debug)]
pub enum Detected {
    /// ext2, ext3 or ext4.
    Ext(&'static str),
    /// XFS.
    Xfs,
    /// Recognised, not readable by lostwrite.
    Foreign(&'static Foreign),
}

impl Detected {
    /// The filesystem's name.
    pub fn name(&self) -> &'static str {
        match self {
            Detected::Ext(k) => k,
            Detected::Xfs => "xfs",
            Detected::Foreign(f) => f.name,
        }
    }
}

/// A filesystem lostwrite can ask who owns a block.
pub enum Filesystem {
    /// ext2/3/4, through debugfs.
    Ext(ExtFs),
    /// XFS, through xfs_db.
    Xfs(XfsFs),
}

impl Filesystem {
    /// Opens the filesystem `kind` found in region `r`. `local` gives a path debugfs can open
    /// (the device, or a file view of an export); `device_path` is the device as the user named
    /// it. None for a recognised filesystem lostwrite does not read.
    pub fn open(
        kind: &Detected,
        dev: &dyn BlockDevice,
        r: &Region,
        device_path: &str,
        local: &mut dyn FnMut() -> Result<String, String>,
    ) -> Option<Result<Filesystem, String>> {
        Some(match kind {
            Detected::Ext(k) => local()
                .and_then(|p| ExtFs::open(&p, k, r))
                .map(Filesystem::Ext),
            Detected::Xfs => XfsFs::open(dev, r, device_path).map(Filesystem::Xfs),
            Detected::Foreign(_) => return None,
        })
    }

    /// Filesystem block size in bytes.
    pub fn block_size(&self) -> u64 {
        match self {
            Filesystem::Ext(f) => f.block_size,
            Filesystem::Xfs(f) => f.block_size,
        }
    }

    /// The owner of each filesystem block asked about (numbered from the region's start in
    /// units of [`Self::block_size`]). Blocks it cannot say anything about are left out, and
    /// what could not be mapped is pushed to `notes`.
    pub fn owners(
        &self,
        blocks: &BTreeSet<u64>,
        notes: &mut Vec<String>,
    ) -> Result<HashMap<u64, Owner>, String> {
        match self {
            Filesystem::Ext(f) => f.owners(blocks),
            Filesystem::Xfs(f) => f.owners(blocks, notes),
        }
    }

    /// The contents of the regular files at `paths` (absolute, from the filesystem's root),
    /// read through the same tool that maps its blocks, in one run. A path that is missing,
    /// not a regular file, or larger than `max` bytes is left out.
    pub fn read_files(
        &self,
        paths: &[String],
        max: u64,
    ) -> Result<HashMap<String, Vec<u8>>, String> {
        match self {
            Filesystem::Ext(f) => f.read_files(paths, max),
            Filesystem::Xfs(f) => f.read_files(paths, max),
        }
    }
}

/// Formats recognised by a magic number at a fixed place, with what the user can do.
static FOREIGN: &[(u64, &[u8], Foreign)] = &[
    (0x10040, b"_BHRfS_M", Foreign {
        name: "btrfs",
        advice: "btrfs checksums its data: `btrfs scrub` on a read-only mounted copy names the files whose blocks fail, and `btrfs inspect-internal logical-resolve` maps a logical address to files",
    }),
    (3, b"NTFS    ", Foreign {
        name: "ntfs",
        advice: "`ntfscluster --cluster N` (ntfs-3g) names the file owning a cluster: cluster = (finding offset - partition start) / cluster size",
    }),
    (3, b"EXFAT   ", Foreign {
        name: "exfat",
        advice: "`fsck.exfat -n` on a copy checks its structures; file contents have no checksums, so restore files written in the window",
    }),
    (82, b"FAT32   ", Foreign {
        name: "vfat",
        advice: "`fsck.fat -n` on a copy checks the FAT and directories; file contents have no checksums, so restore files written in the window",
    }),
    (54, b"FAT16   ", Foreign {
        name: "vfat",
        advice: "`fsck.fat -n` on a copy checks the FAT and directories; file contents have no checksums, so restore files written in the window",
    }),
    (54, b"FAT12   ", Foreign {
        name: "vfat",
        advice: "`fsck.fat -n` on a copy checks the FAT and directories; file contents have no checksums, so restore files written in the window",
    }),
    (3, b"-FVE-FS-", Foreign {
        name: "bitlocker",
        advice: "the blocks are encrypted: unlock the volume and check the filesystem inside; a damaged metadata block can make it unopenable",
    }),
    (4086, b"SWAPSPACE2", Foreign {
        name: "swap",
        advice: "swap holds no files: lost writes there only hurt processes that were running (their swapped-out pages); after a reboot it is harmless",
    }),
    (4086, b"SWAP-SPACE", Foreign {
        name: "swap",
        advice: "swap holds no files: lost writes there only hurt processes that were running (their swapped-out pages); after a reboot it is harmless",
    }),
    (0, b"LUKS\xba\xbe", Foreign {
        name: "luks",
        advice: "the blocks are encrypted: open the volume (`cryptsetup open --readonly`) to check the filesystem inside; a damaged header (the first MiBs) makes it unopenable without a header backup",
    }),
    (512 + 24, b"LVM2 001", Foreign {
        name: "lvm2-pv",
        advice: "an LVM2 physical volume inside a logical volume (nested LVM is not read): `pvs --segments` and `lvs --segments -o+seg_pe_ranges` map the damaged offsets to a logical volume, whose filesystem can then be checked",
    }),
    (0x1000, b"\xfc\x4e\x2b\xa9", Foreign {
        name: "linux-raid",
        advice: "a Linux md RAID member: assemble the array read-only and check the filesystem on it; lostwrite does not read md layouts",
    }),
    (0x10034, b"ReIsEr2Fs", Foreign {
        name: "reiserfs",
        advice: "`reiserfsck --check` on a copy checks its tree",
    }),
    (0x10034, b"ReIsEr3Fs", Foreign {
        name: "reiserfs",
        advice: "`reiserfsck --check` on a copy checks its tree",
    }),
    (0x8000, b"JFS1", Foreign {
        name: "jfs",
        advice: "`jfs_fsck -n` on a copy checks its structures",
    }),
    (0x400, b"\x10\x20\xf5\xf2", Foreign {
        name: "f2fs",
        advice: "`fsck.f2fs --dry-run` on a copy checks its structures",
    }),
    (0, b"hsqs", Foreign {
        name: "squashfs",
        advice: "a read-only image: `unsquashfs -l` lists its files; compare it with the original it was built from",
    }),
    (0x8001, b"CD001", Foreign {
        name: "iso9660",
        advice: "a read-only image: compare it with the original it was built from",
    }),
    (0x1018, b"\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81", Foreign {
        name: "bcachefs",
        advice: "bcachefs checksums its data: `bcachefs fsck -n` on a copy names what fails",
    }),
    (0, b"bluestore block device", Foreign {
        name: "ceph-bluestore",
        advice: "a Ceph OSD: `ceph-bluestore-tool fsck --deep` checks every object's checksum",
    }),
];

static ZFS: Foreign = Foreign {
    name: "zfs",
    advice: "ZFS checksums every block from its parent: `zpool scrub` and `zpool status -v` name the files whose blocks fail",
};

/// What region `r` holds, from its magic numbers; None when nothing lostwrite knows.
pub fn detect(dev: &dyn BlockDevice, r: &Region) -> Option<Detected> {
    if let Some(k) = ext4::detect(dev, r) {
        return Some(Detected::Ext(k));
    }
    if xfs::detect(dev, r) {
        return Some(Detected::Xfs);
    }
    let read = |off: u64, len: usize| -> Option<Vec<u8>> {
        if off + len as u64 > r.len {
            return None;
        }
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, r.start + off).ok()?;
        Some(b)
    };
    for (off, magic, f) in FOREIGN {
        if read(*off, magic.len()).is_some_and(|b| b == *magic) {
            return Some(Detected::Foreign(f));
        }
    }
    // ZFS: an uberblock (magic 0x00bab10c, either byte order) in the first label's array.
    if let Some(b) = read(128 << 10, 128 << 10) {
        let magic = 0x00ba_b10c_u64;
        if b.chunks(1024).any(|u| {
            let m = u64::from_le_bytes(u[..8].try_into().expect("8"));
            m == magic || m.swap_bytes() == magic
        }) {
            return Some(Detected::Foreign(&ZFS));
        }
    }
    None
}
