//! Forensics in logical volumes whose pieces lie apart on their physical volume: a linear LV
//! whose two segments have another LV between them, and striped LVs (2 stripes of 64 KiB) holding
//! ext4 and XFS. Each filesystem is made on a file, laid over the LV's extents as LVM would, and
//! blocks of one file are reverted under a ledger; the report must name that file at the right
//! byte offsets, in the LV's region.

use crate::forensics_lvm::{
    filesystems, lv_id, make_pv, notes, owners, report_json, show_report, tools, Loop, MIB,
};
use crate::forensics_xfs::bmap;
use crate::helpers::*;
use crate::service::{can_mount, have, run};
use lostwrite::device::BlockDevice;
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// A logical volume section with `segments` (LV extent, extents, stripes as physical extents
/// on pv0; several stripes are striped in 64 KiB chunks).
fn lv_section(name: &str, segments: &[(u64, u64, &[u64])]) -> String {
    let mut t = format!(
        "{name} {{\nid = \"{}\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = {}\n",
        lv_id(name),
        segments.len()
    );
    for (i, (start, count, pes)) in segments.iter().enumerate() {
        let stripes: Vec<String> = pes.iter().map(|pe| format!("\"pv0\", {pe}")).collect();
        let size = if pes.len() > 1 {
            "stripe_size = 128\n"
        } else {
            ""
        };
        t += &format!(
            "segment{} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"striped\"\nstripe_count = {}\n{size}stripes = [{}]\n}}\n",
            i + 1,
            pes.len(),
            stripes.join(", ")
        );
    }
    t + "}\n"
}

