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

use super::fs::{run_with_deadline, Owner};
use super::partition::Region;
use super::view::FuseView;
use crate::device::BlockDevice;
use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

/// Looks for an XFS superblock at the start of `r`.
pub fn detect(dev: &dyn BlockDevice, r: &Region) -> bool {
    let mut m = [0u8; 4];
    r.len >= 4096 && dev.read_at(&mut m, r.start).is_ok() && &m == b"XFSB"
}

/// The geometry the primary superblock gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Geometry {
    block_size: u64,
    blocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    /// log2 of the AG size rounded up: the AG number's shift in an fsblock number.
    ag_blk_log: u32,
    inodes_per_block: u64,
    /// log2 of `inodes_per_block`.
    inop_blog: u32,
    sector_size: u64,
    /// First block of the internal log, as an fsblock number (0: external log).
    log_start: u64,
    log_blocks: u64,
}

fn be16(b: &[u8], at: usize) -> u64 {
    u16::from_be_bytes([b[at], b[at + 1]]) as u64
}

fn be32(b: &[u8], at: usize) -> u64 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4")) as u64
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8"))
}

impl Geometry {
    /// Parses the superblock (struct xfs_dsb) of a filesystem in a region of `region_len`
    /// bytes, refusing values no XFS has: the error names the first bad field.
    fn parse(sb: &[u8], region_len: u64) -> Result<Geometry, String> {
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
    fn linear_checked(&self, f: u64) -> Option<u64> {
        let (ag, agbno) = (f >> self.ag_blk_log, f & ((1 << self.ag_blk_log) - 1));
        let b = (ag < self.ag_count && agbno < self.ag_blocks)
            .then(|| ag.checked_mul(self.ag_blocks)?.checked_add(agbno))??;
        (b < self.blocks).then_some(b)
    }

    /// The byte offset of the internal log's first block from the region's start.
    fn log_offset(&self) -> Option<u64> {
        if self.log_start == 0 {
            return None;
        }
        self.linear_checked(self.log_start)?
            .checked_mul(self.block_size)
    }

    /// The fsblock number (AG number shifted above the AG block) of linear block `b`.
    fn fsblock(&self, b: u64) -> u64 {
        ((b / self.ag_blocks) << self.ag_blk_log) | (b % self.ag_blocks)
    }

    /// The linear block of fsblock `f`.
    fn linear(&self, f: u64) -> u64 {
        (f >> self.ag_blk_log)
            .saturating_mul(self.ag_blocks)
            .saturating_add(f & ((1 << self.ag_blk_log) - 1))
    }

    /// The inode numbers linear block `b` would hold if it is part of an inode chunk.
    fn inodes_in(&self, b: u64) -> std::ops::Range<u64> {
        let (ag, agbno) = (b / self.ag_blocks, b % self.ag_blocks);
        let first = (ag << (self.ag_blk_log + self.inop_blog)) | (agbno << self.inop_blog);
        first..first + self.inodes_per_block
    }

    /// The owner of linear block `b` that the superblock alone tells: an AG's header sectors
    /// or the internal log.
    fn fixed(&self, b: u64) -> Option<Owner> {
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

fn structure(owner: &'static str, what: String, symptom: String) -> Owner {
    Owner::Structure {
        owner,
        what,
        symptom,
    }
}

fn ag_header(ag: u64) -> Owner {
    let symptom = if ag == 0 {
        "AG 0 header (the primary superblock, AGF, AGI, AGFL): the filesystem may not mount or may use an old geometry and free-space and inode counts; `xfs_repair` is needed (it can restore the superblock from a secondary copy)".to_string()
    } else {
        format!("AG {ag} header (secondary superblock, AGF, AGI, AGFL): the AG's free-space and inode btree roots and counts may be old: space in use may be handed out again or files become unreachable; `xfs_repair` is needed")
    };
    structure(
        "ag-header",
        format!("AG {ag} header (superblock copy, AGF, AGI, AGFL)"),
        symptom,
    )
}

fn log_owner() -> Owner {
    structure(
        "log",
        "the XFS log".into(),
        "the XFS log: after a clean unmount harmless; otherwise the filesystem may not mount, or log recovery replays old or torn transactions (`xfs_repair -L` discards the log and the updates it held)".into(),
    )
}

/// What a block of an xfs_db `blockuse` type is, and its symptom, for the structures that
/// belong to an AG rather than to one inode.
fn ag_structure(kind: &str, ag: u64) -> Option<Owner> {
    let (owner, what, symptom) = match kind {
        "btbno" | "btcnt" => (
            "free-space-btree",
            format!("free-space btree block of AG {ag}"),
            format!("free-space btree of AG {ag}: space in use may be handed out again (two files sharing blocks) or free space lost; `xfs_repair` rebuilds it"),
        ),
        "btino" | "btfino" => (
            "inode-btree",
            format!("inode btree block of AG {ag}"),
            format!("inode allocation btree of AG {ag}: inodes in use may be handed out again, or whole inode chunks become unreachable; `xfs_repair` rebuilds it"),
        ),
        "btrmap" => (
            "rmap-btree",
            format!("reverse-mapping btree block of AG {ag}"),
            format!("reverse-mapping btree of AG {ag}: online scrub and repair see stale owners; `xfs_repair` rebuilds it"),
        ),
        "btrefc" | "btrefcnt" | "cowdata" => (
            "refcount-btree",
            format!("reference-count btree block of AG {ag}"),
            format!("reference-count btree of AG {ag}: blocks shared by reflinked files may be freed while still in use, or never freed; `xfs_repair` rebuilds it"),
        ),
        "freelist" => (
            "reserved",
            format!("AG {ag} free list (blocks set aside for its btrees)"),
            "blocks set aside for the AG's btrees to grow into: harmless unless a btree had just taken them (then see the btrees listed)".to_string(),
        ),
        "agf" | "agi" | "agfl" | "sb" => return Some(ag_header(ag)),
        "log" => return Some(log_owner()),
        "quota" => (
            "quota",
            "quota records".into(),
            "quota usage and limits may be old: `xfs_quota` reports wrong usage until quotacheck runs at the next mount".to_string(),
        ),
        "rtbitmap" | "rtsum" => (
            "reserved",
            "realtime allocation bitmap or summary".into(),
            "realtime allocation bitmap or summary: `xfs_repair` rebuilds it".to_string(),
        ),
        "unknown" | "missing" => (
            "unknown",
            "a block no structure xfs_db could read accounts for".into(),
            "no file and no free-space btree xfs_db could read accounts for this block: it may belong to a file whose inode or extent tree is damaged (see the inode chunks and extent-tree blocks listed)".to_string(),
        ),
        _ => return None,
    };
    Some(structure(owner, what, symptom))
}

/// One line of `blockuse -n`: `block F (A/B) type T [inode I [path]]`.
#[derive(Debug, PartialEq, Eq)]
struct Use {
    fsblock: u64,
    kind: String,
    ino: Option<u64>,
    path: Option<String>,
}

fn parse_use(line: &str) -> Option<Use> {
    let rest = line.strip_prefix("block ")?;
    let (num, rest) = rest.split_once(' ')?;
    let fsblock = num.parse().ok()?;
    let rest = rest.split_once(") type ")?.1;
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut ino = None;
    let mut path = None;
    if let Some(r) = rest.trim_start().strip_prefix("inode ") {
        let (i, p) = r.split_once(' ').unwrap_or((r, ""));
        ino = i.trim().parse().ok();
        path = Some(p.trim()).filter(|p| !p.is_empty()).map(normalize);
    }
    Some(Use {
        fsblock,
        kind: kind.trim().to_string(),
        ino,
        path,
    })
}

/// xfs_db's names are relative to the root, directories ending in "/.".
fn normalize(p: &str) -> String {
    let p = p.trim_end_matches("/.").trim_start_matches('/');
    if p == "." || p.is_empty() {
        "/".into()
    } else {
        format!("/{p}")
    }
}

/// Data fork extents of `bmap`: `data offset O startblock S (A/B) count C flag F`, as
/// (file block, fsblock, count).
fn parse_bmap(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() >= 8 && w[0] == "data" && w[1] == "offset" && w[3] == "startblock" {
                Some((w[2].parse().ok()?, w[4].parse().ok()?, w[7].parse().ok()?))
            } else {
                None
            }
        })
        .collect()
}

/// Splits a file's extents into those whose file and block ranges fit in 64 bits and the count
/// of the rest (a damaged extent map can hold starts up to 2^54).
fn sound_extents(extents: Vec<(u64, u64, u64)>, block_size: u64) -> (Vec<(u64, u64, u64)>, usize) {
    let (sound, damaged): (Vec<_>, Vec<_>) = extents.into_iter().partition(|&(l, s, n)| {
        s.checked_add(n).is_some()
            && l.checked_add(n)
                .and_then(|end| end.checked_mul(block_size))
                .is_some()
    });
    (sound, damaged.len())
}

/// The byte offset within its file of fsblock `f`, from the file's extents.
fn offset_in(extents: &[(u64, u64, u64)], f: u64, block_size: u64) -> Option<u64> {
    let &(l, s, _) = extents.iter().find(|&&(_, s, n)| f >= s && f - s < n)?;
    l.checked_add(f - s)?.checked_mul(block_size)
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

    /// Runs xfs_db on `view` with `commands`, stopped at `end` (shared by one mapping's runs).
    fn xfs_db(
        &self,
        view: &FuseView,
        commands: &[String],
        end: Instant,
    ) -> Result<super::fs::Output, String> {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "xfs_db was not run again: the {} s allowed for mapping this XFS are used up",
                self.deadline.as_secs()
            ));
        }
        let mut input = commands.join("\n");
        input.push('\n');
        run_with_deadline(
            Command::new("xfs_db").arg("-r").arg("-f").arg(view.path()),
            input,
            left,
        )
        .map_err(|e| {
            if e.contains("cannot run") {
                format!("{e} (install xfsprogs)")
            } else {
                e
            }
        })
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
        let said = |o: &super::fs::Output, what: &str| {
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

    /// The btree roots AG `ag`'s headers (AGF and AGI, struct xfs_agf and xfs_agi) point to,
    /// as linear block and `blockuse` type.
    fn roots(&self, view: &FuseView, ag: u64) -> Vec<(u64, &'static str)> {
        use std::os::unix::fs::FileExt;
        let g = &self.geo;
        let Ok(f) = std::fs::File::open(view.path()) else {
            return Vec::new();
        };
        let Some(start) = ag
            .checked_mul(g.ag_blocks)
            .and_then(|b| b.checked_mul(g.block_size))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut read = |at: u64, magic: &[u8], fields: &[(usize, &'static str)]| {
            let mut h = [0u8; 512];
            let ok = start
                .checked_add(at)
                .is_some_and(|at| f.read_exact_at(&mut h, at).is_ok());
            if ok && &h[..4] == magic {
                for &(off, kind) in fields {
                    let b = be32(&h, off);
                    if b != 0 && b < g.ag_blocks {
                        out.push((ag * g.ag_blocks + b, kind));
                    }
                }
            }
        };
        read(
            g.sector_size,
            b"XAGF",
            &[(16, "btbno"), (20, "btcnt"), (24, "btrmap"), (88, "btrefc")],
        );
        read(
            2 * g.sector_size,
            b"XAGI",
            &[(20, "btino"), (328, "btfino")],
        );
        out
    }

    /// Fills in the byte offset within its file of every data block, from each inode's
    /// extent map (`bmap`). A separator (the superblock's magic) tells the inodes' outputs apart.
    /// A block no sound extent holds keeps no offset: its file is named without a byte range.
    fn file_offsets(
        &self,
        view: &FuseView,
        end: Instant,
        owners: &mut HashMap<u64, Owner>,
        inodes: BTreeSet<u64>,
        notes: &mut Vec<String>,
    ) {
        if inodes.is_empty() {
            return;
        }
        let inodes: Vec<u64> = inodes.into_iter().take(MAX_INODES).collect();
        let mut cmds = Vec::new();
        for i in &inodes {
            cmds.extend([
                "sb 0".to_string(),
                "print magicnum".into(),
                format!("inode {i}"),
                "bmap".into(),
            ]);
        }
        let out = match self.xfs_db(view, &cmds, end) {
            Ok(o) => o,
            Err(e) => {
                notes.push(format!("{}: XFS file offsets not known: {e}", self.region));
                return;
            }
        };
        let g = &self.geo;
        let mut maps: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
        let mut damaged = 0;
        let sections = out.stdout.split("magicnum = ").skip(1);
        for (i, text) in inodes.iter().zip(sections) {
            let (sound, bad) = sound_extents(parse_bmap(text), g.block_size);
            damaged += bad;
            maps.insert(*i, sound);
        }
        if damaged > 0 {
            notes.push(format!(
                "{}: {damaged} XFS file extents hold impossible offsets (their extent maps are damaged) and were skipped: blocks in them are named without their place in the file",
                self.region
            ));
        }
        let mut unplaced = 0;
        for (&b, o) in owners.iter_mut() {
            if let Owner::FileData {
                ino, file_offset, ..
            } = o
            {
                *file_offset = maps
                    .get(ino)
                    .and_then(|m| offset_in(m, g.fsblock(b), g.block_size));
                unplaced += usize::from(file_offset.is_none());
            }
        }
        if unplaced > 0 {
            notes.push(format!(
                "{}: the extent maps xfs_db gave do not place {unplaced} damaged XFS data blocks in their files: the files are named without a byte range",
                self.region
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockuse_lines_parse() {
        assert_eq!(
            parse_use("block 32778 (1/10) type data inode 262274 app/my file"),
            Some(Use {
                fsblock: 32778,
                kind: "data".into(),
                ino: Some(262274),
                path: Some("/app/my file".into()),
            })
        );
        assert_eq!(
            parse_use("block 1 (0/1) type btbno"),
            Some(Use {
                fsblock: 1,
                kind: "btbno".into(),
                ino: None,
                path: None,
            })
        );
        assert_eq!(parse_use("block 0/10 expected type unknown got data"), None);
        assert_eq!(normalize("app/."), "/app");
        assert_eq!(normalize("."), "/");
        assert_eq!(
            parse_bmap("data offset 0 startblock 32792 (1/24) count 74 flag 0\n"),
            vec![(0, 32792, 74)]
        );
    }

    #[test]
    fn fsblock_numbers_round_trip() {
        let g = Geometry {
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
        };
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

    fn sample() -> Geometry {
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

    #[test]
    fn damaged_extents_are_skipped_and_counted() {
        let bmap = "data offset 0 startblock 32792 (1/24) count 74 flag 0\n\
                    data offset 18014398509481983 startblock 100 (0/100) count 10 flag 0\n\
                    data offset 74 startblock 18446744073709551610 (0/0) count 10 flag 0\n";
        let (sound, damaged) = sound_extents(parse_bmap(bmap), 4096);
        assert_eq!((sound.clone(), damaged), (vec![(0, 32792, 74)], 2));
        assert_eq!(offset_in(&sound, 32792 + 3, 4096), Some(3 * 4096));
        assert_eq!(offset_in(&sound, 32792 + 74, 4096), None);
        assert_eq!(offset_in(&sound, 105, 4096), None);
        // Unchecked, the damaged extent's offset would wrap.
        let raw = parse_bmap(bmap);
        assert_eq!(offset_in(&raw, 105, 4096), None);
        assert_eq!(offset_in(&sound, u64::MAX, 4096), None);
    }

    #[test]
    fn nothing_to_map_mounts_no_view() {
        let g = sample();
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
