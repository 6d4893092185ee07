//! Forensics: from findings to what an operator needs after an incident — the time window of
//! the lost writes, a histogram of them, the files and directories that own the damaged blocks
//! with the symptom their users will see, and a timeline picture ([`plot`]). The file mapping
//! reads the partition table ([`partition`]) and asks debugfs about ext2/3/4 ([`ext4`]); any
//! other filesystem is named as unknown, never guessed at.

pub mod ext4;
pub mod partition;
pub mod plot;
pub mod view;

use crate::clock::{self, rfc3339, Micros};
use crate::device::BlockDevice;
use crate::error::Result;
use crate::ledger::history::{self, SessionInfo};
use crate::ledger::Ledger;
use crate::verify::classify::Kind;
use crate::verify::report::{Finding, Summary};
use ext4::{ExtFs, Owner};
use partition::Region;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

/// What to include.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only lost writes at or after this time.
    pub since: Option<Micros>,
    /// Only lost writes at or before this time.
    pub until: Option<Micros>,
    /// Map findings to files.
    pub files: bool,
}

/// When the lost durable writes happened.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IncidentWindow {
    /// Earliest lost durable write.
    pub start: String,
    /// Latest lost durable write.
    pub end: String,
    /// Length of the window in seconds.
    pub seconds: f64,
    /// Durable writes lost.
    pub lost_durable_writes: usize,
    /// Blocks that lost at least one durable write.
    pub blocks: usize,
    /// The newest generation found on a reverted block that was written before the window: data
    /// written up to then survived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_surviving: Option<String>,
}

/// One bar of the histogram of lost writes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bin {
    /// Start of the bin.
    pub start: String,
    /// End of the bin.
    pub end: String,
    /// Durable writes lost in it.
    pub lost_writes: usize,
}

/// What owns a damaged block, and what a user will see.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileRef {
    /// "whole disk", "partition 2", ...
    pub region: String,
    /// file, directory, block-map, inode-table, bitmap, superblock, descriptors, journal,
    /// reserved, free, partition-table, unknown-filesystem.
    pub owner: &'static str,
    /// Path of the file or directory, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Byte range within the file [start, end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<(u64, u64)>,
    /// The symptom.
    pub symptom: String,
    /// The damaged ledger block also holds other owners' filesystem blocks (the ledger block is
    /// larger than the filesystem's): this owner's part may be intact.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// A finding with what owns its block.
#[derive(Clone, Debug, Serialize)]
pub struct MappedFinding {
    /// The finding, as `verify --json` gives it.
    #[serde(flatten)]
    pub finding: Finding,
    /// Owners of the block (empty unless `--files`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
}

/// One affected file, directory or structure, summed over its findings.
#[derive(Clone, Debug, Serialize)]
pub struct Affected {
    /// Region.
    pub region: String,
    /// Owner kind (as in [`FileRef`]).
    pub owner: &'static str,
    /// Path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Damaged blocks.
    pub blocks: usize,
    /// Byte ranges within the file, merged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bytes: Vec<(u64, u64)>,
    /// Finding kinds.
    pub kinds: Vec<Kind>,
    /// The symptom.
    pub symptom: String,
    /// Earliest and latest lost write on these blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_between: Option<(String, String)>,
    /// Every damaged ledger block of this owner also held other owners' data: its own part
    /// may be intact.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub maybe_intact: bool,
}

/// A region of the device and what the mapper found in it.
#[derive(Clone, Debug, Serialize)]
pub struct RegionInfo {
    /// Name.
    pub name: String,
    /// Byte offset.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// ext2/ext3/ext4, or what is known of it.
    pub filesystem: String,
}

