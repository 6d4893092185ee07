//! Partition tables: where the filesystems on a disk image live. MBR (with extended/logical
//! partitions, 512-byte sectors) and GPT (CRC-checked header and entries, 512- or 4096-byte
//! sectors, the backup header used when the primary is damaged). A table that is damaged or
//! absent is said plainly; the whole device is then treated as one region.

use super::le::{le32, le64};
use crate::device::BlockDevice;
use std::io;

const SECTOR: u64 = 512;

/// A region of the device that may hold a filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// "whole disk", "partition 1", ...
    pub name: String,
    /// Byte offset on the device.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What the first sectors say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// "gpt", "mbr" or "none".
    pub scheme: &'static str,
    /// The regions, in table order (the whole disk when there is no table).
    pub regions: Vec<Region>,
    /// Anything odd about the table (a damaged GPT header, entries beyond the device).
    pub warnings: Vec<String>,
}

fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    dev.read_at(&mut b, offset)?;
    Ok(b)
}

/// Reads the partition table of `dev`.
pub fn read_table(dev: &dyn BlockDevice) -> io::Result<Table> {
    let size = dev.size();
    let whole = || Region {
        name: "whole disk".into(),
        start: 0,
        len: size,
    };
    if size < 2 * SECTOR {
        return Ok(Table {
            scheme: "none",
            regions: vec![whole()],
            warnings: vec![],
        });
    }
    let mbr = read(dev, 0, SECTOR as usize)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(Table {
            scheme: "none",
            regions: vec![whole()],
            warnings: vec![],
        });
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[446 + 16 * i..462 + 16 * i];
            (e[4], le32(e, 8) as u64, le32(e, 12) as u64)
        })
        .collect();
    // A boot sector with no partition entries (a filesystem's own boot block) is no table.
    if entries.iter().all(|&(t, _, n)| t == 0 || n == 0) {
        return Ok(Table {
            scheme: "none",
            regions: vec![whole()],
            warnings: vec![],
        });
    }
    if entries.iter().any(|&(t, _, _)| t == 0xEE) {
        return read_gpt(dev, size);
    }
    let mut t = Table {
        scheme: "mbr",
        regions: Vec::new(),
        warnings: Vec::new(),
    };
    let mut logical = 5;
    for (i, &(kind, lba, sectors)) in entries.iter().enumerate() {
        if kind == 0 || sectors == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            read_ebr_chain(dev, lba, &mut logical, &mut t)?;
            continue;
        }
        push_checked(
            &mut t,
            format!("partition {}", i + 1),
            lba * SECTOR,
            sectors * SECTOR,
            size,
        );
    }
    Ok(t)
}

fn push_checked(t: &mut Table, name: String, start: u64, len: u64, size: u64) {
    if start.saturating_add(len) > size {
        t.warnings.push(format!(
            "{name} ends at byte {} beyond the device's {size} bytes",
            start.saturating_add(len)
        ));
    }
    t.regions.push(Region { name, start, len });
}

/// Logical partitions: a chain of extended boot records, each relative to the extended
/// partition's start.
fn read_ebr_chain(
    dev: &dyn BlockDevice,
    ext_lba: u64,
    n: &mut u32,
    t: &mut Table,
) -> io::Result<()> {
    let size = dev.size();
    let mut ebr_lba = ext_lba;
    for _ in 0..128 {
        if (ebr_lba + 1) * SECTOR > size {
            t.warnings.push(format!(
                "extended boot record at sector {ebr_lba} is beyond the device"
            ));
            return Ok(());
        }
        let b = read(dev, ebr_lba * SECTOR, SECTOR as usize)?;
        if b[510] != 0x55 || b[511] != 0xAA {
            t.warnings.push(format!(
                "extended boot record at sector {ebr_lba} has no signature"
            ));
            return Ok(());
        }
        let (kind, rel, sectors) = (
            b[446 + 4],
            le32(&b, 446 + 8) as u64,
            le32(&b, 446 + 12) as u64,
        );
        if kind != 0 && sectors != 0 {
            push_checked(
                t,
                format!("partition {n}"),
                (ebr_lba + rel) * SECTOR,
                sectors * SECTOR,
                size,
            );
            *n += 1;
        }
        let next = le32(&b, 462 + 8) as u64;
        if b[462 + 4] == 0 || next == 0 {
            return Ok(());
        }
        ebr_lba = ext_lba + next;
    }
    t.warnings
        .push("more than 128 logical partitions; stopped reading the chain".into());
    Ok(())
}

