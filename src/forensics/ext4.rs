//! Who owns a block in an ext2/3/4 filesystem, answered by `debugfs` (e2fsprogs): `icheck`
//! (block → inode), `ncheck` (inode → path), `stat` (type, size, and the block map with its
//! extent-tree or indirect blocks) and `stats` (the group layout: bitmaps, inode tables,
//! superblock and descriptor copies). debugfs runs read-only in catastrophic mode (`-c`), which
//! does not trust the allocation bitmaps: the filesystem being examined may be damaged, and
//! under a deadline, so that a damaged one cannot hang the report.
//! docs/DEPENDENCIES.md says why debugfs rather than a native reader.

use super::deadline::run_with_deadline;
pub use super::owner::Owner;
use super::partition::Region;
use crate::device::BlockDevice;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

/// The geometry `stats` reports.
#[derive(Clone, Debug, Default)]
struct Layout {
    block_size: u64,
    first_block: u64,
    block_count: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inode_size: u64,
    inode_blocks_per_group: u64,
    desc_size: u64,
    reserved_gdt: u64,
    journal_inode: u64,
    sparse_super: bool,
    meta_bg: bool,
    groups: Vec<(u64, u64, u64)>,
}

/// An ext2/3/4 filesystem in a region of a device.
pub struct ExtFs {
    arg: String,
    /// "ext2", "ext3" or "ext4".
    pub kind: &'static str,
    /// Filesystem block size in bytes.
    pub block_size: u64,
    layout: Layout,
}

/// Looks for an ext2/3/4 superblock at the start of `r`.
pub fn detect(dev: &dyn BlockDevice, r: &Region) -> Option<&'static str> {
    if r.len < 2048 {
        return None;
    }
    let mut sb = [0u8; 1024];
    dev.read_at(&mut sb, r.start + 1024).ok()?;
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return None;
    }
    let compat = u32::from_le_bytes(sb[92..96].try_into().ok()?);
    let incompat = u32::from_le_bytes(sb[96..100].try_into().ok()?);
    Some(if incompat & 0x40 != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    })
}

/// Runs debugfs with `commands` and splits its output per command.
/// How long one debugfs run may take: `icheck` reads every inode, minutes on a large
/// filesystem; a damaged one must not hang the report.
const DEBUGFS_DEADLINE: Duration = Duration::from_secs(15 * 60);

fn debugfs(arg: &str, commands: &[String]) -> Result<Vec<String>, String> {
    let mut input = String::new();
    for c in commands {
        input.push_str(c);
        input.push('\n');
    }
    let out = run_with_deadline(
        Command::new("debugfs").args(["-c", "-f", "-"]).arg(arg),
        input,
        DEBUGFS_DEADLINE,
    )
    .map_err(|e| {
        if e.starts_with("cannot run") {
            format!("{e} (install e2fsprogs)")
        } else {
            e
        }
    })?;
    let text = &out.stdout;
    let mut parts: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("debugfs: ") {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push_str(line);
            p.push('\n');
        }
    }
    if parts.len() != commands.len() {
        return Err(format!(
            "debugfs could not read the filesystem on {arg}: {}",
            out.stderr.trim()
        ));
    }
    Ok(parts)
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn parse_layout(stats: &str) -> Result<Layout, String> {
    let need = |n: &str| field(stats, n).ok_or_else(|| format!("debugfs stats has no {n:?}"));
    let features = stats
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .unwrap_or("");
    let mut groups = Vec::new();
    for l in stats.lines() {
        let l = l.trim_start();
        if let Some(rest) = l.strip_prefix("Group ") {
            let num = |key: &str| {
                rest.split(key)
                    .nth(1)
                    .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u64>().ok())
            };
            if let (Some(b), Some(i), Some(t)) = (
                num("block bitmap at "),
                num("inode bitmap at "),
                num("inode table at "),
            ) {
                groups.push((b, i, t));
            }
        }
    }
    Ok(Layout {
        block_size: need("Block size")?,
        first_block: need("First block")?,
        block_count: need("Block count")?,
        blocks_per_group: need("Blocks per group")?,
        inodes_per_group: need("Inodes per group")?,
        inode_size: need("Inode size")?,
        inode_blocks_per_group: need("Inode blocks per group")?,
        desc_size: field(stats, "Group descriptor size").unwrap_or(32),
        reserved_gdt: field(stats, "Reserved GDT blocks").unwrap_or(0),
        journal_inode: field(stats, "Journal inode").unwrap_or(0),
        sparse_super: features.contains("sparse_super"),
        meta_bg: features.contains("meta_bg"),
        groups,
    })
}