/// The forensic report.
#[derive(Clone, Debug, Serialize)]
pub struct ForensicReport {
    /// Device.
    pub device: String,
    /// How the device was read for the findings (absent when they came from `--findings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<crate::device::ReadMode>,
    /// Why the device was not read with O_DIRECT, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_note: Option<String>,
    /// Ledger directory.
    pub ledger: String,
    /// Ledger block size.
    pub block_size: u32,
    /// Counts of the findings in view.
    pub summary: Summary,
    /// The window of lost durable writes, if any were lost.
    pub incident_window: Option<IncidentWindow>,
    /// Lost durable writes over time.
    pub histogram: Vec<Bin>,
    /// Findings in view, with their owners.
    pub findings: Vec<MappedFinding>,
    /// Affected files and structures (with `--files`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub affected: Vec<Affected>,
    /// Partition scheme and regions (with `--files`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<(String, Vec<RegionInfo>)>,
    /// Notes (a damaged partition table, a filesystem the mapper does not know).
    pub notes: Vec<String>,
    /// `--since` / `--until` in effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<(Option<String>, Option<String>)>,
    /// Findings that `--since` / `--until` left out (none without a view).
    pub outside_view: usize,
    /// The SVG written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<String>,
    /// Sessions (for the plot).
    #[serde(skip)]
    pub sessions: Vec<SessionInfo>,
}

/// A lost write of a finding: (time, durable, kind, block).
pub type LostPoint = (Micros, bool, Kind, u64);

/// Every lost write of the findings, parsed.
pub fn lost_points(findings: &[MappedFinding]) -> Vec<LostPoint> {
    let mut out = Vec::new();
    for f in findings {
        for l in &f.finding.lost {
            if let Ok(t) = clock::parse(&l.time) {
                out.push((t, l.durable, f.finding.kind, f.finding.block));
            }
        }
    }
    out
}

fn in_view(t: Micros, o: &Options) -> bool {
    o.since.is_none_or(|s| t >= s) && o.until.is_none_or(|u| t <= u)
}

/// Builds the report from findings (of `verify::run`, or read back from `verify --json`).
pub fn build(
    ledger: &Ledger,
    dev: &dyn BlockDevice,
    device_path: &str,
    findings: Vec<Finding>,
    opts: &Options,
) -> Result<ForensicReport> {
    let viewed = opts.since.is_some() || opts.until.is_some();
    let all = findings.len();
    let findings: Vec<Finding> = findings
        .into_iter()
        .filter(|f| {
            !viewed
                || f.lost
                    .iter()
                    .filter_map(|l| clock::parse(&l.time).ok())
                    .any(|t| in_view(t, opts))
        })
        .collect();
    let outside_view = all - findings.len();
    let mut summary = Summary::default();
    for f in &findings {
        summary.count(f.kind);
    }
    let mut mapped: Vec<MappedFinding> = findings
        .into_iter()
        .map(|finding| MappedFinding {
            finding,
            files: Vec::new(),
        })
        .collect();
    let points: Vec<LostPoint> = lost_points(&mapped)
        .into_iter()
        .filter(|p| in_view(p.0, opts))
        .collect();
    let durable: Vec<&LostPoint> = points.iter().filter(|p| p.1).collect();
    let window = match (
        durable.iter().map(|p| p.0).min(),
        durable.iter().map(|p| p.0).max(),
    ) {
        (Some(a), Some(z)) => {
            let newest_surviving = mapped
                .iter()
                .filter_map(|f| f.finding.found_time.as_deref())
                .filter_map(|t| clock::parse(t).ok())
                .filter(|&t| t < a)
                .max()
                .map(rfc3339);
            Some(IncidentWindow {
                start: rfc3339(a),
                end: rfc3339(z),
                seconds: (z - a) as f64 / 1e6,
                lost_durable_writes: durable.len(),
                blocks: durable.iter().map(|p| p.3).collect::<HashSet<_>>().len(),
                newest_surviving,
            })
        }
        _ => None,
    };
    let histogram = histogram(&durable, opts, 12);
    let mut notes = Vec::new();
    let mut affected = Vec::new();
    let mut partitions = None;
    if opts.files {
        let items: Vec<Item> = mapped
            .iter()
            .map(|f| {
                (
                    f.finding.offset,
                    Some(f.finding.kind),
                    f.finding.found_time.clone(),
                )
            })
            .collect();
        let (scheme, regions, files) = map_blocks(ledger, dev, device_path, &items, &mut notes)?;
        for (f, refs) in mapped.iter_mut().zip(files) {
            f.files = refs;
        }
        affected = summarize(&mapped);
        partitions = Some((scheme, regions));
    }
    let hist = history::collect(ledger, &HashSet::new(), &HashSet::new())?;
    Ok(ForensicReport {
        device: device_path.to_string(),
        read: None,
        read_note: None,
        ledger: ledger.dir().display().to_string(),
        block_size: ledger.geometry().block_size,
        summary,
        incident_window: window,
        histogram,
        findings: mapped,
        affected,
        partitions,
        notes,
        view: viewed.then(|| (opts.since.map(rfc3339), opts.until.map(rfc3339))),
        outside_view,
        plot: None,
        sessions: hist.sessions.into_values().collect(),
    })
}

