//! What owns a damaged block: the partition table says which region holds it (an LVM2 physical
//! volume's logical volumes are regions of their own, [`lvm`](super::lvm): those laid out in one
//! piece read in place, those whose pieces lie apart on it through [`lvview`](super::lvview);
//! the rest of a PV is named by LV offset, metadata or free space here), the region's
//! filesystem (ext2/3/4 or XFS, behind the seam in [`fs`](super::fs)) says which file,
//! directory or structure owns each of its filesystem blocks, and [`symptom`](super::symptom) gives the
//! words. A block outside every region, or in a region whose filesystem lostwrite cannot read,
//! is named as such, never guessed at. The findings mapped here are then summed per owner into
//! the report's affected list by [`affected`](super::affected).

use super::affected::suspect_free;
use super::freeproof::{ext4_free_throughout, lvm_free_throughout, Watched};
use super::fs::{self, Detected, Filesystem, Owner};
use super::lvm::Pv;
use super::lvregions::{expand_lvm, in_pv, Across};
use super::lvview::Assembled;
use super::packages::{self, RegionPackages};
use super::partition::{self, Table};
use super::symptom::{owner_name, symptom};
use super::view::FuseView;
use crate::clock::Micros;
use crate::device::BlockDevice;
use crate::error::Result;
use crate::findings::classify::Kind;
use crate::findings::Finding;
use crate::ledger::Ledger;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What owns a damaged block, and what a user will see.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileRef {
    /// "whole disk", "partition 2", ...
    pub region: String,
    /// file, directory, block-map, inode-table, bitmap, superblock, descriptors, journal,
    /// reserved, free, partition-table, unknown-filesystem; on XFS also ag-header,
    /// free-space-btree, inode-btree, rmap-btree, refcount-btree, inode-chunk, xattr, log,
    /// quota and unknown; in an LVM2 physical volume lvm-metadata, lvm-free, lvm-volume (a
    /// block of a logical volume whose filesystem is not mapped: `path` is the LV, `bytes` the
    /// range within it) and lvm-pv (a PV whose metadata could not be read).
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
    /// For a block the current metadata calls free (`free`, `lvm-free`): the metadata blocks
    /// of the same region that also have a finding (what each is, and whose), so that this block
    /// may be data the reverted metadata no longer lists. Empty: nothing suggests that.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maybe_data_of: Vec<String>,
    /// For a block the current metadata calls free (`free`, `lvm-free`): proven free at every
    /// generation the ledger saw (the symptom says how), hence harmless. Absent: free now, not
    /// proven harmless.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub free_proven: bool,
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

/// A region of the device and what the mapper found in it.
#[derive(Clone, Debug, Serialize)]
pub struct RegionInfo {
    /// Name.
    pub name: String,
    /// Byte offset.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// ext2/ext3/ext4/xfs, or what is known of it ("btrfs (not supported)", ...).
    pub filesystem: String,
}

/// A block to map: its device offset, and (for a finding) its kind and found time.
pub type Item = (u64, Option<Kind>, Option<Micros>);

/// Finds what owns each item's ledger block. Returns the partition scheme, the regions, and the
/// owners of each item in order.
pub fn map_blocks(
    ledger: &Ledger,
    dev: &dyn BlockDevice,
    device_path: &str,
    items: &[Item],
    notes: &mut Vec<String>,
) -> Result<(String, Vec<RegionInfo>, Vec<Vec<FileRef>>)> {
    let (disk, all) = open_and_map(ledger, dev, device_path, &[], items, notes)?;
    Ok((disk.table.scheme.to_string(), disk.infos, all))
}

/// Opens the device's regions and maps the items; the disk is returned still open, so that
/// its filesystems can be read further. `others` are the other disks of the report, where
/// physical volumes of this disk's volume groups may be.
fn open_and_map(
    ledger: &Ledger,
    dev: &dyn BlockDevice,
    device_path: &str,
    others: &[String],
    items: &[Item],
    notes: &mut Vec<String>,
) -> Result<(Disk, Vec<Vec<FileRef>>)> {
    let table = partition::read_table(dev)
        .map_err(|e| crate::Error::io(device_path, "reading the partition table", e))?;
    notes.extend(table.warnings.iter().cloned());
    let block_size = ledger.geometry().block_size as u64;
    let disk = Disk::open(table, dev, device_path, others, block_size, notes);
    let owners = disk.owners(items, notes);
    let mut unknown_noted = BTreeSet::new();
    let findings: HashSet<u64> = items
        .iter()
        .filter(|i| i.1.is_some())
        .map(|i| i.0 / block_size)
        .collect();
    let proof = (dev, ledger, &findings);
    let all = items
        .iter()
        .map(|(offset, kind, found)| {
            let mut refs = disk.refs((*offset, *kind, *found), &owners, &mut unknown_noted, notes);
            if kind.is_some() {
                disk.prove_free(*offset, &mut refs, &owners, proof);
            }
            refs
        })
        .collect();
    Ok((disk, all))
}

/// Maps the findings' blocks to their owners (filling in each finding's `files`) and, with
/// `packages`, finds the packages owning the damaged files while the filesystems are open.
/// Returns the partition scheme, the regions and the packages. `others` are the other disks of
/// the report (their PVs complete this disk's volume groups).
pub(super) fn map_findings(
    ledger: &Ledger,
    dev: &dyn BlockDevice,
    device_path: &str,
    others: &[String],
    mapped: &mut [MappedFinding],
    packages: bool,
    notes: &mut Vec<String>,
) -> Result<(String, Vec<RegionInfo>, Option<Vec<RegionPackages>>)> {
    let items: Vec<Item> = mapped
        .iter()
        .map(|f| (f.finding.offset, Some(f.finding.kind), f.finding.found_time))
        .collect();
    let (disk, files) = open_and_map(ledger, dev, device_path, others, &items, notes)?;
    for (f, refs) in mapped.iter_mut().zip(files) {
        f.files = refs;
    }
    suspect_free(mapped);
    let packages = packages.then(|| {
        let open: Vec<(&str, &Filesystem)> = disk
            .table
            .regions
            .iter()
            .zip(&disk.filesystems)
            .filter_map(|(r, fs)| Some((r.name.as_str(), fs.as_ref()?)))
            .collect();
        packages::find(&open, mapped, notes)
    });
    Ok((disk.table.scheme.to_string(), disk.infos, packages))
}

/// The regions of a device and the filesystem found in each, ready to be asked who owns a block.
struct Disk {
    table: Table,
    /// What was found in each region, for the report.
    infos: Vec<RegionInfo>,
    /// Each region's filesystem, where it is one lostwrite can read.
    filesystems: Vec<Option<Filesystem>>,
    /// For each region without one, why its findings are not mapped (noted once).
    unmapped: Vec<String>,
    /// Bytes in a ledger block: what one item covers.
    block_size: u64,
    /// For each region that is an LVM2 physical volume, what its metadata says (or why it
    /// could not be read); its logical volumes laid out in one piece are regions before it.
    lvm: Vec<Option<std::result::Result<Pv, String>>>,
    /// The export's file view that debugfs reads, kept mounted until the owners are known.
    _view: Option<std::result::Result<FuseView, String>>,
    /// For each region that is a logical volume assembled from pieces apart, its layout and
    /// what serves its bytes (dropped after the filesystems that read them).
    assembled: Vec<Option<Assembled>>,
    /// Logical volumes read, or sought, across several PVs: their region and why not mapped.
    across: Across,
}

impl Disk {
    /// Detects and opens the filesystem of every region of `table`, noting one that is found but
    /// cannot be read.
    fn open(
        mut table: Table,
        dev: &dyn BlockDevice,
        device_path: &str,
        others: &[String],
        block_size: u64,
        notes: &mut Vec<String>,
    ) -> Disk {
        let l = expand_lvm(&mut table, dev, device_path, others, notes);
        let (lvm, mut assembled, across) = (l.roles, l.assembled, l.across);
        // debugfs opens files only: an NBD export is shown to it through nbdfuse, mounted on the
        // first filesystem found and kept until the owners are known.
        let mut view = None;
        let mut infos = Vec::new();
        let mut filesystems = Vec::new();
        let mut unmapped = Vec::new();
        for ((r, pv), a) in table.regions.iter().zip(&lvm).zip(assembled.iter_mut()) {
            if let Some(pv) = pv {
                infos.push(RegionInfo {
                    name: r.name.clone(),
                    start: r.start,
                    len: r.len,
                    filesystem: match pv {
                        Ok(pv) => format!("lvm2-pv (VG {}, metadata seqno {})", pv.vg, pv.seqno),
                        Err(_) => "lvm2-pv (metadata unreadable)".into(),
                    },
                });
                filesystems.push(None);
                unmapped.push(String::new());
                continue;
            }
            let (detected, opened) = match a {
                Some(a) => a.open_fs(device_path, r, notes),
                None => {
                    let detected = fs::detect(dev, r);
                    let mut local = || local_path(&mut view, dev, device_path);
                    let opened = detected
                        .as_ref()
                        .and_then(|kind| Filesystem::open(kind, dev, r, device_path, &mut local));
                    (detected, opened)
                }
            };
            let not_read = format!(
                "{} does not hold an ext2/3/4 or XFS filesystem lostwrite can read: its findings are not mapped to files",
                r.name
            );
            let (fs, desc, why) = match (&detected, opened) {
                (Some(kind), Some(Ok(fs))) => (Some(fs), kind.name().to_string(), not_read),
                (Some(kind), Some(Err(e))) => {
                    let kind = kind.name();
                    notes.push(format!(
                        "{}: {kind} found but could not be read: {e}",
                        r.name
                    ));
                    (None, format!("{kind} (unreadable)"), not_read)
                }
                (Some(Detected::Foreign(f)), None) => (
                    None,
                    format!("{} (not supported)", f.name),
                    format!(
                        "{} holds {}: lostwrite cannot map its blocks to files; the findings give the damaged byte offsets. {}",
                        r.name, f.name, f.advice
                    ),
                ),
                _ => (
                    None,
                    "unknown (no filesystem lostwrite recognises)".to_string(),
                    not_read,
                ),
            };
            if a.is_some() && fs.is_none() {
                // Its blocks go to the PV's naming, with their offsets in the LV.
                notes.push(format!(
                    "{}: {desc}: not mapped to files; its blocks are named by their offset in the logical volume",
                    r.name
                ));
            }
            unmapped.push(why);
            infos.push(RegionInfo {
                name: r.name.clone(),
                start: r.start,
                len: r.len,
                filesystem: desc,
            });
            filesystems.push(fs);
        }
        Disk {
            table,
            infos,
            filesystems,
            unmapped,
            block_size,
            lvm,
            _view: view,
            assembled,
            across,
        }
    }

    /// The region that holds device offset `off`, if any.
    fn region_of(&self, off: u64) -> Option<usize> {
        self.table
            .regions
            .iter()
            .zip(&self.assembled)
            .zip(&self.filesystems)
            .position(|((r, a), fs)| match a {
                // An LV whose filesystem is not read is named through its PV.
                Some(a) => fs.is_some() && a.layout.to_lv(off).is_some(),
                None => off >= r.start && off < r.start + r.len,
            })
    }

    /// The blocks of region `i`'s filesystem `fs` that the ledger block at `off` covers, even in
    /// part (through the layout of an assembled logical volume, a sector at a time).
    fn fs_blocks(&self, i: usize, off: u64, fs: &Filesystem) -> Vec<u64> {
        if let Some(a) = &self.assembled[i] {
            let lv: BTreeSet<u64> = (off..off + self.block_size)
                .step_by(512)
                .filter_map(|d| a.layout.to_lv(d))
                .map(|o| o / fs.block_size())
                .collect();
            return lv.into_iter().collect();
        }
        let r = &self.table.regions[i];
        let lo = off.max(r.start) - r.start;
        let hi = (off + self.block_size).min(r.start + r.len) - r.start;
        (lo / fs.block_size()..hi.div_ceil(fs.block_size())).collect()
    }

    /// The owners of every filesystem block the items cover, per region: each filesystem is
    /// asked once. One that cannot answer is noted and owns nothing.
    fn owners(&self, items: &[Item], notes: &mut Vec<String>) -> Vec<HashMap<u64, Owner>> {
        let mut wanted: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); self.table.regions.len()];
        for &(offset, _, _) in items {
            if let Some(i) = self.region_of(offset) {
                if let Some(fs) = &self.filesystems[i] {
                    wanted[i].extend(self.fs_blocks(i, offset, fs));
                }
            }
        }
        let mut owners = Vec::new();
        for (i, fs) in self.filesystems.iter().enumerate() {
            owners.push(match fs {
                Some(fs) if !wanted[i].is_empty() => match fs.owners(&wanted[i], notes) {
                    Ok(o) => o,
                    Err(e) => {
                        notes.push(format!("{}: {e}", self.table.regions[i].name));
                        HashMap::new()
                    }
                },
                _ => HashMap::new(),
            });
        }
        owners
    }

    /// What owns the ledger block of `item` (offset, finding kind, found time), with the symptom
    /// of that kind of finding. A region without a filesystem lostwrite can read is noted once
    /// (`unknown_noted` holds the regions noted so far).
    fn refs(
        &self,
        (offset, kind, found): (u64, Option<Kind>, Option<Micros>),
        owners: &[HashMap<u64, Owner>],
        unknown_noted: &mut BTreeSet<usize>,
        notes: &mut Vec<String>,
    ) -> Vec<FileRef> {
        let Some(i) = self.region_of(offset) else {
            return vec![outside_regions(offset, self.table.scheme)];
        };
        let region = self.table.regions[i].name.clone();
        if let Some(pv) = &self.lvm[i] {
            let mut r = in_pv(
                &self.table.regions[i],
                pv,
                offset,
                self.block_size,
                &self.across,
            );
            let lv = self.table.regions.iter().zip(&self.assembled);
            if let Some(j) = lv
                .map(|(x, a)| a.is_some() && x.name == r.region)
                .position(|x| x)
            {
                r.symptom = format!(
                    "logical volume {}: {}; check its filesystem with its own tools (the byte ranges are offsets in the logical volume)",
                    r.path.as_deref().unwrap_or_default(),
                    self.infos[j].filesystem
                );
            }
            return vec![r];
        }
        let Some(fs) = &self.filesystems[i] else {
            if unknown_noted.insert(i) {
                notes.push(self.unmapped[i].clone());
            }
            return vec![unknown_filesystem(region, &self.infos[i].filesystem)];
        };
        // One entry per owner (per path, or per symptom for a structure), its byte range grown
        // over the filesystem blocks it owns within this ledger block.
        let mut refs: BTreeMap<(&'static str, Option<String>), FileRef> = BTreeMap::new();
        for b in self.fs_blocks(i, offset, fs) {
            let Some(o) = owners[i].get(&b) else { continue };
            let (path, bytes) = match o {
                Owner::FileData {
                    path, file_offset, ..
                } => (path.clone(), file_offset.map(|o| (o, o + fs.block_size()))),
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
                symptom: symptom(o, kind, found),
                shared: false,
                maybe_data_of: Vec::new(),
                free_proven: false,
            });
            if let (Some((a, z)), Some((ba, bz))) = (entry.bytes, bytes) {
                entry.bytes = Some((a.min(ba), z.max(bz)));
            }
        }
        let shared = refs.len() > 1;
        refs.into_values()
            .map(|mut r| {
                r.shared = shared;
                r
            })
            .collect()
    }
}

