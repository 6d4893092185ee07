//! Forensics on GPT disks hosts really have: 4096-byte logical sectors (a table written by
//! sgdisk through a 4Kn loop device, the header at byte 4096), and a damaged primary header
//! replaced by the backup at the disk's last sector, said so in a note.

use crate::helpers::*;
use crate::service::{have, run};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// `report --files --json`, exiting 1 (blocks changed behind the ledger's back).
fn report_json(image: &Path) -> Value {
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

/// The owners (region, owner, path) of the finding at ledger block `b`.
fn owners_of(v: &Value, b: u64) -> Vec<(String, String, String)> {
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["block"] == b)
        .unwrap_or_else(|| panic!("no finding at block {b}: {v}"));
    f["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["region"].as_str().unwrap().to_string(),
                r["owner"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn notes(v: &Value) -> Vec<String> {
    v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// A 4Kn disk: GPT by sgdisk on a loop device with 4096-byte sectors, ext4 in partition 1 at
/// LBA 256 (1 MiB); then the primary header damaged.
#[test]
fn gpt_with_4096_byte_sectors_and_a_damaged_primary_header_is_read() {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the 4Kn GPT test needs root for a loop device, which CI provides");
        }
        eprintln!("SKIP: not root");
        return;
    }
    if !have("sgdisk") || !have("losetup") || !have("mkfs.ext4") || !have("debugfs") {
        return;
    }
    let s = Scratch::new(64 * MIB);
    {
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "-b", "4096"])
            .arg(&s.image));
        let dev = dev.trim();
        let o = Command::new("sgdisk")
            .args(["-n", "1:256:+40M", "-t", "1:8300", dev])
            .output()
            .unwrap();
        let _ = Command::new("losetup").args(["-d", dev]).status();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/target.fs"), Rng(3).block(100_000)).unwrap();
    let fs = s.dir.path().join("ext4.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&src)
        .arg(&fs));
    let fs_block: u64 = run(Command::new("debugfs")
        .args(["-R", "bmap /app/target.fs 5"])
        .arg(&fs))
    .trim()
    .parse()
    .unwrap();
    let img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.image)
        .unwrap();
    img.write_all_at(&std::fs::read(&fs).unwrap(), MIB).unwrap();
    s.init(4096, true);
    let target = MIB / 4096 + fs_block;
    s.poke(target, &Rng(30).block(4096));

    let v = report_json(&s.image);
    assert_eq!(v["partitions"][0], "gpt", "{}", v["partitions"]);
    let regions = &v["partitions"][1];
    assert_eq!(regions.as_array().unwrap().len(), 1, "{regions}");
    assert_eq!(
        (
            &regions[0]["start"],
            &regions[0]["len"],
            &regions[0]["filesystem"]
        ),
        (
            &serde_json::json!(MIB),
            &serde_json::json!(40 * MIB),
            &serde_json::json!("ext4")
        )
    );
    let want = vec![(
        "partition 1".to_string(),
        "file".to_string(),
        "/app/target.fs".to_string(),
    )];
    assert_eq!(owners_of(&v, target), want);
    assert!(
        notes(&v).iter().all(|n| !n.contains("GPT")),
        "{:?}",
        notes(&v)
    );

    // The primary header's first-usable-LBA field changed: its checksum fails, the backup at
    // the last LBA is used, and a note says so.
    let mut h = vec![0u8; 8];
    img.read_exact_at(&mut h, 4096 + 40).unwrap();
    h[0] ^= 0x01;
    img.write_all_at(&h, 4096 + 40).unwrap();
    let v = report_json(&s.image);
    assert_eq!(owners_of(&v, target), want);
    let notes = notes(&v);
    assert!(
        notes.iter().any(|n| n
            == "the primary GPT is damaged (header checksum mismatch): the backup GPT header at the disk's last sector was used"),
        "{notes:#?}"
    );
    assert_eq!(owners_of(&v, 1)[0].1, "partition-table");
}