fn histogram(durable: &[&LostPoint], opts: &Options, bins: usize) -> Vec<Bin> {
    let (Some(lo), Some(hi)) = (
        opts.since.or(durable.iter().map(|p| p.0).min()),
        opts.until.or(durable.iter().map(|p| p.0).max()),
    ) else {
        return Vec::new();
    };
    let span = (hi - lo).max(1);
    let width = (span + bins as i64 - 1) / bins as i64;
    let mut counts = vec![0usize; bins];
    for p in durable {
        let i = (((p.0 - lo) / width.max(1)) as usize).min(bins - 1);
        counts[i] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| Bin {
            start: rfc3339(lo + i as i64 * width),
            end: rfc3339((lo + (i as i64 + 1) * width).min(hi.max(lo + width))),
            lost_writes: n,
        })
        .collect()
}

fn owner_name(o: &Owner) -> &'static str {
    match o {
        Owner::FileData { .. } => "file",
        Owner::Directory { .. } => "directory",
        Owner::BlockMap { .. } => "block-map",
        Owner::Journal => "journal",
        Owner::InodeTable { .. } => "inode-table",
        Owner::BlockBitmap { .. } | Owner::InodeBitmap { .. } => "bitmap",
        Owner::Superblock { .. } => "superblock",
        Owner::Descriptors { .. } => "descriptors",
        Owner::ReservedGdt | Owner::Special { .. } => "reserved",
        Owner::Free => "free",
    }
}