/// What proves a free block free throughout: the disk, its ledger, the ledger blocks with a
/// finding.
type Proof<'a> = (&'a dyn BlockDevice, &'a Ledger, &'a HashSet<u64>);

impl Disk {
    /// Marks the free blocks among `refs` (the owners of the ledger block at `offset`) that were
    /// free at every generation the ledger saw ([`freeproof`](super::freeproof)): on ext2/3/4
    /// every free filesystem block the ledger block covers, in LVM2 free extents.
    fn prove_free(
        &self,
        offset: u64,
        refs: &mut [FileRef],
        owners: &[HashMap<u64, Owner>],
        (dev, ledger, findings): Proof,
    ) {
        let Some(i) = self.region_of(offset) else {
            return;
        };
        let r = &self.table.regions[i];
        let w = Watched {
            dev,
            start: r.start,
            layout: self.assembled[i].as_ref().map(|a| &a.layout),
            ledger,
            findings,
        };
        for f in refs.iter_mut() {
            let proof = match (f.owner, &self.filesystems[i], &self.lvm[i]) {
                ("free", Some(fs @ Filesystem::Ext(_)), _) => {
                    let free: Vec<u64> = self
                        .fs_blocks(i, offset, fs)
                        .into_iter()
                        .filter(|b| matches!(owners[i].get(b), Some(Owner::Free)))
                        .collect();
                    let proofs: Vec<Option<String>> =
                        free.iter().map(|&b| ext4_free_throughout(&w, b)).collect();
                    match proofs.first() {
                        Some(Some(p)) if proofs.iter().all(Option::is_some) => Some(p.clone()),
                        _ => None,
                    }
                }
                ("lvm-free", _, Some(Ok(pv))) => lvm_free_throughout(&w, &pv.vg, &pv.metadata),
                _ => None,
            };
            if let Some(p) = proof {
                f.symptom = p;
                f.free_proven = true;
            }
        }
    }
}

