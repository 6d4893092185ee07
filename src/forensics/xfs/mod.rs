//! Who owns a block in an XFS filesystem, answered by `xfs_db` (xfsprogs) run read-only:
//! `blockget -n` walks every AG's headers and btrees, every inode and its extent map and every
//! directory, `blockuse -n` then names each block's type and owning inode and path, `ncheck -i`
//! names the inodes of an inode chunk, and `bmap` gives a data block's offset in its file.
//! docs/DEPENDENCIES.md says why xfs_db rather than a native reader.
//!
//! xfs_db only opens files and refuses to walk a filesystem whose log needs replaying, which is
//! what lost writes usually leave behind. So it reads a copy-on-write view of the region
//! (nbdkit's cow and offset filters under nbdfuse, see [`FuseView::overlay`]) in which the
//! first sector of the log is zeroed: a zeroed log reads as empty, and xfs_db walks the metadata
//! as it is on disk. The device itself is never written, and the view is mounted only when a
//! region has blocks to map. The xfs_db runs of one mapping share one deadline; a walk that
//! fails still names the AG headers and the log from the superblock alone, and says what it
//! could not map. Lost writes damage superblocks and extent maps too: every value read from
//! them is checked before it becomes an offset.
//!
//! One file per job: this one holds [`XfsFs`], its opening and the mapping of blocks to owners
//! ([`XfsFs::owners`]); `geometry.rs` the superblock, its checks and the block arithmetic;
//! `structures.rs` the words for the structures that belong to an AG or to the filesystem;
//! `db.rs` running xfs_db and reading what it says.

mod db;
mod geometry;
mod structures;

use self::db::{normalize, parse_use, Use};
use self::geometry::Geometry;
use self::structures::{ag_structure, structure};
use super::owner::Owner;
use super::partition::Region;
use super::view::FuseView;
use crate::device::BlockDevice;
use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Looks for an XFS superblock at the start of `r`.
pub fn detect(dev: &dyn BlockDevice, r: &Region) -> bool {
    let mut m = [0u8; 4];
    r.len >= 4096 && dev.read_at(&mut m, r.start).is_ok() && &m == b"XFSB"
}

/// Most inodes named or examined in one report (the rest are named by number only).
const MAX_INODES: usize = 16384;

/// An XFS filesystem in a region of a device.
pub struct XfsFs {
    /// Filesystem block size in bytes.
    pub block_size: u64,
    geo: Geometry,
    /// The region's name, for notes.
    region: String,
    /// The device as the user named it, and the region's bytes in it: what the view shows.
    source: (String, u64, u64),
    /// The copy-on-write view xfs_db reads, mounted on the first blocks to map.
    view: OnceCell<Result<FuseView, String>>,
    /// The time all xfs_db runs of one mapping share.
    deadline: Duration,
}

impl XfsFs {
    /// Reads the superblock of the XFS in `r`; the view xfs_db reads is mounted only when
    /// blocks are to be mapped.
    pub fn open(dev: &dyn BlockDevice, r: &Region, device_path: &str) -> Result<XfsFs, String> {
        let mut sb = vec![0u8; 512];
        dev.read_at(&mut sb, r.start)
            .map_err(|e| format!("reading the XFS superblock: {e}"))?;
        let geo = Geometry::parse(&sb, r.len)?;
        // blockget reads all metadata: allow a minute plus 2 s per GiB.
        let gib = geo.blocks.saturating_mul(geo.block_size) >> 30;
        Ok(XfsFs {
            block_size: geo.block_size,
            geo,
            region: r.name.clone(),
            source: (device_path.to_string(), r.start, r.len),
            view: OnceCell::new(),
            deadline: Duration::from_secs(60u64.saturating_add(gib.saturating_mul(2))),
        })
    }

    /// The view xfs_db reads, mounted on first use.
    fn view(&self) -> Result<&FuseView, String> {
        let (path, start, len) = &self.source;
        self.view
            .get_or_init(|| FuseView::overlay(path, *start, *len))
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Makes the log read as empty in the view (its first sector zeroed), so that xfs_db walks
    /// a filesystem whose log needs replaying.
    fn hide_log(&self, view: &FuseView) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let at = self.geo.log_offset().ok_or_else(|| {
            format!(
                "the XFS log position (fsblock {}) is not inside the filesystem",
                self.geo.log_start
            )
        })?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(view.path())
            .and_then(|f| f.write_all_at(&[0u8; 512], at))
            .map_err(|e| format!("zeroing the log's first sector in the copy-on-write view: {e}"))
    }