/// The symptom a user sees when a block of this owner is damaged this way (`kind` None: what
/// the block is, for `history --files`).
fn symptom(o: &Owner, kind: Option<Kind>, found_time: Option<&str>) -> String {
    if kind.is_none() {
        return describe(o);
    }
    let contents = match (kind, found_time) {
        (None, _) => "holds this part of the file".into(),
        (Some(Kind::Reverted | Kind::Unflushed), Some(t)) => {
            format!("reads OLD contents (as written at {t})")
        }
        (Some(Kind::Reverted | Kind::Unflushed), None) => "reads OLD contents".into(),
        (Some(Kind::Zeroed), _) => "reads zeroes".into(),
        (Some(Kind::Misdirected), _) => {
            "holds another block's contents (random to its reader)".into()
        }
        _ => "holds contents nobody wrote".into(),
    };
    let name = |p: &Option<String>, ino: u64| {
        p.clone()
            .unwrap_or_else(|| format!("inode {ino} (no name found)"))
    };
    match o {
        Owner::FileData { path, ino, .. } => format!("{}: this part of the file {contents}", name(path, *ino)),
        Owner::Directory { path, ino } => format!(
            "{}: entries added or removed here may be lost (files created in the window may have disappeared, deleted ones may be back)",
            name(path, *ino)
        ),
        Owner::BlockMap { path, ino } => format!(
            "{}: an update of the file's block map (extent tree) was lost: parts of it may read random contents (blocks that now belong to other files) or it may look shorter",
            name(path, *ino)
        ),
        Owner::InodeTable { inodes, paths, .. } => {
            let shown: Vec<&str> = paths.iter().take(6).map(|s| s.as_str()).collect();
            format!(
                "inodes {}-{}{}: size, times, permissions or the block map root of these files may be old: wrong size, random contents, or a vanished file",
                inodes.0,
                inodes.1,
                if shown.is_empty() {
                    String::new()
                } else {
                    format!(" ({}{})", shown.join(", "), if paths.len() > 6 { ", ..." } else { "" })
                }
            )
        }
        Owner::BlockBitmap { group } => format!(
            "block allocation bitmap of group {group}: space in use may be marked free and later overwritten (e2fsck -f repairs the bitmap)"
        ),
        Owner::InodeBitmap { group } => format!(
            "inode allocation bitmap of group {group}: inodes in use may be handed out again (e2fsck -f repairs it)"
        ),
        Owner::Superblock { group } => format!("superblock copy in group {group}: e2fsck can restore it from a backup"),
        Owner::Descriptors { group } => format!(
            "group descriptor table copy in group {group}: e2fsck can restore it from a backup"
        ),
        Owner::Journal => "the ext4 journal: harmless after a clean unmount; if transactions were waiting to be replayed, those metadata updates are lost".into(),
        Owner::ReservedGdt | Owner::Special { .. } => "space the filesystem reserves for itself: harmless".into(),
        Owner::Free => "owned by no file now: harmless, unless a file created in the window owned it and lost its entry or inode too (see the directories and inode tables listed)".into(),
    }
}

/// A block to map: its device offset, and (for a finding) its kind and found time.
pub type Item = (u64, Option<Kind>, Option<String>);

/// What a block is, without a finding (for `history --files`).
fn describe(o: &Owner) -> String {
    let name = |p: &Option<String>, ino: u64| p.clone().unwrap_or_else(|| format!("inode {ino}"));
    match o {
        Owner::FileData { path, ino, .. } => format!("data of {}", name(path, *ino)),
        Owner::Directory { path, ino } => format!("entries of directory {}", name(path, *ino)),
        Owner::BlockMap { path, ino } => format!("extent tree (block map) of {}", name(path, *ino)),
        Owner::InodeTable { inodes, paths, .. } => {
            format!("inode table: inodes {}-{} {:?}", inodes.0, inodes.1, paths)
        }
        Owner::BlockBitmap { group } => format!("block allocation bitmap of group {group}"),
        Owner::InodeBitmap { group } => format!("inode allocation bitmap of group {group}"),
        Owner::Superblock { group } => format!("superblock copy in group {group}"),
        Owner::Descriptors { group } => format!("group descriptor table copy in group {group}"),
        Owner::Journal => "the filesystem journal".into(),
        Owner::ReservedGdt | Owner::Special { .. } => "space the filesystem reserves".into(),
        Owner::Free => "free space (no file)".into(),
    }
}

