//! The real binary, as an operator runs it: exit statuses, the JSON shape, and the messages for
//! the mistakes people make.

use crate::helpers::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;

const BS: u64 = 4096;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn init_baseline(s: &Scratch) {
    let o = bin()
        .args(["init", "--baseline"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("baseline: 16384 blocks") || stdout(&o).contains("baseline:"));
}

#[test]
fn damage_on_a_64_mib_image_is_named_block_by_block() {
    let s = Scratch::new(64 << 20);
    init_baseline(&s);
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("OK: every tracked block holds its latest generation"));

    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap();
    let mut rng = Rng(42);
    let corrupt = [17u64, 9000, 16383];
    let zeroed = [5u64, 12345];
    let misdirected = [(100u64, 2000u64), (7777, 3)]; // (target, source)
    for &b in &corrupt {
        f.write_all_at(&rng.block(BS as usize), b * BS).unwrap();
    }
    for &b in &zeroed {
        f.write_all_at(&vec![0u8; BS as usize], b * BS).unwrap();
    }
    for &(dst, src) in &misdirected {
        f.write_all_at(&s.read_block(src, BS as usize), dst * BS)
            .unwrap();
    }
    drop(f);
    let o = bin()
        .args(["verify", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["block_size"], 4096);
    assert_eq!(v["blocks_total"], 16384);
    assert_eq!(v["blocks_tracked"], 16384);
    assert_eq!(v["blocks_scanned"], 16384);
    let sum = &v["summary"];
    assert_eq!(sum["ok"], 16384 - 7);
    assert_eq!(
        (
            sum["corrupt"].as_u64(),
            sum["zeroed"].as_u64(),
            sum["misdirected"].as_u64()
        ),
        (Some(3), Some(2), Some(2))
    );
    for k in ["reverted", "unflushed", "uncertain", "untracked"] {
        assert_eq!(sum[k], 0, "{k}");
    }
    let mut got: Vec<(u64, String, Option<u64>)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(
                f["offset"].as_u64().unwrap(),
                f["block"].as_u64().unwrap() * BS
            );
            (
                f["block"].as_u64().unwrap(),
                f["kind"].as_str().unwrap().to_string(),
                f["belongs_to"]["block"].as_u64(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(u64, String, Option<u64>)> = corrupt
        .iter()
        .map(|&b| (b, "corrupt".to_string(), None))
        .chain(zeroed.iter().map(|&b| (b, "zeroed".to_string(), None)))
        .chain(
            misdirected
                .iter()
                .map(|&(d, src)| (d, "misdirected".to_string(), Some(src))),
        )
        .collect();
    want.sort();
    assert_eq!(got, want);
    // The human form names the same blocks and says it failed.
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("FAILED: 7 blocks"), "{out}");
    assert!(out.contains("holds block 2000 gen 0"), "{out}");
}

#[test]
fn trouble_exits_2_with_a_message_that_names_the_problem() {
    let s = Scratch::new(1 << 20);
    // Missing device.
    let o = bin()
        .args(["verify", "/nonexistent/disk.img"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/disk.img") && stderr(&o).contains("no such file"),
        "{}",
        stderr(&o)
    );
    // Missing ledger.
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no ledger here") && stderr(&o).contains("lostwrite init"),
        "{}",
        stderr(&o)
    );
    // Bad block size.
    for bad in ["3000", "256", "2097152"] {
        let o = bin()
            .args(["init", "--block-size", bad])
            .arg(&s.image)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains(&format!("--block-size {bad}"))
                && stderr(&o).contains("power of two"),
            "{}",
            stderr(&o)
        );
    }
    init_baseline(&s);
    // A second init refuses to overwrite.
    let o = bin().args(["init"]).arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    // Device whose size changed.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("2097152 bytes") && stderr(&o).contains("1048576 bytes"),
        "{}",
        stderr(&o)
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // Another file of the same size: a different identity, accepted only with --device-moved.
    let copy = s.dir.path().join("copy.img");
    std::fs::copy(&s.image, &copy).unwrap();
    let o = bin()
        .arg("verify")
        .arg(&copy)
        .arg("--ledger")
        .arg(&s.ledger)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--device-moved"), "{}", stderr(&o));
    let o = bin()
        .arg("verify")
        .arg(&copy)
        .arg("--ledger")
        .arg(&s.ledger)
        .arg("--device-moved")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Block out of range for history.
    let o = bin()
        .args(["history"])
        .arg(&s.image)
        .arg("999999")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("block 999999") && stderr(&o).contains("256 blocks"),
        "{}",
        stderr(&o)
    );
    // serve with a block size other than the existing ledger's.
    let o = bin()
        .args(["serve", "--block-size", "512"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("uses 4096-byte blocks") && stderr(&o).contains("--block-size 512"),
        "{}",
        stderr(&o)
    );
    // An NBD URI without --ledger.
    let o = bin()
        .args(["verify", "nbd+unix:///?socket=/tmp/x.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ledger"), "{}", stderr(&o));
}

#[test]
fn a_damaged_ledger_never_verifies_clean_and_check_names_file_and_offset() {
    let s = Scratch::new(1 << 20);
    init_baseline(&s);
    let o = bin()
        .args(["ledger", "check"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("is sound"));
    for (file, at) in [
        ("state", 8192 + 100),
        ("journal/000000000001.seg", 70),
        ("meta", 20),
        ("baseline", 8192 + 5),
    ] {
        let copy = tempfile::tempdir().unwrap();
        let img = copy.path().join("disk.img");
        std::fs::copy(&s.image, &img).unwrap();
        let ledger = copy.path().join("l");
        copy_dir(&s.ledger, &ledger);
        let p = ledger.join(file);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
        let o = bin()
            .args(["ledger", "check", "--ledger"])
            .arg(&ledger)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stdout(&o));
        let name = std::path::Path::new(file)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            stdout(&o).contains("DAMAGED") && stdout(&o).contains(name),
            "{file}: {}",
            stdout(&o)
        );
        let o = bin()
            .args(["verify", "--device-moved", "--ledger"])
            .arg(&ledger)
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{file}: verify must not pass: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    // A damaged state table is repairable from the journal.
    let p = s.ledger.join("state");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&[0xff], 8192 + 11).unwrap();
    let o = bin()
        .args(["ledger", "check", "--repair"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn history_dump_and_status_describe_the_ledger() {
    let s = Scratch::new(1 << 20);
    init_baseline(&s);
    {
        let (l, dev) = s.writer(false);
        write_through(&l, &dev, 3, &Rng(1).block(BS as usize), false);
        flush(&l, &dev);
        write_through(&l, &dev, 3, &Rng(2).block(BS as usize), false);
        l.close(|| lostwrite::device::BlockDevice::flush(&dev))
            .unwrap();
    }
    let o = bin()
        .args(["history"])
        .arg(&s.image)
        .args(["3", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("block 3 (offset 12288): tracked at generation 2"),
        "{out}"
    );
    assert!(out.contains("baseline") && out.contains("write"), "{out}");
    assert!(
        out.contains("device holds generation 2 (the latest)"),
        "{out}"
    );
    assert!(
        out.contains("session 1: opened") && out.contains("closed cleanly"),
        "{out}"
    );
    let o = bin()
        .args(["history", "--json"])
        .arg(&s.image)
        .arg("3")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gens = v["blocks"][0]["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 3);
    assert_eq!(gens[1]["durable"], true);
    assert_eq!(v["blocks"][0]["device_holds_generation"], 2);

    let o = bin()
        .args(["ledger", "dump"])
        .arg(&s.image)
        .output()
        .unwrap();
    let out = stdout(&o);
    for want in [
        "baseline of 256 blocks",
        "session-open 1",
        "write block 3 gen 1",
        "flush intent (session 1)",
        "flush confirmed (session 1)",
        "session-close 1",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let o = bin()
        .args(["ledger", "dump", "--json", "--block", "3"])
        .arg(&s.image)
        .output()
        .unwrap();
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["kind"] == "write"));

    let o = bin()
        .args(["status", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["blocks_tracked"], 256);
    assert_eq!(v["sessions"], 1);
    assert_eq!(v["sessions_crashed"], 0);
}