fn has_super(g: u64, sparse: bool) -> bool {
    if g <= 1 || !sparse {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut x = g;
        while x % b == 0 {
            x /= b;
        }
        x == 1
    })
}

impl Layout {
    fn group_count(&self) -> u64 {
        (self.block_count - self.first_block).div_ceil(self.blocks_per_group.max(1))
    }

    /// The filesystem structure a block belongs to, if it is one.
    fn structure(&self, blk: u64) -> Option<Owner> {
        for (g, &(bb, ib, it)) in self.groups.iter().enumerate() {
            let g = g as u64;
            if blk == bb {
                return Some(Owner::BlockBitmap { group: g });
            }
            if blk == ib {
                return Some(Owner::InodeBitmap { group: g });
            }
            if (it..it + self.inode_blocks_per_group).contains(&blk) {
                let per_block = self.block_size / self.inode_size.max(1);
                let first = g * self.inodes_per_group + (blk - it) * per_block + 1;
                return Some(Owner::InodeTable {
                    group: g,
                    inodes: (first, first + per_block - 1),
                    paths: Vec::new(),
                });
            }
        }
        if self.meta_bg {
            return None;
        }
        let g = blk.saturating_sub(self.first_block) / self.blocks_per_group.max(1);
        if g < self.group_count() && has_super(g, self.sparse_super) {
            let start = self.first_block + g * self.blocks_per_group;
            let gdt = (self.group_count() * self.desc_size).div_ceil(self.block_size);
            // The superblock starts the group (block 1 with 1 KiB blocks, inside block 0 otherwise).
            let sb = start;
            if blk == sb {
                return Some(Owner::Superblock { group: g });
            }
            if (sb + 1..sb + 1 + gdt).contains(&blk) {
                return Some(Owner::Descriptors { group: g });
            }
            if (sb + 1 + gdt..sb + 1 + gdt + self.reserved_gdt).contains(&blk) {
                return Some(Owner::ReservedGdt);
            }
        }
        None
    }
}

/// One inode as `stat` describes it.
struct Inode {
    dir: bool,
    /// (first logical block, first physical block, count) for data.
    data: Vec<(u64, u64, u64)>,
    /// Physical blocks of the block map (extent-tree or indirect blocks).
    map: BTreeSet<u64>,
}

impl Inode {
    /// The byte offset within the file of its data block `b`, when the block map `stat` gave
    /// places it (and the offset fits in 64 bits).
    fn file_offset(&self, b: u64, block_size: u64) -> Option<u64> {
        let &(l, p, _) = self.data.iter().find(|&&(_, p, n)| b >= p && b - p < n)?;
        l.checked_add(b - p)?.checked_mul(block_size)
    }
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let s = s.trim().trim_end_matches("[u]");
    match s.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => {
            let v = s.parse().ok()?;
            Some((v, v))
        }
    }
}

fn parse_stat(text: &str) -> Inode {
    let dir = text
        .lines()
        .next()
        .is_some_and(|l| l.contains("Type: directory"));
    let mut inode = Inode {
        dir,
        data: Vec::new(),
        map: BTreeSet::new(),
    };
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("EXTENTS:") && !l.starts_with("BLOCKS:"));
    if lines.next().is_none() {
        return inode;
    }
    let body: String = lines
        .take_while(|l| !l.starts_with("TOTAL"))
        .collect::<Vec<_>>()
        .join(" ");
    for entry in body.split(", ") {
        let Some((logical, physical)) = entry.trim().split_once("):") else {
            continue;
        };
        let logical = logical.trim_start_matches('(');
        let Some((p0, p1)) = parse_range(physical) else {
            continue;
        };
        if logical.starts_with("ETB") || logical.contains("IND") {
            inode.map.extend(p0..=p1);
        } else if let Some((l0, _)) = parse_range(logical) {
            inode.data.push((l0, p0, p1 - p0 + 1));
        }
    }
    inode
}