/// Finds what owns each item's ledger block. Returns the partition scheme, the regions, and the
/// owners of each item in order.
pub fn map_blocks(
    ledger: &Ledger,
    dev: &dyn BlockDevice,
    device_path: &str,
    items: &[Item],
    notes: &mut Vec<String>,
) -> Result<(String, Vec<RegionInfo>, Vec<Vec<FileRef>>)> {
    let geo = ledger.geometry();
    let table = partition::read_table(dev)
        .map_err(|e| crate::Error::io(device_path, "reading the partition table", e))?;
    notes.extend(table.warnings.iter().cloned());
    let mut infos = Vec::new();
    // debugfs opens files only: an NBD export is shown to it through nbdfuse, mounted on the
    // first filesystem found and kept until the owners are known.
    let mut view: Option<Result<view::FuseView, String>> = None;
    let mut filesystems: Vec<Option<ExtFs>> = Vec::new();
    for r in &table.regions {
        let local = |view: &mut Option<Result<view::FuseView, String>>| {
            if !crate::nbd::uri::is_uri(device_path) {
                return Ok(device_path.to_string());
            }
            view.get_or_insert_with(|| view::FuseView::open(device_path, dev.size()))
                .as_ref()
                .map(|v| v.path().display().to_string())
                .map_err(|e| e.clone())
        };
        let (fs, desc) = match ext4::detect(dev, r) {
            Some(kind) => match local(&mut view).and_then(|p| ExtFs::open(&p, kind, r)) {
                Ok(fs) => (Some(fs), kind.to_string()),
                Err(e) => {
                    notes.push(format!(
                        "{}: {kind} found but could not be read: {e}",
                        r.name
                    ));
                    (None, format!("{kind} (unreadable)"))
                }
            },
            None => (None, "unknown (not ext2/3/4)".to_string()),
        };
        infos.push(RegionInfo {
            name: r.name.clone(),
            start: r.start,
            len: r.len,
            filesystem: desc,
        });
        filesystems.push(fs);
    }
    // Which filesystem blocks each finding covers, per region.
    let region_of = |off: u64| {
        table
            .regions
            .iter()
            .position(|r: &Region| off >= r.start && off < r.start + r.len)
    };
    let mut wanted: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); table.regions.len()];
    let fs_blocks = |i: usize, off: u64, fs: &ExtFs| {
        let r = &table.regions[i];
        let lo = off.max(r.start) - r.start;
        let hi = (off + geo.block_size as u64).min(r.start + r.len) - r.start;
        lo / fs.block_size..hi.div_ceil(fs.block_size)
    };
    for &(offset, _, _) in items {
        if let Some(i) = region_of(offset) {
            if let Some(fs) = &filesystems[i] {
                wanted[i].extend(fs_blocks(i, offset, fs));
            }
        }
    }
    let mut owners = Vec::new();
    for (i, fs) in filesystems.iter().enumerate() {
        owners.push(match fs {
            Some(fs) if !wanted[i].is_empty() => match fs.owners(&wanted[i]) {
                Ok(o) => o,
                Err(e) => {
                    notes.push(format!("{}: {e}", table.regions[i].name));
                    Default::default()
                }
            },
            _ => Default::default(),
        });
    }
    let mut unknown_noted = BTreeSet::new();
    let mut all = Vec::with_capacity(items.len());
    for (offset, kind, found) in items {
        let (offset, kind) = (*offset, *kind);
        let mut files = Vec::new();
        let Some(i) = region_of(offset) else {
            files.push(FileRef {
                region: "outside any partition".into(),
                owner: "partition-table",
                path: None,
                bytes: None,
                shared: false,
                symptom: if offset < (1 << 20) && table.scheme != "none" {
                    "the partition table area: a damaged table can hide, shrink or move partitions"
                        .into()
                } else {
                    "space outside every partition: harmless to the filesystems".into()
                },
            });
            all.push(files);
            continue;
        };
        let region = table.regions[i].name.clone();
        let Some(fs) = &filesystems[i] else {
            if unknown_noted.insert(i) {
                notes.push(format!(
                    "{region} does not hold an ext2/3/4 filesystem lostwrite can read: its findings are not mapped to files"
                ));
            }
            files.push(FileRef {
                region,
                owner: "unknown-filesystem",
                path: None,
                bytes: None,
                shared: false,
                symptom:
                    "not an ext2/3/4 filesystem: lostwrite cannot say which file owns this block"
                        .into(),
            });
            all.push(files);
            continue;
        };
        let mut refs: BTreeMap<(&'static str, Option<String>), FileRef> = BTreeMap::new();
        for b in fs_blocks(i, offset, fs) {
            let Some(o) = owners[i].get(&b) else { continue };
            let (path, bytes) = match o {
                Owner::FileData {
                    path, file_offset, ..
                } => (
                    path.clone(),
                    Some((*file_offset, file_offset + fs.block_size)),
                ),
                Owner::Directory { path, .. } | Owner::BlockMap { path, .. } => {
                    (path.clone(), None)
                }
                _ => (None, None),
            };
            let key = (
                owner_name(o),
                path.clone().or_else(|| Some(symptom(o, kind, None))),
            );
            let entry = refs.entry(key).or_insert_with(|| FileRef {
                region: region.clone(),
                owner: owner_name(o),
                path,
                bytes,
                symptom: symptom(o, kind, found.as_deref()),
                shared: false,
            });
            if let (Some((a, z)), Some((ba, bz))) = (entry.bytes, bytes) {
                entry.bytes = Some((a.min(ba), z.max(bz)));
            }
        }
        let shared = refs.len() > 1;
        files.extend(refs.into_values().map(|mut r| {
            r.shared = shared;
            r
        }));
        all.push(files);
    }
    Ok((table.scheme.to_string(), infos, all))
}

