//! The logical volumes of a disk's LVM2 physical volumes as regions of the disk. Owns the
//! decision of how each LV is read: laid out in one piece on one PV (a region read in place),
//! its pieces apart on one PV, or its extents on several PVs — partitions of this disk, or other
//! disks of the same report (assembled through [`lvview`](super::lvview)); an LV with extents
//! on a PV that is nowhere to be found is named with that PV (its UUID and the device the
//! metadata last saw it as). It also names a PV block outside every LV read as a region
//! ([`in_pv`]): a piece of another LV, the label or metadata, or free extents.

use super::lvm::{self, LvSegments, Map, Pv};
use super::lvview::{Assembled, Layout};
use super::owners::FileRef;
use super::partition::{self, Region, Table};
use crate::device::BlockDevice;
use std::collections::{BTreeMap, HashMap};

/// How the LVM2 volumes of a disk were laid out as regions.
pub(super) struct Lvm {
    /// Per region of the grown table: what its PV metadata says (None: not a PV).
    pub roles: Vec<Option<Result<Pv, String>>>,
    /// Per region: the layout of a logical volume assembled from pieces apart.
    pub assembled: Vec<Option<Assembled>>,
    /// Per (VG, LV) read across several PVs, or not read because a PV is missing: its region
    /// name, and why it is not mapped (None when it is assembled).
    pub across: Across,
}

/// A PV found on this disk or another one given: the disk (0: this one, n: `others[n - 1]`),
/// the region name (with the disk's path for another disk), the region's start, and the PV.
type Found = (usize, String, u64, Pv);

/// Where a PV of a VG lies: its disk, its region's name, the offset of its first extent.
type Place = (usize, String, u64);

/// Per (VG, LV) read or sought across PVs: its region name, and why it is not mapped.
pub(super) type Across = HashMap<(String, String), (String, Option<String>)>;

/// Reads every region that is an LVM2 physical volume: its logical volumes laid out in one
/// piece on it become regions (before it, so that they are found first) in which filesystems
/// are read as in partitions; those whose every extent is on it but apart (segments apart,
/// striped) become regions read through their layout; those whose extents lie on several PVs,
/// all found on this disk or on the `others` disks given, become regions assembled across them
/// (at the table's start). `device_path` is this disk, left out of `others`.
pub(super) fn expand_lvm(
    table: &mut Table,
    dev: &dyn BlockDevice,
    device_path: &str,
    others: &[String],
    notes: &mut Vec<String>,
) -> Lvm {
    let pvs: Vec<Option<Result<Pv, String>>> =
        table.regions.iter().map(|r| lvm::read_pv(dev, r)).collect();
    let mut found: Vec<Found> = table
        .regions
        .iter()
        .zip(&pvs)
        .filter_map(|(r, pv)| Some((0, r.name.clone(), r.start, pv.clone()?.ok()?)))
        .collect();
    let multi = found.iter().any(|f| f.3.pv_count > 1);
    let others: Vec<&String> = others
        .iter()
        .filter(|o| !same_device(o, device_path))
        .collect();
    if multi {
        for (k, path) in others.iter().enumerate() {
            found.extend(pvs_of(path, k + 1));
        }
    }
    let (front, across) = assemble_across(&found, &others, notes);
    let mut regions = Vec::new();
    let mut roles = Vec::new();
    let mut assembled = Vec::new();
    for (r, a) in front {
        regions.push(r);
        roles.push(None);
        assembled.push(Some(a));
    }
    for (r, pv) in std::mem::take(&mut table.regions).into_iter().zip(pvs) {
        let Some(pv) = pv else {
            regions.push(r);
            roles.push(None);
            assembled.push(None);
            continue;
        };
        match &pv {
            Ok(pv) => one_pv(pv, &r, &across, &mut regions, &mut roles, &mut assembled, notes),
            Err(e) => notes.push(format!(
                "{}: an LVM2 physical volume whose metadata could not be read: {e}; its findings are not mapped to logical volumes",
                r.name
            )),
        }
        regions.push(r);
        roles.push(Some(pv));
        assembled.push(None);
    }
    table.regions = regions;
    Lvm {
        roles,
        assembled,
        across,
    }
}

