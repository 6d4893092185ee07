//! Forensics in LVM2: `report --files` on physical volumes made by pvcreate/vgcreate, their
//! logical volumes written by vgcfgrestore (there is no device-mapper here, so no LV is ever
//! activated), each LV's ext4 made by mkfs.ext4 and copied to the LV's offset. Blocks of known
//! files, of a striped LV, of free space and of the metadata area are changed behind the
//! ledger's back, and the report must name exactly those owners; a PV whose metadata is damaged
//! is named with why; XFS in an LV is written through the sidecar in two sessions and a file's
//! rewritten blocks reverted.

use crate::ext4::Stack;
use crate::forensics_xfs::{bmap, report_json as xfs_report_json, revert};
use crate::helpers::*;
use crate::service::{can_mount, have, run, Service};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

pub(crate) const MIB: u64 = 1 << 20;

/// A loop device over part of an image, detached (by its name) when dropped.
pub(crate) struct Loop(pub(crate) String);

impl Loop {
    pub(crate) fn new(image: &Path, offset: u64, len: u64) -> Loop {
        let out = run(Command::new("losetup")
            .args(["-f", "--show", "-o", &offset.to_string(), "--sizelimit"])
            .arg(len.to_string())
            .arg(image));
        Loop(out.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

pub(crate) fn tools() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the LVM tests need root for loop devices, which CI provides");
        }
        eprintln!("SKIP: not root");
        return false;
    }
    [
        "pvcreate",
        "vgcreate",
        "vgcfgbackup",
        "vgcfgrestore",
        "losetup",
        "mkfs.ext4",
        "debugfs",
    ]
    .iter()
    .all(|t| have(t))
}

/// Makes a PV of `len` bytes at `offset` in `image`, a VG `vg` with 4 MiB extents on it and the
/// logical volumes `lvs` (text-format sections) through vgcfgrestore. Returns pe_start in bytes.
pub(crate) fn make_pv(image: &Path, offset: u64, len: u64, vg: &str, lvs: &str) -> u64 {
    let dev = Loop::new(image, offset, len);
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("pvcreate").args(["-qq", "-y", "-ff", &dev.0]));
    run(Command::new("vgcreate").args(["-qq", "-An", "-s", "4m", vg, &dev.0]));
    let backup = dir.path().join("vg.txt");
    run(Command::new("vgcfgbackup").arg("-f").arg(&backup).arg(vg));
    let text = std::fs::read_to_string(&backup).unwrap();
    let end = text.rfind('}').unwrap();
    let with_lvs = format!(
        "{}\tlogical_volumes {{\n{lvs}\n\t}}\n{}",
        &text[..end],
        &text[end..]
    );
    let restored = dir.path().join("vg-lvs.txt");
    std::fs::write(&restored, with_lvs).unwrap();
    // Without device-mapper vgcfgrestore warns that it cannot check for active LVs.
    run(Command::new("vgcfgrestore")
        .arg("-f")
        .arg(&restored)
        .arg(vg));
    let pe_start = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("pe_start = "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    pe_start * 512
}

/// A linear LV section of `extents` 4 MiB extents at physical extent `pe`, in two segments.
fn linear(name: &str, pe: u64, extents: u64) -> String {
    let h = extents / 2;
    format!(
        "{name} {{\nid = \"{id}\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 2\n\
         segment1 {{\nstart_extent = 0\nextent_count = {h}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", {pe}]\n}}\n\
         segment2 {{\nstart_extent = {h}\nextent_count = {r}\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", {p2}]\n}}\n}}\n",
        id = lv_id(name),
        r = extents - h,
        p2 = pe + h
    )
}

pub(crate) fn lv_id(name: &str) -> String {
    let c = name.chars().next().unwrap().to_ascii_uppercase();
    let s = |n: usize| c.to_string().repeat(n);
    format!(
        "{}-{}-{}-{}-{}-{}-{}",
        s(6),
        s(4),
        s(4),
        s(4),
        s(4),
        s(4),
        s(6)
    )
}