/// Sums the mapped findings per affected file or structure.
fn summarize(findings: &[MappedFinding]) -> Vec<Affected> {
    let mut by: BTreeMap<(String, &'static str, Option<String>, String), Affected> =
        BTreeMap::new();
    for f in findings {
        let times: Vec<Micros> = f
            .finding
            .lost
            .iter()
            .filter_map(|l| clock::parse(&l.time).ok())
            .collect();
        for r in &f.files {
            // Group one file's blocks together whatever their individual symptoms say.
            let group_key = match r.owner {
                "file" | "directory" | "block-map" => String::new(),
                _ => r.symptom.clone(),
            };
            let a = by
                .entry((r.region.clone(), r.owner, r.path.clone(), group_key))
                .or_insert_with(|| Affected {
                    region: r.region.clone(),
                    owner: r.owner,
                    path: r.path.clone(),
                    blocks: 0,
                    bytes: Vec::new(),
                    kinds: Vec::new(),
                    symptom: r.symptom.clone(),
                    lost_between: None,
                    maybe_intact: true,
                });
            a.maybe_intact &= r.shared;
            a.blocks += 1;
            if let Some(b) = r.bytes {
                a.bytes.push(b);
            }
            if !a.kinds.contains(&f.finding.kind) {
                a.kinds.push(f.finding.kind);
            }
            if let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) {
                let (l0, h0) = a
                    .lost_between
                    .as_ref()
                    .map(|(x, y)| (clock::parse(x).unwrap_or(lo), clock::parse(y).unwrap_or(hi)))
                    .unwrap_or((lo, hi));
                a.lost_between = Some((rfc3339(l0.min(lo)), rfc3339(h0.max(hi))));
            }
        }
    }
    let mut out: Vec<Affected> = by.into_values().collect();
    for a in &mut out {
        a.bytes.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &a.bytes {
            match merged.last_mut() {
                Some(m) if s <= m.1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        a.bytes = merged;
    }
    // Files and directories first: they are what people ask about.
    out.sort_by_key(|a| {
        (
            !matches!(a.owner, "file" | "directory" | "block-map"),
            a.owner == "free",
        )
    });
    out
}

impl ForensicReport {
    /// The human rendering.
    pub fn human(&self, max_rows: usize) -> String {
        let mut o = String::new();
        let s = &self.summary;
        writeln!(
            o,
            "lostwrite report: {}  (ledger {}, {}-byte blocks)",
            self.device, self.ledger, self.block_size
        )
        .ok();
        if let Some(mode) = self.read {
            let line = crate::verify::report::read_line(mode, self.read_note.as_deref());
            writeln!(o, "{line}").ok();
        }
        if let Some((a, b)) = &self.view {
            writeln!(
                o,
                "view: lost writes from {} to {}",
                a.as_deref().unwrap_or("the start"),
                b.as_deref().unwrap_or("the end")
            )
            .ok();
            if self.outside_view > 0 {
                writeln!(
                    o,
                    "  {} more finding{} outside this view (run without --since/--until to see all)",
                    self.outside_view,
                    if self.outside_view == 1 { " lies" } else { "s lie" }
                )
                .ok();
            }
        }
        writeln!(
            o,
            "findings: {} reverted, {} misdirected, {} zeroed, {} corrupt; {} unflushed, {} uncertain (allowed after a crash)",
            s.reverted, s.misdirected, s.zeroed, s.corrupt, s.unflushed, s.uncertain
        )
        .ok();
        match &self.incident_window {
            Some(w) => {
                writeln!(o).ok();
                writeln!(
                    o,
                    "INCIDENT WINDOW: {} durable writes to {} blocks were lost, written between\n  {}  and  {}  ({:.3} s)",
                    w.lost_durable_writes, w.blocks, w.start, w.end, w.seconds
                )
                .ok();
                if let Some(t) = &w.newest_surviving {
                    writeln!(
                        o,
                        "  data written up to {t} survived on the reverted blocks"
                    )
                    .ok();
                }
                writeln!(o, "  anything written between these times is at risk; nothing written after {} was lost", w.end).ok();
                let peak = self
                    .histogram
                    .iter()
                    .map(|b| b.lost_writes)
                    .max()
                    .unwrap_or(0)
                    .max(1);
                writeln!(o, "\nlost durable writes over time:").ok();
                for b in &self.histogram {
                    let bar = "#".repeat((b.lost_writes * 40).div_ceil(peak));
                    writeln!(o, "  {}  {:<40} {}", b.start, bar, b.lost_writes).ok();
                }
            }
            None => {
                writeln!(
                    o,
                    "\nno durable write was lost{}{}",
                    if self.view.is_some() {
                        " in this view"
                    } else {
                        ""
                    },
                    if s.unflushed + s.uncertain > 0 {
                        " (only writes a crash was allowed to lose)"
                    } else {
                        ""
                    }
                )
                .ok();
            }
        }
        if !self.affected.is_empty() {
            writeln!(o, "\naffected files and filesystem structures:").ok();
            for a in self.affected.iter().take(max_rows) {
                let kinds: Vec<&str> = a.kinds.iter().map(|k| k.name()).collect();
                let what = match (a.owner, &a.path) {
                    ("file", Some(p)) => p.clone(),
                    ("directory", Some(p)) => format!("{p}/ (directory)"),
                    ("block-map", Some(p)) => format!("{p} (extent tree)"),
                    (owner, _) => owner.to_string(),
                };
                writeln!(
                    o,
                    "  [{}] {what}: {} block{} {}",
                    a.region,
                    a.blocks,
                    if a.blocks == 1 { "" } else { "s" },
                    kinds.join("/")
                )
                .ok();
                if !a.bytes.is_empty() {
                    let r: Vec<String> = a
                        .bytes
                        .iter()
                        .take(4)
                        .map(|(s, e)| format!("{s}-{}", e - 1))
                        .collect();
                    writeln!(
                        o,
                        "      bytes {}{}",
                        r.join(", "),
                        if a.bytes.len() > 4 { ", ..." } else { "" }
                    )
                    .ok();
                }
                writeln!(o, "      {}", a.symptom).ok();
                if a.maybe_intact {
                    writeln!(
                        o,
                        "      (its damaged {}-byte ledger block also holds other owners' data: this part may be intact)",
                        self.block_size
                    )
                    .ok();
                }
                if let Some((x, y)) = &a.lost_between {
                    writeln!(o, "      lost writes from {x} to {y}").ok();
                }
            }
            if self.affected.len() > max_rows {
                writeln!(
                    o,
                    "  ... and {} more (use --json)",
                    self.affected.len() - max_rows
                )
                .ok();
            }
        }
        for n in &self.notes {
            writeln!(o, "note: {n}").ok();
        }
        if let Some(p) = &self.plot {
            writeln!(o, "\ntimeline picture: {p}").ok();
        }
        o
    }
}