/// The LVs of one PV in region `r`: those in one piece, and those whose every extent is on it
/// but apart, pushed as regions; every other LV with a piece here noted as not mapped.
fn one_pv(
    pv: &Pv,
    r: &Region,
    across: &Across,
    regions: &mut Vec<Region>,
    roles: &mut Vec<Option<Result<Pv, String>>>,
    assembled: &mut Vec<Option<Assembled>>,
    notes: &mut Vec<String>,
) {
    for (lv, start, len) in &pv.contiguous {
        if start.saturating_add(*len) > r.len {
            notes.push(format!(
                "{}: logical volume {}/{lv} ends at byte {} beyond the physical volume's {} bytes: not mapped",
                r.name,
                pv.vg,
                start.saturating_add(*len),
                r.len
            ));
            continue;
        }
        regions.push(Region {
            name: lv_region(&pv.vg, lv, &r.name),
            start: r.start + start,
            len: *len,
        });
        roles.push(None);
        assembled.push(None);
    }
    let mut joined: Vec<&str> = Vec::new();
    for (lv, _) in &pv.whole {
        if pv.contiguous.iter().any(|c| &c.0 == lv) {
            continue;
        }
        let name = lv_region(&pv.vg, lv, &r.name);
        match Layout::of(pv, lv, r.start) {
            Ok(l) if l.device_span().1 <= r.start.saturating_add(r.len) => {
                regions.push(Region {
                    name,
                    start: l.device_span().0,
                    len: l.len,
                });
                roles.push(None);
                assembled.push(Some(Assembled::new(l)));
                joined.push(lv);
            }
            Ok(_) => notes.push(format!(
                "{}: {name} has extents beyond the physical volume's {} bytes: not mapped to files",
                r.name, r.len
            )),
            Err(e) => notes.push(format!(
                "{}: {name} cannot be assembled from its segments ({e}): not mapped to files",
                r.name
            )),
        }
    }
    let mut unmapped: Vec<String> = Vec::new();
    for p in &pv.pieces {
        if pv.contiguous.iter().any(|c| c.0 == p.lv)
            || joined.contains(&p.lv.as_str())
            || unmapped.contains(&p.lv)
        {
            continue;
        }
        unmapped.push(p.lv.clone());
        match across.get(&(pv.vg.clone(), p.lv.clone())) {
            // Assembled across PVs: a region of its own.
            Some((_, None)) => {}
            // A PV missing: said once, by the pass that looked for it.
            Some((_, Some(_))) => {}
            None => notes.push(format!(
                "{}: {}: {}; its blocks are named by their offset in the logical volume",
                r.name,
                lv_region(&pv.vg, &p.lv, &r.name),
                why_unmapped(&p.map)
            )),
        }
    }
}

/// The PVs (with readable metadata) on the disk at `path`, numbered `k`; none when it cannot be
/// opened (its own report says why).
fn pvs_of(path: &str, k: usize) -> Vec<Found> {
    let Ok(dev) = crate::device::open(path, false) else {
        return Vec::new();
    };
    let Ok(t) = partition::read_table(&dev) else {
        return Vec::new();
    };
    t.regions
        .iter()
        .filter_map(|r| {
            let pv = lvm::read_pv(&dev, r)?.ok()?;
            Some((k, format!("{path} {}", r.name), r.start, pv))
        })
        .collect()
}

