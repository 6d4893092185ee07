//! The filesystem seam of the block-to-file mapping: what a region holds ([`detect`]: a
//! filesystem lostwrite reads, one it only recognises by its magic, or nothing it knows), the
//! readers behind one interface ([`Filesystem`]: ext2/3/4 through debugfs, XFS through xfs_db),
//! the owner of a filesystem block they all answer with ([`Owner`]), and the deadline every
//! helper program runs under ([`run_with_deadline`]). A third filesystem is one more
//! [`Detected`] and [`Filesystem`] variant and a module answering `owners`.

use super::ext4::{self, ExtFs};
use super::partition::Region;
use super::xfs::{self, XfsFs};
use crate::device::BlockDevice;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What owns one filesystem block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Data of a regular file (or symlink): its path and the byte range within it.
    FileData {
        /// Inode number.
        ino: u64,
        /// Path, when the inode has a name.
        path: Option<String>,
        /// Byte offset of this block within the file, when the file's extent map gives it.
        file_offset: Option<u64>,
    },
    /// A block of a directory's entries.
    Directory {
        /// Inode number.
        ino: u64,
        /// Path.
        path: Option<String>,
    },
    /// An extent-tree (or indirect) block: the map of where a file's data lives.
    BlockMap {
        /// Inode number.
        ino: u64,
        /// Path.
        path: Option<String>,
    },
    /// The filesystem journal.
    Journal,
    /// A block of an inode table.
    InodeTable {
        /// Block group.
        group: u64,
        /// First and last inode numbers stored in the block.
        inodes: (u64, u64),
        /// Paths of the named inodes among them.
        paths: Vec<String>,
    },
    /// A block allocation bitmap.
    BlockBitmap {
        /// Block group.
        group: u64,
    },
    /// An inode allocation bitmap.
    InodeBitmap {
        /// Block group.
        group: u64,
    },
    /// A superblock copy.
    Superblock {
        /// Block group.
        group: u64,
    },
    /// A group descriptor table copy.
    Descriptors {
        /// Block group.
        group: u64,
    },
    /// Blocks reserved for growing the descriptor table.
    ReservedGdt,
    /// Another reserved inode (bad blocks, boot loader, quota ...).
    Special {
        /// Inode number.
        ino: u64,
    },
    /// Not used by any inode or by the filesystem's own structures.
    Free,
    /// A structure of a filesystem other than ext2/3/4, in that filesystem's own words (the
    /// reader that found it knows them best).
    Structure {
        /// Short kind, as in `FileRef::owner` ("ag-header", "inode-chunk", "log", ...).
        owner: &'static str,
        /// What the block is.
        what: String,
        /// What a user will see when it is damaged.
        symptom: String,
    },
}

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

/// What a finished helper program printed.
pub struct Output {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` with `input` on its standard input, killing it (and saying so) if it has not
/// finished within `deadline`: a reader of a damaged filesystem may loop. It runs in a process
/// group of its own, killed and reaped on every way out, so that nothing it started lingers
/// holding its output pipes open.
pub fn run_with_deadline(
    cmd: &mut Command,
    input: String,
    deadline: Duration,
) -> Result<Output, String> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let name = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut child = Group {
        child,
        reaped: false,
    };
    let mut stdin = child.child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let drain = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(child.child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.child.stderr.take().map(|s| Box::new(s) as _));
    let t = Instant::now();
    loop {
        match child.exited() {
            Ok(true) => break,
            Ok(false) if t.elapsed() > deadline => {
                return Err(format!(
                    "{name} did not finish within {} and was stopped",
                    seconds(deadline)
                ));
            }
            Ok(false) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    let status = child.reap().map_err(|e| format!("{name}: {e}"))?;
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A child leading its own process group: the group is killed and the child reaped when this
/// is dropped, whichever way the caller leaves.
struct Group {
    child: std::process::Child,
    /// Whether `child` has been waited for.
    reaped: bool,
}

impl Group {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Whether the child has exited, without reaping it (so its group id stays its own).
    fn exited(&self) -> std::io::Result<bool> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid()), flags) {
            Ok(WaitStatus::StillAlive) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Kills what is left of the group and reaps the child.
    fn reap(&mut self) -> std::io::Result<std::process::ExitStatus> {
        // The child is not reaped yet, so the group id is still its own.
        let _ = nix::sys::signal::killpg(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        self.reaped = true;
        self.child.wait()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.reap();
        }
    }
}

/// A duration as a person reads it: "200 ms", "1.5 s", "60 s".
fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_that_hangs_is_stopped_at_its_deadline() {
        let t = Instant::now();
        let e = run_with_deadline(
            Command::new("sleep").arg("30"),
            String::new(),
            Duration::from_millis(200),
        )
        .err()
        .expect("stopped");
        assert!(e.contains("did not finish within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let o = run_with_deadline(
            &mut Command::new("cat"),
            "hi\n".into(),
            Duration::from_secs(10),
        )
        .expect("cat runs");
        assert_eq!(o.stdout, "hi\n");
    }

    #[test]
    fn what_a_helper_leaves_running_is_stopped_with_it() {
        // The grandchild keeps the output pipe open: only killing the group ends the read.
        let t = Instant::now();
        let o = run_with_deadline(
            Command::new("sh").args(["-c", "sleep 30 & echo started"]),
            String::new(),
            Duration::from_secs(10),
        )
        .expect("sh runs");
        assert_eq!(o.stdout, "started\n");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(seconds(Duration::from_millis(200)), "200 ms");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_secs(60)), "60 s");
    }
}