/// An ext4 image of `len` bytes holding /app/target.fs (100,000 bytes); returns it and the
/// filesystem block holding the target's bytes 20480-24575.
fn ext4_with_target(dir: &Path, len: u64) -> (std::path::PathBuf, u64) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/target.fs"), Rng(3).block(100_000)).unwrap();
    let fs = dir.join("ext4.img");
    std::fs::File::create(&fs).unwrap().set_len(len).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&fs));
    let out = run(Command::new("debugfs")
        .args(["-R", "bmap /app/target.fs 5"])
        .arg(&fs));
    (fs, out.trim().parse().unwrap())
}

/// `report --files --json`, exiting 1 (blocks changed behind the ledger's back).
pub(crate) fn report_json(image: &Path) -> Value {
    let o = bin()
        .args(["report", "--files", "--json"])
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Each finding's block with its owners (region, owner, path, bytes).
pub(crate) fn owners(v: &Value) -> BTreeMap<u64, Vec<(String, String, String, Value)>> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let files = f["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["region"].as_str().unwrap().to_string(),
                        r["owner"].as_str().unwrap().to_string(),
                        r["path"].as_str().unwrap_or("").to_string(),
                        r["bytes"].clone(),
                    )
                })
                .collect();
            (f["block"].as_u64().unwrap(), files)
        })
        .collect()
}

/// With LOSTWRITE_SHOW_REPORT set, prints the human report (the source of the examples in
/// docs/FORENSICS.md).
pub(crate) fn show_report(image: &Path, extra: &[&str]) {
    if std::env::var_os("LOSTWRITE_SHOW_REPORT").is_some() {
        let o = bin()
            .args(["report", "--files"])
            .args(extra)
            .arg(image)
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    }
}

pub(crate) fn filesystems(v: &Value) -> Vec<String> {
    v["partitions"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r["name"].as_str().unwrap(),
                r["filesystem"].as_str().unwrap()
            )
        })
        .collect()
}

pub(crate) fn notes(v: &Value) -> Vec<String> {
    v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// An MBR partition holding a PV with a linear LV (ext4, two segments) and a striped LV holding
/// no filesystem lostwrite reads (its blocks are named by their offset in the LV).
#[test]
fn report_maps_blocks_in_an_lvm_pv_inside_a_partition_to_lvs_and_files() {
    if !tools() || !have("sfdisk") {
        return;
    }
    let s = Scratch::new(64 * MIB);
    let (part, plen) = (MIB, 62 * MIB);
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
    let striped = format!(
        "data {{\nid = \"{}\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\n\
         segment1 {{\nstart_extent = 0\nextent_count = 4\ntype = \"striped\"\nstripe_count = 2\nstripe_size = 128\nstripes = [\"pv0\", 6, \"pv0\", 8]\n}}\n}}\n",
        lv_id("data")
    );
    let lvs = format!("{}{striped}", linear("root", 0, 4));
    let pe_start = make_pv(&s.image, part, plen, "lwtestpart", &lvs);
    let (fs, fs_block) = ext4_with_target(s.dir.path(), 16 * MIB);
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap();
    img.write_all_at(&std::fs::read(&fs).unwrap(), part + pe_start)
        .unwrap();
    s.init(4096, true);

    let pe = |n: u64| part + pe_start + n * 4 * MIB;
    let target = pe(0) / 4096 + fs_block;
    // Extent 8 is stripe 1 of `data`: its second 64 KiB chunk is the LV's fourth.
    let in_striped = (pe(8) + 65536 + 4096) / 4096;
    let in_free = pe(12) / 4096;
    let in_metadata = (part + 512 * 1024) / 4096;
    for (i, b) in [target, in_striped, in_free, in_metadata]
        .iter()
        .enumerate()
    {
        s.poke(*b, &Rng(20 + i as u64).block(4096));
    }

    let v = report_json(&s.image);
    assert_eq!(
        filesystems(&v),
        [
            "lwtestpart/root (LVM, in partition 1): ext4",
            "lwtestpart/data (LVM, in partition 1): unknown (no filesystem lostwrite recognises)",
            "partition 1: lvm2-pv (VG lwtestpart, metadata seqno 2)"
        ],
        "{}",
        v["partitions"]
    );
    let by_block = owners(&v);
    assert_eq!(by_block.len(), 4, "{by_block:#?}");
    let one = |region: &str, owner: &str, path: &str, bytes: Value| {
        vec![(
            region.to_string(),
            owner.to_string(),
            path.to_string(),
            bytes,
        )]
    };
    assert_eq!(
        by_block[&target],
        one(
            "lwtestpart/root (LVM, in partition 1)",
            "file",
            "/app/target.fs",
            serde_json::json!([20480, 24576])
        )
    );
    assert_eq!(
        by_block[&in_striped],
        one(
            "lwtestpart/data (LVM, in partition 1)",
            "lvm-volume",
            "lwtestpart/data",
            serde_json::json!([3 * 65536 + 4096, 3 * 65536 + 8192])
        )
    );
    assert_eq!(
        by_block[&in_free],
        one("partition 1", "lvm-free", "", Value::Null)
    );
    assert_eq!(
        by_block[&in_metadata],
        one("partition 1", "lvm-metadata", "", Value::Null)
    );
    show_report(&s.image, &[]);
    let notes = notes(&v);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("lwtestpart/data (LVM, in partition 1): unknown (no filesystem lostwrite recognises): not mapped to files; its blocks are named by their offset in the logical volume")),
        "{notes:#?}"
    );
}

