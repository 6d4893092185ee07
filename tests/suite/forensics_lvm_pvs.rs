//! Forensics in volume groups over several physical volumes: a logical volume with extents on
//! two PVs, each in a GPT partition of one disk, and one with extents on two disks. The VG is
//! made by pvcreate/vgcreate over loop devices and its LVs written by vgcfgrestore (no
//! device-mapper); the LV's ext4 is laid over its extents as LVM would, and a block of one file
//! in each piece is reverted under the disk's ledger. The report must name that file at the
//! right byte offsets; with a PV's disk not given, the LV and the missing PV must be named.

use crate::forensics_lvm::{filesystems, lv_id, notes, owners, report_json, show_report, tools};
use crate::forensics_lvm::{Loop, MIB};
use crate::forensics_lvm_apart::{assert_big_file_blocks, ext4_with_big_file, revert_blocks};
use crate::helpers::*;
use crate::service::{have, run};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// A PV of the VG as its metadata names it: name, UUID (with dashes), device, pe_start bytes.
type MadePv = (String, String, String, u64);

/// Makes a PV on each (image, offset, length), a VG `vg` with 4 MiB extents over them (pv0 the
/// first) and the logical volumes `lvs` through vgcfgrestore. Returns the PVs in order.
fn make_vg(pvs: &[(&Path, u64, u64)], vg: &str, lvs: &str) -> Vec<MadePv> {
    let loops: Vec<Loop> = pvs.iter().map(|&(i, o, l)| Loop::new(i, o, l)).collect();
    let dir = tempfile::tempdir().unwrap();
    for l in &loops {
        run(Command::new("pvcreate").args(["-qq", "-y", "-ff", &l.0]));
    }
    run(Command::new("vgcreate")
        .args(["-qq", "-An", "-s", "4m", vg])
        .args(loops.iter().map(|l| &l.0)));
    let backup = dir.path().join("vg.txt");
    run(Command::new("vgcfgbackup").arg("-f").arg(&backup).arg(vg));
    let text = std::fs::read_to_string(&backup).unwrap();
    let end = text.rfind('}').unwrap();
    let restored = dir.path().join("vg-lvs.txt");
    std::fs::write(
        &restored,
        format!(
            "{}\tlogical_volumes {{\n{lvs}\n\t}}\n{}",
            &text[..end],
            &text[end..]
        ),
    )
    .unwrap();
    run(Command::new("vgcfgrestore")
        .arg("-f")
        .arg(&restored)
        .arg(vg));
    // The physical_volumes section: pvN { id = ..., device = ..., pe_start = ... }.
    let mut made: Vec<MadePv> = Vec::new();
    let value = |l: &str, key: &str| {
        l.strip_prefix(key).map(|v| {
            v.split('"')
                .nth(1)
                .unwrap_or(v)
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
    };
    for l in text.lines().map(str::trim) {
        if l.starts_with("pv") && l.ends_with('{') {
            made.push((
                l.trim_end_matches(['{', ' ']).to_string(),
                String::new(),
                String::new(),
                0,
            ));
        } else if let Some(m) = made.last_mut() {
            if let Some(v) = value(l, "id = ") {
                m.1 = v;
            } else if let Some(v) = value(l, "device = ") {
                m.2 = v;
            } else if let Some(v) = value(l, "pe_start = ") {
                m.3 = v.parse::<u64>().unwrap() * 512;
            }
        }
    }
    // Order as the loops were given.
    made.sort_by_key(|m| loops.iter().position(|l| l.0 == m.2).unwrap());
    assert_eq!(made.len(), pvs.len(), "{text}");
    made
}

/// An LV section whose segments are (LV extent, extents, PV name, first PE), linear.
fn lv_section(name: &str, segments: &[(u64, u64, &str, u64)]) -> String {
    let mut t = format!(
        "{name} {{\nid = \"{}\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = {}\n",
        lv_id(name),
        segments.len()
    );
    for (i, (start, count, pv, pe)) in segments.iter().enumerate() {
        t += &format!(
            "segment{} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"{pv}\", {pe}]\n}}\n",
            i + 1
        );
    }
    t + "}\n"
}

/// Lays the 16 MiB ext4 image `fs` over LV `data` (its first 8 MiB at `first`, the rest at
/// `second`, each an (image, byte offset)).
fn lay(fs: &[u8], first: (&Path, u64), second: (&Path, u64)) {
    for ((img, at), half) in [first, second].into_iter().zip(fs.chunks(8 * MIB as usize)) {
        let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        f.write_all_at(half, at).unwrap();
    }
}

/// The file blocks of /app/big.fs just before and just after LV byte 8 MiB (one in each piece).
fn either_side(blocks: &[u64]) -> (u64, u64) {
    let before = blocks.iter().rposition(|&b| b < 2048).unwrap() as u64;
    let after = blocks.iter().position(|&b| b >= 2048).unwrap() as u64;
    (before, after)
}

/// An LV of 16 MiB: LV extents 0-1 on pv0 (PE 0-1), 2-3 on pv1 (PE 2-3).
fn two_pv_lv() -> String {
    lv_section("data", &[(0, 2, "pv0", 0), (2, 2, "pv1", 2)])
}

/// A VG over two GPT partitions of one disk, its LV `data` (ext4) in both: a reverted block of
/// /app/big.fs in each partition is named as that file, at its offset in the file.
#[test]
fn report_maps_an_lv_over_two_partitions_of_one_disk_to_files() {
    if !tools() || !have("sgdisk") || !have("nbdfuse") || !crate::service::can_mount() {
        return;
    }
    let s = Scratch::new(64 * MIB);
    run(Command::new("sgdisk")
        .args([
            "-o",
            "-n",
            "1:2048:+28M",
            "-t",
            "1:8e00",
            "-n",
            "2:0:+28M",
            "-t",
            "2:8e00",
        ])
        .arg(&s.image));
    let (p1, p2) = (MIB, MIB + 28 * MIB);
    let pvs = make_vg(
        &[(&s.image, p1, 28 * MIB), (&s.image, p2, 28 * MIB)],
        "lwtestpvs",
        &two_pv_lv(),
    );
    let (fs, blocks) = ext4_with_big_file(s.dir.path());
    let dev_of = |lv: u64| {
        if lv < 8 * MIB {
            p1 + pvs[0].3 + lv
        } else {
            p2 + pvs[1].3 + 8 * MIB + (lv - 8 * MIB)
        }
    };
    lay(&fs, (&s.image, dev_of(0)), (&s.image, dev_of(8 * MIB)));
    s.init(4096, true);
    let (before, after) = either_side(&blocks);
    let expect: Vec<(u64, u64)> = [before, after]
        .iter()
        .map(|&f| (dev_of(blocks[f as usize] * 4096) / 4096, f))
        .collect();
    assert!(expect[0].0 * 4096 < p2 && expect[1].0 * 4096 >= p2);
    revert_blocks(&s, &[expect[0].0, expect[1].0]);

    let v = report_json(&s.image);
    let region = "lwtestpvs/data (LVM, in partition 1, partition 2)";
    assert!(
        filesystems(&v).contains(&format!("{region}: ext4")),
        "{:?}\n{:#?}",
        filesystems(&v),
        notes(&v)
    );
    assert_big_file_blocks(&v, region, &expect);
    assert!(
        !notes(&v).iter().any(|n| n.contains("not found")),
        "{:#?}",
        notes(&v)
    );
    show_report(&s.image, &[]);
}

/// Two disks, each a whole-disk PV of one VG, an LV with extents on both: for the disks and
/// their ledgers, one image each, the LV's ext4 laid over both.
struct TwoDisks {
    a: Scratch,
    b: Scratch,
    pvs: Vec<MadePv>,
    /// The file's blocks, in file order, and the device blocks (disk a, disk b) reverted.
    expect: [(u64, u64); 2],
}

fn two_disks() -> TwoDisks {
    let (a, b) = (Scratch::new(40 * MIB), Scratch::new(40 * MIB));
    let pvs = make_vg(
        &[(&a.image, 0, 40 * MIB), (&b.image, 0, 40 * MIB)],
        "lwtestdisks",
        &two_pv_lv(),
    );
    let (fs, blocks) = ext4_with_big_file(a.dir.path());
    let (at_a, at_b) = (pvs[0].3, pvs[1].3 + 8 * MIB);
    lay(&fs, (&a.image, at_a), (&b.image, at_b));
    a.init(4096, true);
    b.init(4096, true);
    let (before, after) = either_side(&blocks);
    let dev_a = (at_a + blocks[before as usize] * 4096) / 4096;
    let dev_b = (at_b + blocks[after as usize] * 4096 - 8 * MIB) / 4096;
    revert_blocks(&a, &[dev_a]);
    revert_blocks(&b, &[dev_b]);
    TwoDisks {
        a,
        b,
        pvs,
        expect: [(dev_a, before), (dev_b, after)],
    }
}

/// The fleet report over both disks assembles the LV on each: each disk's reverted block is
/// named as /app/big.fs at its offset in the file.
#[test]
fn fleet_report_maps_an_lv_over_two_disks_to_files() {
    if !tools() || !have("nbdfuse") || !crate::service::can_mount() {
        return;
    }
    let t = two_disks();
    let o = bin()
        .args(["report", "--files", "--json"])
        .arg(&t.a.image)
        .arg(&t.b.image)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    for (image, (block, file_block)) in [(&t.a.image, t.expect[0]), (&t.b.image, t.expect[1])] {
        let disk = v["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == image.to_str().unwrap())
            .unwrap_or_else(|| panic!("{image:?} in {v}"));
        let r = &disk["report"];
        let by_block = owners(r);
        let got = &by_block[&block];
        assert_eq!(got.len(), 1, "{got:?}\n{:#?}", notes(r));
        let (region, owner, path, bytes) = &got[0];
        assert!(
            region.starts_with("lwtestdisks/data (LVM, in ") && region.contains(", "),
            "{region}"
        );
        assert_eq!(
            (owner.as_str(), path.as_str()),
            ("file", "/app/big.fs"),
            "{:#?}",
            notes(r)
        );
        assert_eq!(
            bytes,
            &serde_json::json!([file_block * 4096, (file_block + 1) * 4096]),
            "{image:?}"
        );
    }
    if std::env::var_os("LOSTWRITE_SHOW_REPORT").is_some() {
        let o = bin()
            .args(["report", "--files"])
            .arg(&t.a.image)
            .arg(&t.b.image)
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    }
}

/// One disk of the two reported alone: the LV is named with the PV that is missing (its UUID and
/// the device the metadata last saw it as), in a note and in the damaged block's symptom.
#[test]
fn report_names_the_missing_pv_of_an_lv_over_two_disks() {
    if !tools() || !have("nbdfuse") || !crate::service::can_mount() {
        return;
    }
    let t = two_disks();
    let v = report_json(&t.a.image);
    let (uuid, device) = (&t.pvs[1].1, &t.pvs[1].2);
    let by_block = owners(&v);
    let got = &by_block[&t.expect[0].0];
    assert_eq!(got.len(), 1, "{got:?}");
    let (_, owner, path, bytes) = &got[0];
    assert_eq!(
        (owner.as_str(), path.as_str()),
        ("lvm-volume", "lwtestdisks/data")
    );
    // The LV offset of the block: disk a holds LV bytes 0-8 MiB from its pe_start.
    let lv_off = t.expect[0].0 * 4096 - t.pvs[0].3;
    assert_eq!(bytes, &serde_json::json!([lv_off, lv_off + 4096]));
    let symptom = v["findings"][0]["files"][0]["symptom"].as_str().unwrap();
    assert!(
        symptom.contains(&format!("pv1 (UUID {uuid}, last seen as {device})")),
        "{symptom}"
    );
    let n = notes(&v);
    assert!(
        n.iter().any(|n| n.starts_with("lwtestdisks/data: ")
            && n.contains(uuid.as_str())
            && n.contains(device.as_str())),
        "{n:#?}"
    );
    show_report(&t.a.image, &[]);
}
