//! Free blocks are called harmless only when proven free at every generation the ledger saw.
//! An ext4 of two block groups (bitmaps written by mkfs, no BLOCK_UNINIT) gets a ledger; then a
//! free block of each group is written and reverted behind the filesystem's back, and group 0's
//! block bitmap is rewritten (same contents) through the ledger. Group 1's bitmap was never
//! written in the ledger's time: its free block is proven free throughout, hence harmless.
//! Group 0's was: its free block is "free now", not proven harmless. Likewise free extents of an
//! LVM2 volume group whose metadata was never written in the ledger's time.

use crate::forensics_lvm::{make_pv, report_json, show_report, tools, MIB};
use crate::forensics_lvm_apart::revert_blocks;
use crate::helpers::*;
use crate::service::{have, run};
use lostwrite::device::BlockDevice;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The owner entries (`files`) of the finding on ledger block `block`.
fn refs_of(v: &Value, block: u64) -> Vec<Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["block"] == block)
        .unwrap_or_else(|| panic!("no finding on block {block}: {v}"))["files"]
        .as_array()
        .unwrap()
        .clone()
}

/// debugfs's answer about `what` on the filesystem image.
fn debugfs(image: &Path, what: &str) -> String {
    run(Command::new("debugfs").args(["-R", what]).arg(image))
}

#[test]
fn a_free_block_is_harmless_only_when_its_groups_bitmap_never_changed() {
    if !have("mkfs.ext4") || !have("debugfs") {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("mkfs.ext4 and debugfs are needed");
        }
        return;
    }
    let s = Scratch::new(64 * MIB);
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-g",
            "8192",
            "-O",
            "^metadata_csum,^uninit_bg",
        ])
        .arg(&s.image));
    let stats = debugfs(&s.image, "stats");
    let bitmap_of = |g: u32| -> u64 {
        let line = stats
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("Group  {g}:")))
            .unwrap_or_else(|| panic!("{stats}"));
        line.split("block bitmap at ")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (bitmap0, free0, free1) = (bitmap_of(0), 6000u64, 12000u64);
    for b in [free0, free1] {
        let t = debugfs(&s.image, &format!("testb {b}"));
        assert!(t.contains("not in use"), "block {b}: {t}");
    }
    s.init(4096, true);
    // Group 0's bitmap rewritten as it is (no finding, but written in the ledger's time).
    {
        let (l, dev) = s.writer(false);
        write_through(&l, &dev, bitmap0, &s.read_block(bitmap0, 4096), false);
        flush(&l, &dev);
        l.close(|| dev.flush()).unwrap();
    }
    revert_blocks(&s, &[free0, free1]);

    let v = report_json(&s.image);
    let r0 = refs_of(&v, free0);
    assert_eq!(r0.len(), 1, "{r0:?}");
    assert_eq!(r0[0]["owner"], "free");
    assert!(r0[0].get("free_proven").is_none(), "{}", r0[0]);
    let sym0 = r0[0]["symptom"].as_str().unwrap();
    assert!(
        sym0.starts_with("free now; not proven harmless") && !sym0.contains(": harmless"),
        "{sym0}"
    );
    let r1 = refs_of(&v, free1);
    assert_eq!(r1.len(), 1, "{r1:?}");
    assert_eq!(r1[0]["owner"], "free");
    assert_eq!(r1[0]["free_proven"], true, "{}", r1[0]);
    let sym1 = r1[0]["symptom"].as_str().unwrap();
    assert!(
        sym1.starts_with("free at every generation the ledger saw: the block bitmap of group 1")
            && sym1.ends_with(": harmless"),
        "{sym1}"
    );
    // The affected list keeps them apart, the proven one last.
    let a = v["affected"].as_array().unwrap();
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a[0].get("free_proven").is_none() && a[1]["free_proven"] == true,
        "{a:?}"
    );
    let human = {
        let o = bin()
            .args(["report", "--files"])
            .arg(&s.image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(!human.contains("owned by no file now"), "{human}");
    show_report(&s.image, &[]);
}

/// Free extents of a volume group whose label and metadata were never written since the ledger
/// began are proven free throughout.
#[test]
fn free_lvm_extents_are_harmless_only_when_the_metadata_never_changed() {
    if !tools() {
        return;
    }
    let s = Scratch::new(64 * MIB);
    let lv = "root {\nid = \"RRRRRR-RRRR-RRRR-RRRR-RRRR-RRRR-RRRRRR\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\n\
         segment1 {\nstart_extent = 0\nextent_count = 2\ntype = \"striped\"\nstripe_count = 1\nstripes = [\"pv0\", 0]\n}\n}\n";
    let pe_start = make_pv(&s.image, 0, 64 * MIB, "lwtestfree", lv);
    s.init(4096, true);
    // A block of extent 5, which no LV uses.
    let free = (pe_start + 5 * 4 * MIB) / 4096;
    revert_blocks(&s, &[free]);
    let v = report_json(&s.image);
    let r = refs_of(&v, free);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["owner"], "lvm-free");
    assert_eq!(r[0]["free_proven"], true, "{}", r[0]);
    assert!(
        r[0]["symptom"]
            .as_str()
            .unwrap()
            .starts_with("free at every generation the ledger saw: the label and metadata of volume group lwtestfree"),
        "{}",
        r[0]
    );

    // The metadata rewritten as it is, in the ledger's time: now only "free now".
    let (l, dev) = s.writer(false);
    let label = s.read_block(0, 4096);
    write_through(&l, &dev, 0, &label, false);
    flush(&l, &dev);
    l.close(|| dev.flush()).unwrap();
    let v = report_json(&s.image);
    let r = refs_of(&v, free);
    assert!(r[0].get("free_proven").is_none(), "{}", r[0]);
    let sym = r[0]["symptom"].as_str().unwrap();
    assert!(
        sym.starts_with("free space of volume group lwtestfree now")
            && sym.contains("not proven harmless")
            && !sym.contains(": harmless"),
        "{sym}"
    );
}