/// A PV on the whole disk with one linear LV at extent 1; then its metadata area header is
/// damaged, and the PV is named with why.
#[test]
fn report_maps_a_whole_disk_pv_and_names_damaged_metadata() {
    if !tools() {
        return;
    }
    let s = Scratch::new(32 * MIB);
    let pe_start = make_pv(&s.image, 0, 32 * MIB, "lwtestdisk", &linear("root", 1, 4));
    let (fs, fs_block) = ext4_with_target(s.dir.path(), 16 * MIB);
    let lv_start = pe_start + 4 * MIB;
    let img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.image)
        .unwrap();
    img.write_all_at(&std::fs::read(&fs).unwrap(), lv_start)
        .unwrap();
    s.init(4096, true);
    let target = lv_start / 4096 + fs_block;
    s.poke(target, &Rng(30).block(4096));

    let v = report_json(&s.image);
    assert_eq!(
        filesystems(&v),
        [
            "lwtestdisk/root (LVM, in whole disk): ext4",
            "whole disk: lvm2-pv (VG lwtestdisk, metadata seqno 2)"
        ]
    );
    assert_eq!(
        owners(&v)[&target],
        [(
            "lwtestdisk/root (LVM, in whole disk)".to_string(),
            "file".to_string(),
            "/app/target.fs".to_string(),
            serde_json::json!([20480, 24576])
        )]
    );

    // The metadata area's header (byte 4096) damaged: the PV is named, its blocks unmapped.
    let mut header = vec![0u8; 512];
    img.read_exact_at(&mut header, 4096).unwrap();
    header[40] ^= 0xff;
    img.write_all_at(&header, 4096).unwrap();
    let v = report_json(&s.image);
    assert_eq!(
        filesystems(&v),
        ["whole disk: lvm2-pv (metadata unreadable)"]
    );
    for refs in owners(&v).values() {
        assert_eq!(refs[0].1, "lvm-pv", "{refs:?}");
    }
    let notes = notes(&v);
    assert!(
        notes.iter().any(|n| n.contains(
            "whole disk: an LVM2 physical volume whose metadata could not be read: metadata area at byte 4096"
        ) && n.contains("checksum does not match")),
        "{notes:#?}"
    );
}