fn normalize(path: &str) -> String {
    let mut p = path.to_string();
    while p.contains("//") {
        p = p.replace("//", "/");
    }
    p
}

/// Most inodes examined in one report (the rest are named by number only).
const MAX_INODES: usize = 4096;

impl ExtFs {
    /// Opens the filesystem of `region` on `device_path` (a path debugfs can open).
    pub fn open(device_path: &str, kind: &'static str, r: &Region) -> Result<ExtFs, String> {
        let arg = if r.start == 0 {
            device_path.to_string()
        } else {
            format!("{device_path}?offset={}", r.start)
        };
        let out = debugfs(&arg, &["stats".to_string()])?;
        let layout = parse_layout(&out[0])?;
        Ok(ExtFs {
            arg,
            kind,
            block_size: layout.block_size,
            layout,
        })
    }

    /// The owner of each filesystem block asked about.
    pub fn owners(&self, blocks: &BTreeSet<u64>) -> Result<HashMap<u64, Owner>, String> {
        let list: Vec<u64> = blocks.iter().copied().collect();
        let icheck: Vec<String> = list
            .chunks(256)
            .map(|c| {
                let nums: Vec<String> = c.iter().map(|b| b.to_string()).collect();
                format!("icheck {}", nums.join(" "))
            })
            .collect();
        let mut found: HashMap<u64, u64> = HashMap::new();
        for part in debugfs(&self.arg, &icheck)? {
            for line in part.lines().skip(1) {
                let mut it = line.split('\t');
                if let (Some(b), Some(i)) = (it.next(), it.next()) {
                    if let (Ok(b), Ok(i)) = (b.trim().parse::<u64>(), i.trim().parse::<u64>()) {
                        found.insert(b, i);
                    }
                }
            }
        }
        let mut owners: HashMap<u64, Owner> = HashMap::new();
        let mut inodes: BTreeSet<u64> = found.values().copied().collect();
        for &b in blocks {
            if !found.contains_key(&b) {
                let o = self.layout.structure(b).unwrap_or(Owner::Free);
                if let Owner::InodeTable { inodes: (a, z), .. } = &o {
                    inodes.extend(*a..=*z);
                }
                owners.insert(b, o);
            }
        }
        let inodes: Vec<u64> = inodes.into_iter().take(MAX_INODES).collect();
        let mut cmds: Vec<String> = inodes.iter().map(|i| format!("stat <{i}>")).collect();
        for c in inodes.chunks(256) {
            let nums: Vec<String> = c.iter().map(|i| i.to_string()).collect();
            cmds.push(format!("ncheck {}", nums.join(" ")));
        }
        let out = if cmds.is_empty() {
            Vec::new()
        } else {
            debugfs(&self.arg, &cmds)?
        };
        let mut stats: HashMap<u64, Inode> = HashMap::new();
        for (i, text) in inodes.iter().zip(&out) {
            stats.insert(*i, parse_stat(text));
        }
        let mut names: HashMap<u64, String> = HashMap::from([(2, "/".to_string())]);
        for text in out.iter().skip(inodes.len()) {
            for line in text.lines().skip(1) {
                if let Some((i, p)) = line.split_once('\t') {
                    if let Ok(i) = i.trim().parse::<u64>() {
                        names.entry(i).or_insert_with(|| normalize(p.trim()));
                    }
                }
            }
        }
        let name = |i: u64| names.get(&i).cloned();
        for (&b, &ino) in &found {
            let o = if ino == self.layout.journal_inode && ino != 0 {
                Owner::Journal
            } else if ino == 7 {
                Owner::ReservedGdt
            } else if ino < 11 && ino != 2 {
                Owner::Special { ino }
            } else {
                match stats.get(&ino) {
                    Some(s) if s.map.contains(&b) => Owner::BlockMap {
                        ino,
                        path: name(ino),
                    },
                    Some(s) if s.dir => Owner::Directory {
                        ino,
                        path: name(ino),
                    },
                    // Where stat does not place the block (or gave nothing), the file is
                    // named without a byte range rather than claiming its start.
                    s => Owner::FileData {
                        ino,
                        path: name(ino),
                        file_offset: s.and_then(|s| s.file_offset(b, self.block_size)),
                    },
                }
            };
            owners.insert(b, o);
        }
        for o in owners.values_mut() {
            if let Owner::InodeTable {
                inodes: (a, z),
                paths,
                ..
            } = o
            {
                *paths = (*a..=*z).filter_map(&name).collect();
            }
        }
        Ok(owners)
    }
}