    /// The owner of each filesystem block asked about (linear block numbers from the region's
    /// start). Blocks it cannot map are left out and said in `notes`.
    pub fn owners(
        &self,
        blocks: &BTreeSet<u64>,
        notes: &mut Vec<String>,
    ) -> Result<HashMap<u64, Owner>, String> {
        let g = &self.geo;
        let inside: Vec<u64> = blocks.iter().copied().filter(|&b| b < g.blocks).collect();
        if inside.is_empty() {
            return Ok(HashMap::new());
        }
        let end = Instant::now() + self.deadline;
        let view = self.view()?;
        let mut cmds = vec!["blockget -n".to_string()];
        for &b in &inside {
            cmds.push(format!("fsblock {}", g.fsblock(b)));
            cmds.push("blockuse -n".into());
        }
        // The inodes each block would hold if it is an inode chunk, named in the same run.
        let candidates: Vec<u64> = inside
            .iter()
            .flat_map(|&b| g.inodes_in(b))
            .take(MAX_INODES)
            .collect();
        for c in candidates.chunks(256) {
            let args: Vec<String> = c.iter().map(|i| format!("-i {i}")).collect();
            cmds.push(format!("ncheck {}", args.join(" ")));
        }
        let mut out = self.xfs_db(view, &cmds, end)?;
        let said = |o: &super::deadline::Output, what: &str| {
            let text = format!("{} {}", o.stdout, o.stderr);
            text.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(what)
        };
        if (said(&out, "needs to be replayed") || said(&out, "cannot find log head/tail"))
            && g.log_start != 0
        {
            self.hide_log(view)?;
            out = self.xfs_db(view, &cmds, end)?;
            notes.push(format!(
                "{}: the XFS log holds updates that were never written to their places (the filesystem was not cleanly unmounted, or its log reverted): the blocks are mapped from the metadata as it is on disk, without them; the filesystem may refuse to mount, and `xfs_repair -L` would discard those updates",
                self.region
            ));
        }
        let mut uses: HashMap<u64, Use> = HashMap::new();
        let mut names: HashMap<u64, String> = HashMap::new();
        for line in out.stdout.lines() {
            if let Some(u) = parse_use(line) {
                uses.insert(u.fsblock, u);
            } else if let Some((i, p)) = line.trim_start().split_once(' ') {
                if let Ok(i) = i.parse::<u64>() {
                    names.entry(i).or_insert_with(|| normalize(p));
                }
            }
        }
        let mut owners = HashMap::new();
        if uses.is_empty() {
            // The walk failed: name what the superblock alone tells.
            let why = out
                .stdout
                .lines()
                .chain(out.stderr.lines())
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_string();
            let mut unmapped = 0;
            for &b in &inside {
                match g.fixed(b) {
                    Some(o) => {
                        owners.insert(b, o);
                    }
                    None => unmapped += 1,
                }
            }
            notes.push(format!(
                "{}: xfs_db could not walk the XFS metadata ({why}): {unmapped} damaged blocks are not mapped to files; only the AG headers and the log are named",
                self.region
            ));
            return Ok(owners);
        }
        let named = |ino: u64| names.get(&ino).cloned();
        // A btree root xfs_db could not read is still named by its AG header.
        let ags: BTreeSet<u64> = inside.iter().map(|b| b / g.ag_blocks).collect();
        let roots: HashMap<u64, &'static str> = ags
            .into_iter()
            .flat_map(|ag| self.roots(view, ag))
            .collect();
        let mut data_inodes: BTreeSet<u64> = BTreeSet::new();
        let mut unmapped = 0;
        for &b in &inside {
            let Some(u) = uses.get(&g.fsblock(b)) else {
                unmapped += 1;
                continue;
            };
            let ag = b / g.ag_blocks;
            let o = match (u.kind.as_str(), u.ino) {
                ("data" | "symlink" | "rldata", Some(ino)) => {
                    data_inodes.insert(ino);
                    Owner::FileData {
                        ino,
                        path: u.path.clone(),
                        file_offset: None,
                    }
                }
                ("dir", Some(ino)) => Owner::Directory {
                    ino,
                    path: u.path.clone(),
                },
                ("btbmapd", Some(ino)) => Owner::BlockMap {
                    ino,
                    path: u.path.clone(),
                },
                ("attr" | "btbmapa", Some(ino)) => {
                    let who = u.path.clone().unwrap_or_else(|| format!("inode {ino}"));
                    structure(
                        "xattr",
                        format!("extended attributes of {who}"),
                        format!("{who}: its extended attributes (ACLs, security labels, user attributes) may be old or unreadable"),
                    )
                }
                ("inode", _) => {
                    let r = g.inodes_in(b);
                    let paths: Vec<String> = r.clone().filter_map(named).collect();
                    let shown: Vec<&str> = paths.iter().take(6).map(|s| s.as_str()).collect();
                    let list = if shown.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({}{})",
                            shown.join(", "),
                            if paths.len() > 6 { ", ..." } else { "" }
                        )
                    };
                    structure(
                        "inode-chunk",
                        format!("inode chunk of AG {ag}: inodes {}-{}{list}", r.start, r.end - 1),
                        format!("inodes {}-{}{list}: these files may revert their size, times, permissions and extent lists: wrong size, old or random contents, or a vanished or reappearing file", r.start, r.end - 1),
                    )
                }
                ("free1" | "free2", _) => Owner::Free,
                (k, _) => {
                    // A block xfs_db accounts for by nothing may still be an AG header, the log
                    // or a btree root the AG headers name.
                    let known = match k {
                        "unknown" | "missing" => g
                            .fixed(b)
                            .or_else(|| roots.get(&b).and_then(|&r| ag_structure(r, ag))),
                        _ => None,
                    };
                    match known.or_else(|| ag_structure(k, ag)) {
                        Some(o) => o,
                        None => {
                            unmapped += 1;
                            continue;
                        }
                    }
                }
            };
            owners.insert(b, o);
        }
        if unmapped > 0 {
            notes.push(format!(
                "{}: xfs_db named no owner for {unmapped} damaged XFS blocks: they are not mapped",
                self.region
            ));
        }
        self.file_offsets(view, end, &mut owners, data_inodes, notes);
        Ok(owners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_map_mounts_no_view() {
        let g = geometry::tests::sample();
        let fs = XfsFs {
            block_size: g.block_size,
            geo: g.clone(),
            region: "whole disk".into(),
            source: ("/nonexistent".into(), 0, g.blocks * g.block_size),
            view: OnceCell::new(),
            deadline: Duration::from_secs(60),
        };
        let mut notes = Vec::new();
        let beyond: BTreeSet<u64> = [g.blocks, g.blocks + 7].into();
        for blocks in [BTreeSet::new(), beyond] {
            assert_eq!(fs.owners(&blocks, &mut notes), Ok(HashMap::new()));
        }
        assert!(fs.view.get().is_none());
        assert!(notes.is_empty(), "{notes:?}");
    }
}