/// The XFS-in-LVM incident: a GPT partition holding a PV whose linear LV holds XFS, written
/// through the sidecar in two sessions; 64 KiB of a file rewritten in session 2 is reverted
/// behind the ledger's back, and the report names exactly that file and range in that LV.
#[test]
fn report_names_reverted_xfs_files_in_a_logical_volume() {
    if !tools()
        || !can_mount()
        || !have("sgdisk")
        || !have("nbdfuse")
        || !have("nbdkit")
        || !have("mkfs.xfs")
        || !have("xfs_db")
        || !have("xfs_bmap")
        || !have("python3")
    {
        return;
    }
    let s = Scratch::new(400 * MIB);
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+390M", "-t", "1:8e00"])
        .arg(&s.image));
    let part = MIB;
    let pe_start = make_pv(
        &s.image,
        part,
        390 * MIB,
        "lwtestxfs",
        &linear("root", 1, 80),
    );
    let lv_start = part + pe_start + 4 * MIB;
    let lv_len = 80 * 4 * MIB;
    s.init(4096, true);

    let mnt = s.dir.path().join("mnt");
    let export = s.dir.path().join("fuse/disk");
    // Session 1: mkfs.xfs on the LV (a loop device at its offset in the export) and files.
    let svc = Service::start(&s.image, &[]);
    let st = Stack::attach(&svc, s.dir.path());
    {
        let lv = Loop::new(&export, lv_start, lv_len);
        run(Command::new("mkfs.xfs").args(["-q", "-f", &lv.0]));
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount").arg(&lv.0).arg(&mnt));
        std::fs::create_dir_all(mnt.join("app")).unwrap();
        for i in 1..=3 {
            std::fs::write(mnt.join(format!("app/data{i}.fs")), Rng(i).block(200_000)).unwrap();
        }
        run(Command::new("umount").arg(&mnt));
        run(Command::new("blockdev").args(["--flushbufs", &lv.0]));
    }
    st.detach();
    svc.stop();
    let snap = s.dir.path().join("snapshot.img");
    std::fs::copy(&s.image, &snap).unwrap();

    // Session 2: 64 KiB of /app/data3.fs rewritten in place.
    let svc = Service::start(&s.image, &[]);
    let st = Stack::attach(&svc, s.dir.path());
    let data3 = {
        let lv = Loop::new(&export, lv_start, lv_len);
        run(Command::new("mount").arg(&lv.0).arg(&mnt));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("app/data3.fs"))
            .unwrap();
        f.write_all_at(&Rng(77).block(65536), 8192).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let data3 = bmap(&mnt.join("app/data3.fs"));
        run(Command::new("umount").arg(&mnt));
        run(Command::new("blockdev").args(["--flushbufs", &lv.0]));
        data3
    };
    st.detach();
    svc.stop();

    let rewritten: Vec<String> = (8192..73728)
        .step_by(4096)
        .map(|o| (lv_start / 4096 + data3[&o]).to_string())
        .collect();
    let copy = s.dir.path().join("reverted.img");
    std::fs::copy(&s.image, &copy).unwrap();
    let reverted = revert(&copy, &snap, &["--blocks", &rewritten.join(",")]);
    assert_eq!(reverted.len(), 16, "64 KiB of data3.fs: {reverted:?}");
    let ledger = s.ledger.to_str().unwrap();
    let v = xfs_report_json(&copy, &["--device-moved", "--ledger", ledger]);
    assert_eq!(
        filesystems(&v),
        [
            "lwtestxfs/root (LVM, in partition 1): xfs",
            "partition 1: lvm2-pv (VG lwtestxfs, metadata seqno 2)"
        ]
    );
    let a = v["affected"].as_array().unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (
            a[0]["region"].as_str(),
            a[0]["owner"].as_str(),
            a[0]["path"].as_str()
        ),
        (
            Some("lwtestxfs/root (LVM, in partition 1)"),
            Some("file"),
            Some("/app/data3.fs")
        )
    );
    assert_eq!(a[0]["bytes"], serde_json::json!([[8192, 73728]]));
    assert_eq!(
        a[0]["kinds"],
        serde_json::json!(["reverted"]),
        "lost writes, not corruption: {a:?}"
    );
    show_report(&copy, &["--device-moved", "--ledger", ledger]);
}