/// A GPT header and its entries, as far as they could be read and checked.
struct Gpt {
    /// The entries (count x size bytes), when the header is believable.
    entries: Option<(Vec<u8>, u64)>,
    /// What is wrong with this copy; empty when header and entries check out.
    damage: Vec<String>,
}

/// Reads the GPT header at byte `at` (sectors of `sector` bytes); None without its signature.
fn gpt_at(dev: &dyn BlockDevice, at: u64, sector: u64, size: u64) -> io::Result<Option<Gpt>> {
    let h = read(dev, at, sector as usize)?;
    if &h[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let mut g = Gpt {
        entries: None,
        damage: Vec::new(),
    };
    let hsize = (le32(&h, 12) as usize).clamp(92, sector as usize);
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32fast::hash(&hc) != le32(&h, 16) {
        g.damage.push("header checksum mismatch".into());
    }
    let (entries_lba, count, esize) = (le64(&h, 72), le32(&h, 80) as u64, le32(&h, 84) as u64);
    if !(128..=4096).contains(&esize)
        || count > 1024
        || entries_lba.saturating_add(1).saturating_mul(sector) > size
    {
        g.damage.push(format!(
            "the header names {count} entries of {esize} bytes at sector {entries_lba}: not believable"
        ));
        return Ok(Some(g));
    }
    let raw = read(dev, entries_lba * sector, (count * esize) as usize)?;
    if crc32fast::hash(&raw) != le32(&h, 88) {
        g.damage.push("partition entries checksum mismatch".into());
    }
    g.entries = Some((raw, esize));
    Ok(Some(g))
}

/// GPT with 512- or 4096-byte logical sectors (the header is at LBA 1: byte 512 or 4096). When
/// the primary header or its entries are damaged and the backup (at the last LBA) checks out,
/// the backup is used and a warning says so.
fn read_gpt(dev: &dyn BlockDevice, size: u64) -> io::Result<Table> {
    let mut t = Table {
        scheme: "gpt",
        regions: Vec::new(),
        warnings: Vec::new(),
    };
    let mut found = None;
    for sector in [512u64, 4096] {
        if size < 3 * sector {
            continue;
        }
        let primary = gpt_at(dev, sector, sector, size)?;
        let backup = || gpt_at(dev, size / sector * sector - sector, sector, size);
        match primary {
            Some(p) if p.damage.is_empty() => found = Some((p, sector)),
            Some(p) => {
                let why = p.damage.join(", ");
                match backup()? {
                    Some(b) if b.damage.is_empty() => {
                        t.warnings.push(format!(
                            "the primary GPT is damaged ({why}): the backup GPT header at the disk's last sector was used"
                        ));
                        found = Some((b, sector));
                    }
                    _ => {
                        t.warnings.push(format!(
                            "the primary GPT is damaged ({why}) and no intact backup was found: the partition table is damaged"
                        ));
                        found = Some((p, sector));
                    }
                }
            }
            None => match backup()? {
                Some(b) if b.damage.is_empty() => {
                    t.warnings.push(
                        "no primary GPT header at sector 1: the backup GPT header at the disk's last sector was used".into(),
                    );
                    found = Some((b, sector));
                }
                _ => continue,
            },
        }
        break;
    }
    let Some((g, sector)) = found else {
        t.warnings
            .push("protective MBR but no GPT header at sector 1".into());
        t.regions.push(Region {
            name: "whole disk".into(),
            start: 0,
            len: size,
        });
        return Ok(t);
    };
    let Some((raw, esize)) = g.entries else {
        return Ok(t);
    };
    for (i, e) in raw.chunks_exact(esize as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            t.warnings
                .push(format!("GPT entry {} ends before it starts", i + 1));
            continue;
        }
        push_checked(
            &mut t,
            format!("partition {}", i + 1),
            first.saturating_mul(sector),
            (last - first + 1).saturating_mul(sector),
            size,
        );
    }
    Ok(t)
}