/// An ext4 image of 16 MiB holding /app/big.fs (9 MiB: more than half, so in both halves): the image, and the filesystem block
/// holding each 4 KiB of the file, in file order.
pub(crate) fn ext4_with_big_file(dir: &Path) -> (Vec<u8>, Vec<u64>) {
    let src = dir.join("src-big");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/big.fs"), Rng(5).block(9 << 20)).unwrap();
    let fs = dir.join("ext4-big.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&fs));
    let out = run(Command::new("debugfs")
        .args(["-R", "blocks /app/big.fs"])
        .arg(&fs));
    let blocks: Vec<u64> = out.split_whitespace().map(|b| b.parse().unwrap()).collect();
    assert_eq!(blocks.len(), 2304, "{out}");
    (std::fs::read(&fs).unwrap(), blocks)
}

/// Writes new contents to `blocks` through a ledger session, twice, then puts the first
/// back underneath: each block then reads a write the ledger saw overwritten (reverted).
pub(crate) fn revert_blocks(s: &Scratch, blocks: &[u64]) {
    let (l, dev) = s.writer(false);
    let old: Vec<Vec<u8>> = blocks.iter().map(|b| Rng(40 + b).block(4096)).collect();
    for (b, data) in blocks.iter().zip(&old) {
        write_through(&l, &dev, *b, data, false);
    }
    flush(&l, &dev);
    for b in blocks {
        write_through(&l, &dev, *b, &Rng(90 + b).block(4096), false);
    }
    flush(&l, &dev);
    l.close(|| dev.flush()).unwrap();
    for (b, data) in blocks.iter().zip(&old) {
        s.poke(*b, data);
    }
}

/// Asserts that each device block in `expect` is a reverted finding owned by /app/big.fs in
/// `region`, at the given byte range of the file.
pub(crate) fn assert_big_file_blocks(v: &Value, region: &str, expect: &[(u64, u64)]) {
    let by_block = owners(v);
    assert_eq!(
        by_block.len(),
        expect.len(),
        "{by_block:#?}\n{:#?}",
        notes(v)
    );
    for f in v["findings"].as_array().unwrap() {
        assert_eq!(f["kind"], "reverted", "{f}");
    }
    for &(block, file_block) in expect {
        assert_eq!(
            by_block[&block],
            [(
                region.to_string(),
                "file".to_string(),
                "/app/big.fs".to_string(),
                serde_json::json!([file_block * 4096, (file_block + 1) * 4096])
            )],
            "device block {block}, file block {file_block}"
        );
    }
}

/// A linear LV whose two segments lie apart (another LV between them, as `lvextend` after
/// another `lvcreate` makes): reverted blocks of a file in both segments are named as that file.
#[test]
fn report_maps_a_linear_lv_whose_segments_lie_apart() {
    if !tools() || !can_mount() || !have("nbdfuse") {
        return;
    }
    let s = Scratch::new(64 * MIB);
    let lvs = format!(
        "{}{}",
        lv_section("root", &[(0, 2, &[0]), (2, 2, &[3])]),
        lv_section("other", &[(0, 1, &[2])])
    );
    let pe_start = make_pv(&s.image, 0, 64 * MIB, "lwtestapart", &lvs);
    let (fs, blocks) = ext4_with_big_file(s.dir.path());
    // LV bytes 0-8 MiB are extents 0-1, bytes 8-16 MiB extents 3-4.
    let dev_of = |lv: u64| pe_start + if lv < 8 * MIB { lv } else { lv + 4 * MIB };
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap();
    img.write_all_at(&fs[..8 * MIB as usize], dev_of(0))
        .unwrap();
    img.write_all_at(&fs[8 * MIB as usize..], dev_of(8 * MIB))
        .unwrap();
    s.init(4096, true);
    let before = blocks.iter().rposition(|&b| b < 2048).unwrap() as u64;
    let after = blocks.iter().position(|&b| b >= 2048).unwrap() as u64;
    let expect: Vec<(u64, u64)> = [before, after]
        .iter()
        .map(|&f| (dev_of(blocks[f as usize] * 4096) / 4096, f))
        .collect();
    revert_blocks(&s, &[expect[0].0, expect[1].0]);

    let v = report_json(&s.image);
    assert!(
        filesystems(&v).contains(&"lwtestapart/root (LVM, in whole disk): ext4".to_string()),
        "{:?}",
        filesystems(&v)
    );
    assert_big_file_blocks(&v, "lwtestapart/root (LVM, in whole disk)", &expect);
    show_report(&s.image, &[]);
}

/// A striped LV (2 stripes of 64 KiB chunks on one PV) holding ext4: reverted blocks of a file
/// in both stripes are named as that file, at their byte offsets in it.
#[test]
fn report_maps_a_striped_lv_to_files() {
    if !tools() || !can_mount() || !have("sfdisk") || !have("nbdfuse") {
        return;
    }
    let s = Scratch::new(64 * MIB);
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&s.image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=126976, type=8e\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let part = MIB;
    let lvs = format!(
        "{}{}",
        lv_section("other", &[(0, 1, &[0])]),
        lv_section("data", &[(0, 4, &[1, 4])])
    );
    let pe_start = make_pv(&s.image, part, 62 * MIB, "lwteststripe", &lvs);
    let (fs, blocks) = ext4_with_big_file(s.dir.path());
    let chunk = 64 * 1024;
    // Chunk k of the LV is row k / 2 of stripe k % 2 (extents 1-2, then 4-5).
    let dev_of = |lv: u64| {
        let (k, within) = (lv / chunk, lv % chunk);
        let stripe = [4 * MIB, 16 * MIB][(k % 2) as usize];
        part + pe_start + stripe + (k / 2) * chunk + within
    };
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap();
    for (k, c) in fs.chunks(chunk as usize).enumerate() {
        img.write_all_at(c, dev_of(k as u64 * chunk)).unwrap();
    }
    s.init(4096, true);
    // Two blocks of the file in stripe 0 and two in stripe 1.
    let stripe_of = |f: usize| (blocks[f] * 4096 / chunk) % 2;
    let mut picked: Vec<u64> = Vec::new();
    for want in [0, 1] {
        let in_stripe: Vec<u64> = (0..blocks.len())
            .filter(|&f| stripe_of(f) == want)
            .map(|f| f as u64)
            .collect();
        picked.extend([in_stripe[3], in_stripe[in_stripe.len() / 2]]);
    }
    let expect: Vec<(u64, u64)> = picked
        .iter()
        .map(|&f| (dev_of(blocks[f as usize] * 4096) / 4096, f))
        .collect();
    let devs: Vec<u64> = expect.iter().map(|e| e.0).collect();
    revert_blocks(&s, &devs);

    let v = report_json(&s.image);
    assert!(
        filesystems(&v).contains(&"lwteststripe/data (LVM, in partition 1): ext4".to_string()),
        "{:?}",
        filesystems(&v)
    );
    assert_big_file_blocks(&v, "lwteststripe/data (LVM, in partition 1)", &expect);
    show_report(&s.image, &[]);
}

/// A striped LV holding XFS (read by xfs_db through nbdkit's overlay of the assembled LV): a
/// file's reverted blocks in both stripes are named as that file at their offsets.
#[test]
fn report_maps_xfs_in_a_striped_lv_to_files() {
    if !tools()
        || !can_mount()
        || !have("nbdfuse")
        || !have("nbdkit")
        || !have("mkfs.xfs")
        || !have("xfs_db")
        || !have("xfs_bmap")
    {
        return;
    }
    let s = Scratch::new(340 * MIB);
    let lvs = lv_section("data", &[(0, 80, &[1, 42])]);
    let pe_start = make_pv(&s.image, 0, 340 * MIB, "lwtestxfsstripe", &lvs);
    // XFS made and filled on a file of the LV's size, then laid over the stripes.
    let fs = s.dir.path().join("xfs.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(320 * MIB)
        .unwrap();
    run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&fs));
    let mnt = s.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let map = {
        let lo = Loop::new(&fs, 0, 320 * MIB);
        run(Command::new("mount").arg(&lo.0).arg(&mnt));
        std::fs::create_dir_all(mnt.join("app")).unwrap();
        std::fs::write(mnt.join("app/big.fs"), Rng(6).block(2 << 20)).unwrap();
        let map = bmap(&mnt.join("app/big.fs"));
        run(Command::new("umount").arg(&mnt));
        map
    };
    let chunk = 64 * 1024;
    let dev_of = |lv: u64| {
        let (k, within) = (lv / chunk, lv % chunk);
        let stripe = [4 * MIB, 42 * 4 * MIB][(k % 2) as usize];
        pe_start + stripe + (k / 2) * chunk + within
    };
    let bytes = std::fs::read(&fs).unwrap();
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap();
    for (k, c) in bytes.chunks(chunk as usize).enumerate() {
        img.write_all_at(c, dev_of(k as u64 * chunk)).unwrap();
    }
    drop(bytes);
    s.init(4096, true);
    // The first block of the file in each stripe.
    let mut expect: Vec<(u64, u64)> = Vec::new();
    for want in [0, 1] {
        let (&off, &b) = map
            .iter()
            .find(|(_, &b)| (b * 4096 / chunk) % 2 == want)
            .unwrap();
        expect.push((dev_of(b * 4096) / 4096, off / 4096));
    }
    let devs: Vec<u64> = expect.iter().map(|e| e.0).collect();
    revert_blocks(&s, &devs);

    let v = report_json(&s.image);
    assert!(
        filesystems(&v).contains(&"lwtestxfsstripe/data (LVM, in whole disk): xfs".to_string()),
        "{:?}\n{:#?}",
        filesystems(&v),
        notes(&v)
    );
    assert_big_file_blocks(&v, "lwtestxfsstripe/data (LVM, in whole disk)", &expect);
}
