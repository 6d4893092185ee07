//! LVM2 physical volumes: where a region's logical volumes live. Reads the PV label (one of
//! sectors 0-3, "LABELONE" / "LVM2 001"), the metadata area it names (the mda header, the
//! circular buffer of text metadata, checksums checked, the newest seqno of all areas kept),
//! parses the volume group's text format with a small hand parser, and maps this PV's physical
//! extents to logical volumes. Linear and striped segments are mapped; any other segment type
//! (mirror, raid, thin, cache, snapshot...) is named with its type and not mapped. A logical
//! volume laid out contiguously on this PV becomes a region in which the filesystem is read as in
//! a partition; one whose every extent is on this PV but apart (segments apart, striped) is read
//! through its layout ([`lvview`](super::lvview)); every other piece is named by LV and LV
//! offset.

use super::le::{le32, le64};
use super::lvmtext::{items, tokens, Value};
use super::partition::Region;
use crate::device::BlockDevice;
use std::collections::BTreeMap;

const SECTOR: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The initial value of LVM's CRC-32 (same polynomial as zlib's, no final inversion).
const LVM_CRC_INIT: u32 = 0xf597_a6cf;

/// How one piece of a logical volume on this PV maps to the LV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Map {
    /// A linear segment: the piece's first extent is LV extent `lv_extent`.
    Linear {
        /// LV extent of the piece's first extent.
        lv_extent: u64,
    },
    /// One stripe of a striped segment.
    Striped {
        /// LV extent where the segment starts.
        seg_extent: u64,
        /// Which stripe this piece is (from 0).
        stripe: u64,
        /// Number of stripes.
        stripes: u64,
        /// Bytes per stripe chunk.
        chunk: u64,
    },
    /// A segment type lostwrite does not map ("raid1", "thin-pool", ...).
    Other(String),
}

/// A run of this PV's physical extents that belongs to one logical volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The logical volume's name.
    pub lv: String,
    /// First physical extent on this PV.
    pub pe: u64,
    /// Number of extents.
    pub count: u64,
    /// How it maps to the LV.
    pub map: Map,
}

/// What the metadata of one physical volume says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pv {
    /// The volume group's name.
    pub vg: String,
    /// The metadata's sequence number (the newest found).
    pub seqno: u64,
    /// Byte offset of the first physical extent from the PV's start.
    pub pe_start: u64,
    /// Bytes per extent.
    pub extent_size: u64,
    /// Physical extents on this PV.
    pub pe_count: u64,
    /// Physical volumes in the VG (this one included).
    pub pv_count: usize,
    /// The pieces of logical volumes on this PV, by physical extent.
    pub pieces: Vec<Piece>,
    /// Logical volumes laid out contiguously and linearly on this PV: name, first byte from the
    /// PV's start, length.
    pub contiguous: Vec<(String, u64, u64)>,
    /// Logical volumes whose every extent is on this PV, in linear or striped segments (the
    /// contiguous ones too): name and length in bytes. Their bytes can be assembled from the
    /// pieces.
    pub whole: Vec<(String, u64)>,
    /// Metadata areas (offset from the PV's start, length).
    pub metadata: Vec<(u64, u64)>,
    /// This PV's label UUID (32 characters, no dashes).
    pub uuid: String,
    /// Every physical volume of the VG, as its metadata names them (this one included).
    pub vg_pvs: Vec<VgPv>,
    /// Every logical volume's segments, on whichever PVs they lie, in metadata order.
    pub lvs: Vec<LvSegments>,
}

/// A physical volume of the VG as the metadata names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgPv {
    /// Its name in the metadata ("pv0", ...).
    pub name: String,
    /// Its UUID, without dashes (as its label holds it).
    pub uuid: String,
    /// Its UUID as LVM prints it (with dashes).
    pub id: String,
    /// The device it was last seen as (the metadata's hint), if written.
    pub device: Option<String>,
    /// Byte offset of its first physical extent.
    pub pe_start: u64,
}

/// One segment of a logical volume, on any PV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    /// First LV extent.
    pub start: u64,
    /// Extents.
    pub count: u64,
    /// Its type ("striped", "raid1", "thin", ...).
    pub kind: String,
    /// Bytes per stripe chunk (0 when not striped over several).
    pub chunk: u64,
    /// For a striped segment, each stripe's PV name and first physical extent; for another
    /// type, the areas it names as PV and extent, where it names them so.
    pub areas: Vec<(String, u64)>,
}