impl ExtFs {
    /// The contents of the regular files at `paths`, dumped by debugfs into a private
    /// temporary directory in one run. Missing files, paths debugfs could not take as one
    /// argument, and files over `max` bytes are left out.
    pub fn read_files(
        &self,
        paths: &[String],
        max: u64,
    ) -> Result<HashMap<String, Vec<u8>>, String> {
        let dir = tempfile::Builder::new()
            .prefix("lostwrite-dump")
            .tempdir()
            .map_err(|e| format!("making a directory for debugfs dump: {e}"))?;
        let wanted: Vec<(usize, &String)> = paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.starts_with('/') && !p.contains(['"', '\n', '\\']))
            .collect();
        let cmds: Vec<String> = wanted
            .iter()
            .map(|(i, p)| {
                format!(
                    "dump \"{p}\" \"{}\"",
                    dir.path().join(i.to_string()).display()
                )
            })
            .collect();
        if cmds.is_empty() {
            return Ok(HashMap::new());
        }
        debugfs(&self.arg, &cmds)?;
        let mut out = HashMap::new();
        for (i, p) in wanted {
            let f = dir.path().join(i.to_string());
            if std::fs::metadata(&f).is_ok_and(|m| m.is_file() && m.len() <= max) {
                let data = std::fs::read(&f).map_err(|e| format!("reading {p} as dumped: {e}"))?;
                out.insert(p.clone(), data);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_block_maps_parse() {
        let s = "Inode: 13   Type: regular\nEXTENTS:\n(ETB0):1300, (0-11):1000-1011, (12):2000\n";
        let i = parse_stat(s);
        assert!(!i.dir);
        assert_eq!(i.data, vec![(0, 1000, 12), (12, 2000, 1)]);
        assert!(i.map.contains(&1300));
        let s = "Inode: 14   Type: regular\nBLOCKS:\n(0-11):1186-1197, (IND):1198, (12-267):1199-1454, (DIND):1455\nTOTAL: 590\n";
        let i = parse_stat(s);
        assert_eq!(i.map.iter().copied().collect::<Vec<_>>(), vec![1198, 1455]);
        assert_eq!(i.data[1], (12, 1199, 256));
    }

    #[test]
    fn a_block_stat_does_not_place_has_no_file_offset() {
        let s = "Inode: 13   Type: regular\nEXTENTS:\n(ETB0):1300, (0-11):1000-1011, (12):2000\n";
        let i = parse_stat(s);
        assert_eq!(i.file_offset(1003, 4096), Some(3 * 4096));
        assert_eq!(i.file_offset(2000, 4096), Some(12 * 4096));
        // Not in the listed extents (stat cut short, or the block map damaged).
        assert_eq!(i.file_offset(1500, 4096), None);
        // The extent-tree block is no data: it has no place in the file.
        assert_eq!(i.file_offset(1300, 4096), None);
        // A stat without a block list, or with logical ranges it cannot read.
        let bare = parse_stat("Inode: 15   Type: regular\nSize: 4096\n");
        assert_eq!(bare.file_offset(1000, 4096), None);
        let unreadable = parse_stat("Inode: 16   Type: regular\nEXTENTS:\n(?):1000-1011\n");
        assert_eq!(unreadable.file_offset(1000, 4096), None);
    }

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..30).filter(|&g| has_super(g, true)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27]);
    }
}
