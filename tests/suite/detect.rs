//! Detection through the service: fio writes through `serve` in two flushed phases with a
//! snapshot of the image between them; then the storage "loses" writes underneath — blocks
//! reverted to the snapshot, others corrupted, zeroed or overwritten with another block's
//! contents — and `verify --json` must name exactly those blocks, with the right kinds, and for
//! every reverted block the generation it fell back to and the durable writes it lost.

use crate::helpers::*;
use crate::service::{fio, have, Service};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;

const BS: u64 = 4096;
const SIZE: u64 = 128 << 20;

fn phase(uri: &str, seed: &str) {
    fio(
        uri,
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=128m",
            "--io_size=24m",
            &format!("--randseed={seed}"),
            "--refill_buffers=1",
            "--end_fsync=1",
        ],
    );
}

#[test]
fn reverted_corrupt_zeroed_and_misdirected_blocks_are_named_exactly() {
    if !have("fio") {
        return;
    }
    let s = Scratch::new(SIZE);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    phase(&svc.uri(), "1");
    let snap = s.dir.path().join("snapshot.img");
    std::fs::copy(&s.image, &snap).unwrap();
    phase(&svc.uri(), "2");
    svc.stop();

    let cur = std::fs::read(&s.image).unwrap();
    let old = std::fs::read(&snap).unwrap();
    let bs = BS as usize;
    let changed: Vec<u64> = (0..SIZE / BS)
        .filter(|&b| {
            cur[b as usize * bs..(b as usize + 1) * bs]
                != old[b as usize * bs..(b as usize + 1) * bs]
        })
        .collect();
    assert!(
        changed.len() > 1000,
        "phase 2 changed only {} blocks",
        changed.len()
    );
    let step = changed.len() / 60;
    let reverted: BTreeSet<u64> = (0..60).map(|i| changed[i * step]).collect();
    let mut rng = Rng(2026);
    let mut taken: BTreeSet<u64> = reverted.clone();
    let mut pick = |rng: &mut Rng| loop {
        let b = rng.next() % (SIZE / BS);
        if taken.insert(b) {
            return b;
        }
    };
    let corrupt: Vec<u64> = (0..10).map(|_| pick(&mut rng)).collect();
    let zeroed: Vec<u64> = (0..6).map(|_| pick(&mut rng)).collect();
    let misdirected: Vec<(u64, u64)> = (0..8).map(|_| (pick(&mut rng), pick(&mut rng))).collect();

    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.image)
        .unwrap();
    for &b in &reverted {
        f.write_all_at(&old[b as usize * bs..(b as usize + 1) * bs], b * BS)
            .unwrap();
    }
    for &b in &corrupt {
        f.write_all_at(&rng.block(bs), b * BS).unwrap();
    }
    for &b in &zeroed {
        f.write_all_at(&vec![0u8; bs], b * BS).unwrap();
    }
    for &(dst, src) in &misdirected {
        f.write_all_at(&cur[src as usize * bs..(src as usize + 1) * bs], dst * BS)
            .unwrap();
    }
    drop(f);

    let o = bin()
        .args(["verify", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut want: BTreeMap<u64, &str> = BTreeMap::new();
    want.extend(reverted.iter().map(|&b| (b, "reverted")));
    want.extend(corrupt.iter().map(|&b| (b, "corrupt")));
    want.extend(zeroed.iter().map(|&b| (b, "zeroed")));
    want.extend(misdirected.iter().map(|&(d, _)| (d, "misdirected")));
    let findings = v["findings"].as_array().unwrap();
    let got: BTreeMap<u64, &str> = findings
        .iter()
        .map(|f| (f["block"].as_u64().unwrap(), f["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(findings.len(), 84);
    let src_of: BTreeMap<u64, u64> = misdirected.iter().copied().collect();
    for f in findings {
        let b = f["block"].as_u64().unwrap();
        match f["kind"].as_str().unwrap() {
            "reverted" => {
                let (exp, found) = (
                    f["expected_generation"].as_u64().unwrap(),
                    f["found_generation"].as_u64().unwrap(),
                );
                assert!(found < exp, "block {b}: found {found} expected {exp}");
                let lost = f["lost"].as_array().unwrap();
                assert_eq!(lost.len() as u64, exp - found, "block {b}");
                for l in lost {
                    assert_eq!(l["durable"], true, "block {b}: {l}");
                    let t = l["time"].as_str().unwrap();
                    assert!(lostwrite::clock::parse(t).is_ok(), "{t}");
                }
            }
            "misdirected" => {
                assert_eq!(
                    f["belongs_to"]["block"].as_u64(),
                    Some(src_of[&b]),
                    "block {b}"
                );
            }
            _ => {}
        }
    }
    assert_eq!(v["summary"]["reverted"], 60);
    assert_eq!(v["summary"]["ok"], SIZE / BS - 84);
}

#[test]
fn a_stale_read_is_logged_or_refused_online() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    // Revert block 3 underneath the ledger, then read it through the service.
    let svc = Service::start(&s.image, &[]);
    let old = s.read_block(3, BS as usize);
    crate::service::run(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw"])
            .arg(svc.uri())
            .args(["-c", "write -P 0x77 12k 4k"]),
    );
    s.poke(3, &old);
    crate::service::run(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw"])
            .arg(svc.uri())
            .args(["-c", "read 12k 4k"]),
    );
    let log = svc.stop();
    assert!(
        log.contains("block 3 (offset 12288) does not hold generation 1 on read"),
        "{log}"
    );
    assert!(log.contains("1 stale reads"), "{log}");
    // With --on-mismatch error the read fails instead.
    let svc = Service::start(&s.image, &["--on-mismatch", "error"]);
    let o = std::process::Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(svc.uri())
        .args(["-c", "read 12k 4k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("Input/output error"), "{text}");
    svc.stop();
}

/// Writes through the service without a flush, then kills it (a crash) and damages a block
/// underneath: after a crash with the default journal sync, unknown contents are `uncertain`;
/// with `--journal-sync strict` nothing is uncertain, and the same damage is `corrupt`.
#[test]
fn after_kill_9_strict_journal_sync_leaves_nothing_uncertain() {
    if !have("qemu-io") {
        return;
    }
    for (mode, want) in [("flush", "uncertain"), ("strict", "corrupt")] {
        let s = Scratch::new(4 << 20);
        s.init(BS as u32, true);
        let svc = Service::start(&s.image, &["--journal-sync", mode]);
        crate::service::run(
            std::process::Command::new("qemu-io")
                .args(["-f", "raw", "-t", "writeback"])
                .arg(svc.uri())
                .args([
                    "-c",
                    "write -P 0x31 0 64k",
                    "-c",
                    "flush",
                    "-c",
                    "write -P 0x32 64k 64k",
                ]),
        );
        svc.kill9();
        s.poke(5, &Rng(1).block(BS as usize));
        let o = bin()
            .args(["verify", "--json"])
            .arg(&s.image)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let kinds: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, vec![want], "--journal-sync {mode}: {v}");
        // The next session says the previous one crashed, and a clean run verifies clean.
        let svc = Service::start(&s.image, &[]);
        let log = svc.stop();
        assert!(
            log.contains("the previous session did not end cleanly"),
            "{log}"
        );
        let o = bin()
            .args(["ledger", "dump"])
            .arg(&s.image)
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&o.stdout);
        assert!(dump.contains("previous CRASHED"), "{dump}");
        assert!(dump.contains(&format!("{mode} journal sync")), "{dump}");
    }
}

#[test]
fn serve_creates_a_missing_ledger_and_says_what_is_untracked() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(4 << 20);
    let svc = Service::start(&s.image, &[]);
    crate::service::run(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw"])
            .arg(svc.uri())
            .args(["-c", "write -P 0x41 8k 8k"]),
    );
    let log = svc.stop();
    assert!(
        log.contains("without a baseline")
            && log.contains("1024 blocks are untracked")
            && log.contains("init --baseline"),
        "{log}"
    );
    let o = bin()
        .args(["verify", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["blocks_tracked"], 2);
    assert_eq!(v["summary"]["untracked"], 1022);
}