/// A logical volume's segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvSegments {
    /// Its name.
    pub name: String,
    /// Its segments, by first LV extent.
    pub segs: Vec<Seg>,
}

impl LvSegments {
    /// The PV names its segments use.
    pub fn pv_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .segs
            .iter()
            .flat_map(|s| s.areas.iter().map(|a| a.0.as_str()))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Its first segment of a type lostwrite cannot assemble, if any.
    pub fn other_kind(&self) -> Option<&str> {
        self.segs
            .iter()
            .find(|s| s.kind != "striped")
            .map(|s| s.kind.as_str())
    }
}

impl Pv {
    /// The byte of its LV that byte `off` (from the PV's start) holds, with the piece.
    pub fn lv_offset(&self, off: u64) -> Option<(&Piece, Option<u64>)> {
        let pe = off.checked_sub(self.pe_start)? / self.extent_size;
        let p = self
            .pieces
            .iter()
            .find(|p| pe >= p.pe && pe < p.pe.saturating_add(p.count))?;
        // Metadata may hold any numbers: the arithmetic saturates rather than wraps.
        let within = (off - self.pe_start).saturating_sub(p.pe.saturating_mul(self.extent_size));
        let lv = match &p.map {
            Map::Linear { lv_extent } => Some(
                lv_extent
                    .saturating_mul(self.extent_size)
                    .saturating_add(within),
            ),
            Map::Striped {
                seg_extent,
                stripe,
                stripes,
                chunk,
            } => {
                let (k, rest) = (within / chunk, within % chunk);
                let chunks = k.saturating_mul(*stripes).saturating_add(*stripe);
                Some(
                    seg_extent
                        .saturating_mul(self.extent_size)
                        .saturating_add(chunks.saturating_mul(*chunk))
                        .saturating_add(rest),
                )
            }
            Map::Other(_) => None,
        };
        Some((p, lv))
    }

    /// True when `off` (from the PV's start) is in the label or a metadata area.
    pub fn is_metadata(&self, off: u64) -> bool {
        off < 4 * SECTOR
            || self
                .metadata
                .iter()
                .any(|&(o, l)| off >= o && off < o.saturating_add(l))
    }
}

/// LVM's CRC-32 of `b`.
fn lvm_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!LVM_CRC_INIT);
    h.update(b);
    !h.finalize()
}

/// Reads the LVM2 PV in region `r`: None when it holds no PV label, an error saying why when
/// the label or metadata cannot be read.
pub fn read_pv(dev: &dyn BlockDevice, r: &Region) -> Option<Result<Pv, String>> {
    let read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
        if off.saturating_add(len as u64) > r.len {
            return Err(format!(
                "{len} bytes at {off} lie beyond the region's {} bytes",
                r.len
            ));
        }
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, r.start + off)
            .map_err(|e| format!("reading byte {off}: {e}"))?;
        Ok(b)
    };
    let head = read(0, 4 * SECTOR as usize).ok()?;
    let s = (0..4).find(|&s| {
        let l = &head[s * 512..s * 512 + 512];
        &l[0..8] == b"LABELONE" && &l[24..32] == b"LVM2 001"
    })?;
    Some(parse_pv(&head[s * 512..s * 512 + 512], &read))
}

fn parse_pv(
    label: &[u8],
    read: &dyn Fn(u64, usize) -> Result<Vec<u8>, String>,
) -> Result<Pv, String> {
    if lvm_crc(&label[20..]) != le32(label, 16) {
        return Err("the PV label's checksum does not match".into());
    }
    let at = le32(label, 20) as usize;
    if !(32..=512 - 72).contains(&at) {
        return Err(format!("the PV header offset {at} is not believable"));
    }
    let uuid: String = String::from_utf8_lossy(&label[at..at + 32]).into_owned();
    // Two lists of (offset, size), each ended by a zero entry: data areas, then metadata areas.
    let mut p = at + 40;
    let mut list = || {
        let mut v = Vec::new();
        while p + 16 <= 512 {
            let (o, l) = (le64(label, p), le64(label, p + 8));
            p += 16;
            if o == 0 {
                break;
            }
            v.push((o, l));
        }
        v
    };
    let _data = list();
    let mdas = list();
    if mdas.is_empty() {
        return Err(
            "this PV holds no metadata area (its VG's metadata is on other PVs only)".into(),
        );
    }
    let mut best: Option<(u64, Vg)> = None;
    let mut why = Vec::new();
    for &(o, l) in &mdas {
        match read_mda(o, read).and_then(|t| parse_vg(&t)) {
            Ok(vg) if best.as_ref().is_none_or(|(s, _)| vg.seqno > *s) => {
                best = Some((vg.seqno, vg))
            }
            Ok(_) => {}
            Err(e) => why.push(format!("metadata area at byte {o} ({l} bytes): {e}")),
        }
    }
    let Some((_, vg)) = best else {
        return Err(why.join("; "));
    };
    vg.for_pv(&uuid, mdas)
}