/// A path debugfs can open for the device: the device itself, or for an NBD export the file of
/// its nbdfuse view, mounted on first use.
fn local_path(
    view: &mut Option<std::result::Result<FuseView, String>>,
    dev: &dyn BlockDevice,
    device_path: &str,
) -> std::result::Result<String, String> {
    if !crate::nbd::uri::is_uri(device_path) {
        return Ok(device_path.to_string());
    }
    view.get_or_insert_with(|| FuseView::open(device_path, dev.size()))
        .as_ref()
        .map(|v| v.path().display().to_string())
        .map_err(|e| e.clone())
}

/// The owner of a block that lies in no region: the partition table's area at the start of a
/// partitioned disk, or unused space.
fn outside_regions(offset: u64, scheme: &str) -> FileRef {
    FileRef {
        region: "outside any partition".into(),
        owner: "partition-table",
        path: None,
        bytes: None,
        shared: false,
        maybe_data_of: Vec::new(),
        free_proven: false,
        symptom: if offset < (1 << 20) && scheme != "none" {
            "the partition table area: a damaged table can hide, shrink or move partitions".into()
        } else {
            "space outside every partition: harmless to the filesystems".into()
        },
    }
}

/// The owner of a block in a region whose filesystem (`filesystem`, as the region names it)
/// lostwrite cannot read.
fn unknown_filesystem(region: String, filesystem: &str) -> FileRef {
    FileRef {
        region,
        owner: "unknown-filesystem",
        path: None,
        bytes: None,
        shared: false,
        maybe_data_of: Vec::new(),
                free_proven: false,
        symptom: format!(
            "{filesystem}: not an ext2/3/4 or XFS filesystem lostwrite can read: it cannot say which file owns this block"
        ),
    }
}