/// Whether `a` and `b` name the same device: the same text, or paths to the same file.
fn same_device(a: &str, b: &str) -> bool {
    a == b
        || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// The LVs with extents on several PVs, of every VG with a PV on this disk: each whose PVs are
/// all found is laid out across them (a region and its layout, to go first in the table); each
/// with a PV not found is named with that PV in a note. Returns the regions and, per (VG, LV),
/// its region name and why it is not mapped.
fn assemble_across(
    found: &[Found],
    others: &[&String],
    notes: &mut Vec<String>,
) -> (Vec<(Region, Assembled)>, Across) {
    let mut front = Vec::new();
    let mut across = HashMap::new();
    // Per VG on this disk, the newest metadata of any of its PVs found.
    let mut vgs: BTreeMap<&str, &Pv> = BTreeMap::new();
    for f in found.iter().filter(|f| f.0 == 0 && f.3.pv_count > 1) {
        let e = vgs.entry(f.3.vg.as_str()).or_insert(&f.3);
        if f.3.seqno > e.seqno {
            *e = &f.3;
        }
    }
    for (vg, meta) in vgs {
        // Where each PV of the VG is: (disk, region name, offset of its first extent there).
        let locate = |name: &str| -> Option<Place> {
            let want = meta.vg_pvs.iter().find(|p| p.name == name)?;
            let f = found
                .iter()
                .find(|f| f.3.vg == vg && f.3.uuid == want.uuid)?;
            Some((f.0, f.1.clone(), f.2.saturating_add(f.3.pe_start)))
        };
        let mut missing_noted = false;
        for lv in &meta.lvs {
            let names = lv.pv_names();
            if lv.other_kind().is_some() || names.len() < 2 {
                continue;
            }
            // Only the LVs with a piece on this disk concern its findings.
            if !names.iter().any(|n| locate(n).is_some_and(|l| l.0 == 0)) {
                continue;
            }
            let missing: Vec<String> = names
                .iter()
                .filter(|n| locate(n).is_none())
                .filter_map(|n| meta.vg_pvs.iter().find(|p| p.name == *n))
                .map(|p| {
                    format!(
                        "{} (UUID {}{})",
                        p.name,
                        p.id,
                        p.device
                            .as_ref()
                            .map(|d| format!(", last seen as {d}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let mut places: Vec<String> = Vec::new();
            for n in &names {
                if let Some((_, place, _)) = locate(n) {
                    if !places.contains(&place) {
                        places.push(place);
                    }
                }
            }
            let name = lv_region(vg, &lv.name, &places.join(", "));
            let key = (vg.to_string(), lv.name.clone());
            if !missing.is_empty() {
                let why = format!(
                    "with extents on physical volume {} of volume group {vg}, which is on none of the disks given: lostwrite cannot assemble it, so its filesystem is not mapped to files (give that disk's image too: `report DISK1 DISK2 ...`)",
                    missing.join(" and ")
                );
                notes.push(format!(
                    "{vg}/{}: {why}; its blocks are named by their offset in the logical volume",
                    lv.name
                ));
                missing_noted = true;
                across.insert(key, (name, Some(why)));
                continue;
            }
            let disks: Vec<String> = others.iter().map(|s| s.to_string()).collect();
            match layout_across(lv, meta.extent_size, &locate, disks) {
                Ok(l) => {
                    let (lo, _) = l.device_span();
                    front.push((
                        Region {
                            name: name.clone(),
                            start: lo,
                            len: l.len,
                        },
                        Assembled::new(l),
                    ));
                    across.insert(key, (name, None));
                }
                Err(e) => {
                    let why = format!("cannot be assembled from its segments ({e})");
                    notes.push(format!("{name}: {why}: not mapped to files"));
                    across.insert(key, (name, Some(why)));
                }
            }
        }
        if !missing_noted {
            continue;
        }
        let absent: Vec<String> = meta
            .vg_pvs
            .iter()
            .filter(|p| locate(&p.name).is_none())
            .map(|p| format!("{} (UUID {})", p.name, p.id))
            .collect();
        notes.push(format!(
            "volume group {vg} spans {} physical volumes; not found on the disks given: {}",
            meta.pv_count,
            absent.join(", ")
        ));
    }
    (front, across)
}

/// [`Layout::across`] with PVs located as (disk, offset of the first extent).
fn layout_across(
    lv: &LvSegments,
    extent_size: u64,
    locate: &dyn Fn(&str) -> Option<Place>,
    disks: Vec<String>,
) -> Result<Layout, String> {
    Layout::across(lv, extent_size, &|n| locate(n).map(|l| (l.0, l.2)), disks)
}

/// The region name of logical volume `lv` of `vg` on a PV in region `pv_region`.
pub(super) fn lv_region(vg: &str, lv: &str, pv_region: &str) -> String {
    format!("{vg}/{lv} (LVM, in {pv_region})")
}

/// Why a logical volume's filesystem is not mapped to files.
fn why_unmapped(map: &Map) -> String {
    match map {
        Map::Striped { stripes, .. } => format!(
            "striped over {stripes} stripes, not all of which lostwrite can assemble from this disk (beyond this physical volume, or of a segment type it does not read): lostwrite does not map its filesystem to files"
        ),
        Map::Other(kind) => format!("a {kind} segment: lostwrite does not map this segment type"),
        Map::Linear { .. } => "with segments lostwrite cannot assemble from this disk (beyond this physical volume, or of a segment type it does not read): lostwrite does not map its filesystem to files".into(),
    }
}

/// The owner of a block in an LVM2 physical volume outside every logical volume mapped as a
/// region: a piece of another LV (named by the region `across` gives an LV read or sought
/// across PVs), the label or metadata, or free space.
pub(super) fn in_pv(
    r: &Region,
    pv: &Result<Pv, String>,
    offset: u64,
    block_size: u64,
    across: &Across,
) -> FileRef {
    let at = offset - r.start;
    let (region, owner, path, bytes, symptom) = match pv {
        Err(e) => (
            r.name.clone(),
            "lvm-pv",
            None,
            None,
            format!("an LVM2 physical volume whose metadata could not be read ({e}): the logical volume holding this block is unknown; `pvs --segments` and `lvs --segments -o+seg_pe_ranges` on a copy map the offset"),
        ),
        Ok(pv) => match pv.lv_offset(at) {
            Some((p, lvo)) => {
                let (region, why) = match across.get(&(pv.vg.clone(), p.lv.clone())) {
                    Some((name, why)) => (
                        name.clone(),
                        why.clone().unwrap_or_else(|| why_unmapped(&p.map)),
                    ),
                    None => (lv_region(&pv.vg, &p.lv, &r.name), why_unmapped(&p.map)),
                };
                (
                    region,
                    "lvm-volume",
                    Some(format!("{}/{}", pv.vg, p.lv)),
                    lvo.map(|o| (o, o + block_size)),
                    format!(
                        "logical volume {}/{}, {why}; check its filesystem with its own tools (the byte ranges are offsets in the logical volume)",
                        pv.vg, p.lv
                    ),
                )
            }
            None if pv.is_metadata(at) || at < pv.pe_start => (
                r.name.clone(),
                "lvm-metadata",
                None,
                None,
                format!("the LVM2 label or metadata of volume group {}: an old copy can make the volume group unreadable or undo changes to its logical volumes (`vgcfgrestore` from a backup in /etc/lvm repairs it)", pv.vg),
            ),
            None => (
                r.name.clone(),
                "lvm-free",
                None,
                None,
                format!("free space of volume group {} now: no logical volume uses it by the current metadata; not proven harmless: lostwrite keeps no older metadata, so whether a logical volume used it earlier cannot be read back; the label and metadata have no finding either, so one that did was most likely removed or reduced by a write that was not lost (low risk)", pv.vg),
            ),
        },
    };
    FileRef {
        region,
        owner,
        path,
        bytes,
        shared: false,
        symptom,
        maybe_data_of: Vec::new(),
        free_proven: false,
    }
}