/// The newest committed metadata text of the area at byte `o`.
fn read_mda(
    o: u64,
    read: &dyn Fn(u64, usize) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let h = read(o, SECTOR as usize)?;
    if &h[4..20] != MDA_MAGIC {
        return Err("no metadata area header (magic missing)".into());
    }
    if lvm_crc(&h[4..]) != le32(&h, 0) {
        return Err("the metadata area header's checksum does not match".into());
    }
    let size = le64(&h, 28);
    let (off, len, crc) = (le64(&h, 40), le64(&h, 48), le32(&h, 56));
    if len == 0 {
        return Err("the metadata area holds no metadata".into());
    }
    if off >= size || len > size || len > 64 << 20 {
        return Err(format!(
            "metadata of {len} bytes at {off} in an area of {size} bytes: not believable"
        ));
    }
    // A circular buffer after the 512-byte header: the text may wrap to its start.
    let first = len.min(size - off);
    let mut text = read(o.saturating_add(off), first as usize)?;
    if first < len {
        text.extend(read(o.saturating_add(SECTOR), (len - first) as usize)?);
    }
    if lvm_crc(&text) != crc {
        return Err("the metadata text's checksum does not match".into());
    }
    while text.last() == Some(&0) {
        text.pop();
    }
    String::from_utf8(text).map_err(|_| "the metadata text is not UTF-8".into())
}

/// A volume group as its metadata says.
struct Vg {
    name: String,
    seqno: u64,
    body: Value,
}

/// Parses the text metadata: the one top-level section is the volume group.
fn parse_vg(text: &str) -> Result<Vg, String> {
    let t = tokens(text)?;
    let top = items(&t, &mut 0, 0)?;
    let (name, body) = top
        .into_iter()
        .find(|(_, v)| matches!(v, Value::Section(_)))
        .ok_or("no volume group section")?;
    let seqno = body.num("seqno")?;
    Ok(Vg { name, seqno, body })
}

impl Vg {
    /// The layout of the PV with label UUID `uuid` (32 characters, no dashes).
    fn for_pv(self, uuid: &str, metadata: Vec<(u64, u64)>) -> Result<Pv, String> {
        let b = &self.body;
        let extent_size = b.num("extent_size")?.saturating_mul(SECTOR);
        if extent_size == 0 {
            return Err("extent_size is 0".into());
        }
        let pvs = b
            .get("physical_volumes")
            .ok_or("no physical_volumes section")?
            .sections();
        let (me, pv) = pvs
            .iter()
            .find(|(_, v)| v.str("id").is_ok_and(|id| id.replace('-', "") == uuid))
            .ok_or("this PV's UUID is not among the VG's physical volumes")?;
        let pe_start = pv.num("pe_start")?.saturating_mul(SECTOR);
        let pe_count = pv.num("pe_count")?;
        let mut vg_pvs = Vec::new();
        for (name, v) in &pvs {
            let id = v.str("id")?.to_string();
            vg_pvs.push(VgPv {
                name: name.to_string(),
                uuid: id.replace('-', ""),
                id,
                device: v.str("device").ok().map(str::to_string),
                pe_start: v.num("pe_start")?.saturating_mul(SECTOR),
            });
        }
        let mut all_lvs = Vec::new();
        let mut pieces = Vec::new();
        // Per LV: its total extents and its linear pieces on this PV, for contiguity.
        let mut lvs: BTreeMap<String, Layout> = BTreeMap::new();
        if let Some(l) = b.get("logical_volumes") {
            for (lv, body) in l.sections() {
                let e = lvs.entry(lv.to_string()).or_default();
                let mut segs = Vec::new();
                for (_, seg) in body.sections() {
                    let start = seg.num("start_extent")?;
                    let count = seg.num("extent_count")?;
                    e.extents = e.extents.saturating_add(count);
                    let kind = seg.str("type")?;
                    segs.push(Seg {
                        start,
                        count,
                        kind: kind.to_string(),
                        chunk: seg.num("stripe_size").unwrap_or(0).saturating_mul(SECTOR),
                        areas: areas(seg),
                    });
                    let stripes = match (kind, seg.get("stripes")) {
                        ("striped", Some(Value::List(s))) => s,
                        _ => {
                            e.apart = true;
                            e.elsewhere = true;
                            // Another type: its areas on this PV, where it names them, are
                            // pieces that are not mapped.
                            for (pvn, pe) in areas(seg) {
                                if pvn == *me {
                                    pieces.push(Piece {
                                        lv: lv.to_string(),
                                        pe,
                                        count,
                                        map: Map::Other(kind.to_string()),
                                    });
                                }
                            }
                            continue;
                        }
                    };
                    let n = (stripes.len() / 2) as u64;
                    if n == 0 || count % n != 0 {
                        return Err(format!(
                            "LV {lv}: a striped segment of {count} extents over {n} stripes"
                        ));
                    }
                    let chunk = seg.num("stripe_size").unwrap_or(0).saturating_mul(SECTOR);
                    if n > 1 && chunk == 0 {
                        return Err(format!("LV {lv}: a striped segment without stripe_size"));
                    }
                    for (k, pair) in stripes.chunks_exact(2).enumerate() {
                        let (Value::Str(pvn), Value::Num(pe)) = (&pair[0], &pair[1]) else {
                            return Err(format!(
                                "LV {lv}: a stripe is not a PV name and an extent"
                            ));
                        };
                        if pvn != me {
                            e.apart = true;
                            e.elsewhere = true;
                            continue;
                        }
                        let map = if n == 1 {
                            e.linear.push((start, *pe as u64, count));
                            Map::Linear { lv_extent: start }
                        } else {
                            e.apart = true;
                            Map::Striped {
                                seg_extent: start,
                                stripe: k as u64,
                                stripes: n,
                                chunk,
                            }
                        };
                        pieces.push(Piece {
                            lv: lv.to_string(),
                            pe: *pe as u64,
                            count: count / n,
                            map,
                        });
                    }
                }
                segs.sort_by_key(|s| s.start);
                all_lvs.push(LvSegments {
                    name: lv.to_string(),
                    segs,
                });
            }
        }
        pieces.sort_by_key(|p| p.pe);
        let mut contiguous = Vec::new();
        let mut whole = Vec::new();
        for (lv, l) in lvs {
            if !l.elsewhere && l.extents > 0 {
                whole.push((lv.clone(), l.extents.saturating_mul(extent_size)));
            }
            let (total, mut lin, other) = (l.extents, l.linear, l.apart);
            lin.sort_unstable();
            let joined = lin.windows(2).all(|w| {
                w[0].0.saturating_add(w[0].2) == w[1].0 && w[0].1.saturating_add(w[0].2) == w[1].1
            });
            if !other && joined && lin.first().is_some_and(|f| f.0 == 0) && total > 0 {
                contiguous.push((
                    lv,
                    pe_start.saturating_add(lin[0].1.saturating_mul(extent_size)),
                    total.saturating_mul(extent_size),
                ));
            }
        }
        Ok(Pv {
            vg: self.name,
            seqno: self.seqno,
            pe_start,
            extent_size,
            pe_count,
            pv_count: pvs.len(),
            pieces,
            contiguous,
            whole,
            metadata,
            uuid: uuid.to_string(),
            vg_pvs,
            lvs: all_lvs,
        })
    }
}

/// One logical volume's layout, gathered to tell whether it lies in one piece on this PV.
#[derive(Default)]
struct Layout {
    /// Extents in all its segments.
    extents: u64,
    /// Its linear pieces on this PV: (LV extent, physical extent, count).
    linear: Vec<(u64, u64, u64)>,
    /// A segment is striped, of another type, or on another PV.
    apart: bool,
    /// A segment is of another type, or on another PV.
    elsewhere: bool,
}

/// The (PV name, extent) pairs a segment of another type names ("stripes", "mirrors", ...).
fn areas(seg: &Value) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for key in ["stripes", "mirrors", "raids"] {
        if let Some(Value::List(l)) = seg.get(key) {
            for pair in l.chunks(2) {
                if let [Value::Str(pv), Value::Num(pe)] = pair {
                    v.push((pv.clone(), *pe as u64));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"vg0 {
id = "x"
seqno = 7
extent_size = 8192 # 4 MiB
physical_volumes {
pv0 { id = "abc-def" pe_start = 2048 pe_count = 15 }
}
logical_volumes {
root { segment_count = 2
segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }
segment2 { start_extent = 2 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 2] }
}
data { segment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 2 stripe_size = 128 stripes = ["pv0", 6, "pv0", 8] } }
}
}
contents = "Text Format Volume Group"
version = 1
"#;

    #[test]
    fn linear_and_striped_extents_map_to_their_lv() {
        let pv = parse_vg(TEXT)
            .unwrap()
            .for_pv("abcdef", vec![(4096, 0xff000)])
            .unwrap();
        assert_eq!(pv.seqno, 7);
        let mib = 1 << 20;
        assert_eq!(pv.contiguous, vec![("root".into(), mib, 12 * mib)]);
        assert_eq!(
            pv.whole,
            vec![("data".into(), 16 * mib), ("root".into(), 12 * mib)]
        );
        let (p, o) = pv.lv_offset(mib + 4 * mib + 5).unwrap();
        assert_eq!((p.lv.as_str(), o), ("root", Some(4 * mib + 5)));
        // Extent 8 is stripe 1: its first 64 KiB chunk is the LV's second chunk.
        let (p, o) = pv.lv_offset(mib + 8 * 4 * mib + 70 * 1024).unwrap();
        assert_eq!((p.lv.as_str(), o), ("data", Some(3 * 64 * 1024 + 6 * 1024)));
        assert!(pv.lv_offset(mib + 12 * 4 * mib).is_none());
        assert!(pv.is_metadata(5000) && !pv.is_metadata(mib));
    }

    #[test]
    fn a_vg_over_two_pvs_maps_only_this_pvs_extents() {
        let text = r#"vg1 { seqno = 3 extent_size = 8192
physical_volumes { pv0 { id = "a-b" pe_start = 2048 pe_count = 10 } pv1 { id = "c-d" pe_start = 2048 pe_count = 10 } }
logical_volumes {
home { segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv1", 0] }
segment2 { start_extent = 2 extent_count = 3 type = "striped" stripe_count = 1 stripes = ["pv0", 4] } }
mirror { segment1 { start_extent = 0 extent_count = 1 type = "raid1" raids = ["pv0", 0, "pv1", 5] } }
}
}"#;
        let pv = parse_vg(text).unwrap().for_pv("ab", vec![]).unwrap();
        assert_eq!(pv.pv_count, 2);
        assert!(pv.contiguous.is_empty(), "home is partly on pv1");
        assert!(
            pv.whole.is_empty(),
            "home is partly on pv1, mirror is raid1"
        );
        let mib = 1 << 20;
        let (p, o) = pv.lv_offset(mib + 4 * 4 * mib + 7).unwrap();
        assert_eq!((p.lv.as_str(), o), ("home", Some(2 * 4 * mib + 7)));
        let (p, o) = pv.lv_offset(mib + 7).unwrap();
        assert_eq!((&p.map, o), (&Map::Other("raid1".into()), None));
        assert!(pv.lv_offset(mib + 9 * 4 * mib).is_none());
        assert!(parse_vg(text).unwrap().for_pv("zz", vec![]).is_err());
    }

    #[test]
    fn any_text_or_numbers_give_an_answer_not_a_panic() {
        assert!(parse_vg(&"[".repeat(100_000)).is_err());
        assert!(parse_vg(&format!("v {{ seqno = 1 x = {}", "[".repeat(100_000))).is_err());
        let huge = TEXT
            .replace("pe_start = 2048", "pe_start = 9223372036854775807")
            .replace("\"pv0\", 6", "\"pv0\", 9223372036854775807")
            .replace("extent_count = 4", "extent_count = 9223372036854775806");
        if let Ok(pv) = parse_vg(&huge)
            .unwrap()
            .for_pv("abcdef", vec![(u64::MAX, u64::MAX)])
        {
            for off in [0, 1 << 20, u64::MAX / 2, u64::MAX] {
                let _ = pv.lv_offset(off);
                let _ = pv.is_metadata(off);
            }
        }
        // Every cut of the text parses or says why.
        for n in 0..TEXT.len() {
            if TEXT.is_char_boundary(n) {
                let _ = parse_vg(&TEXT[..n]).map(|vg| vg.for_pv("abcdef", vec![]));
            }
        }
    }

    #[test]
    fn broken_text_says_why() {
        assert!(parse_vg("vg0 { seqno = ").is_err());
        assert!(parse_vg("vg0 { seqno = \"x").is_err());
        assert!(parse_vg("vg0 { }").is_err());
        assert!(parse_vg("").is_err());
    }
}
