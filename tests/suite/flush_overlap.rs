//! FLUSH with the device's and the journal's syncs overlapped: a round appends a flush intent,
//! syncs the journal through it while the device syncs, and only then appends a confirmation.
//! An intent without its confirmation claims nothing (a crash between the two leaves the writes
//! `unflushed`); a confirmed one is a flush like any other (losing its writes is `reverted`);
//! the confirmation becomes durable without another FLUSH; and real clients (qemu-io, fio under
//! kill -9) leave journals that say so and verify clean.

use crate::helpers::*;
use crate::service::{have, wait_timeout, Service};
use lostwrite::device::BlockDevice;
use lostwrite::findings::classify::Kind;
use lostwrite::ledger::record::Record;
use lostwrite::ledger::{frame, segment, Access};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const BS: usize = 4096;

/// Every record of a segment's bytes, with its LSN, up to the first frame that does not parse.
fn records(seg: &[u8], id: &[u8; 16]) -> Vec<(u64, Record)> {
    let mut pos = segment::HEADER_LEN;
    let mut out = Vec::new();
    while let Ok(f) = frame::parse(&seg[pos..], id) {
        out.extend((f.first_lsn..).zip(f.records().unwrap()));
        pos += f.len;
    }
    out
}

/// Plays a power cut: the journal segment holds exactly `journal`, block `b` holds `old` (the
/// device lost the write), and the host restarted. Returns what verify finds.
fn cut(s: &Scratch, journal: &[u8], b: u64, old: &[u8]) -> Vec<(u64, Kind)> {
    std::fs::write(last_segment(&s.ledger), journal).unwrap();
    crate::reopen::simulate_reboot(&s.ledger);
    s.poke(b, old);
    let r = s.verify();
    r.findings.iter().map(|f| (f.block, f.kind)).collect()
}

#[test]
fn a_crash_between_intent_and_confirmation_leaves_the_writes_unflushed() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let old = s.read_block(5, BS);
    let (l, dev) = s.writer(false);
    let id = l.meta().ledger_id;
    write_through(&l, &dev, 5, &Rng(7).block(BS), false);
    let seg = last_segment(&s.ledger);
    // The journal as the device's sync begins: the worst instant for the host to die, with the
    // journal's sync (which runs beside it) perhaps already done.
    let mut during = None;
    l.flush(|| {
        during = Some(std::fs::read(&seg).unwrap());
        dev.flush()
    })
    .unwrap();
    let during = during.unwrap();
    let recs = records(&during, &id);
    assert!(
        matches!(recs.last(), Some((_, Record::FlushIntent { .. }))),
        "no flush intent in the journal while the device syncs: {recs:?}"
    );
    drop(l);
    let found = cut(&s, &during, 5, &old);
    assert_eq!(
        found,
        vec![(5, Kind::Unflushed)],
        "an unconfirmed intent must claim nothing"
    );
    let led = s.open(Access::Read).unwrap();
    let h =
        lostwrite::ledger::history::collect(&led, &HashSet::from([5]), &HashSet::new()).unwrap();
    assert!(!h.events[&5].last().unwrap().durable);
}

#[test]
fn a_confirmed_flush_is_durable_and_its_lost_write_is_reverted() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let old = s.read_block(9, BS);
    let (l, dev) = s.writer(false);
    let id = l.meta().ledger_id;
    write_through(&l, &dev, 9, &Rng(8).block(BS), false);
    flush(&l, &dev);
    let confirm = l.last_lsn();
    // No other FLUSH follows: the timer makes the confirmation durable.
    wait_for("the confirmation to be synced", || {
        l.journal_synced().unwrap() >= confirm
    });
    let after = std::fs::read(last_segment(&s.ledger)).unwrap();
    let recs = records(&after, &id);
    let n = recs.len();
    assert!(n >= 2, "{recs:?}");
    match (&recs[n - 2], &recs[n - 1]) {
        ((il, Record::FlushIntent { covers, .. }), (cl, Record::FlushConfirm { intent, .. })) => {
            assert_eq!((*intent, *cl), (*il, confirm));
            assert!(*covers >= 1);
        }
        other => panic!("the journal does not end with an intent and its confirmation: {other:?}"),
    }
    drop(l);
    let found = cut(&s, &after, 9, &old);
    assert_eq!(found, vec![(9, Kind::Reverted)]);
}

/// The `kind` of every record `ledger dump --json` prints.
fn dumped_kinds(image: &std::path::Path) -> Vec<(u64, String, serde_json::Value)> {
    lw_ok(bin().args(["ledger", "dump", "--json"]).arg(image))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["lsn"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_string(),
                v["record"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_qemu_io_flush_leaves_an_intent_and_its_confirmation_in_the_journal() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    crate::service::run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 8192 8192",
        "-c",
        "flush",
        &svc.uri(),
    ]));
    svc.stop();
    let recs = dumped_kinds(&s.image);
    let writes: Vec<u64> = recs
        .iter()
        .filter(|r| r.1 == "write")
        .map(|r| r.0)
        .collect();
    assert_eq!(writes.len(), 2, "{recs:?}");
    let intent = recs
        .iter()
        .find(|r| r.1 == "flush-intent")
        .unwrap_or_else(|| panic!("no flush intent: {recs:?}"));
    let covers = intent.2["FlushIntent"]["covers"].as_u64().unwrap();
    assert!(covers >= writes[1], "{recs:?}");
    let confirm = recs
        .iter()
        .find(|r| r.1 == "flush-confirm")
        .unwrap_or_else(|| panic!("no flush confirmation: {recs:?}"));
    assert!(confirm.0 > intent.0);
    assert_eq!(
        confirm.2["FlushConfirm"]["intent"].as_u64(),
        Some(intent.0),
        "{recs:?}"
    );
    let text = lw_ok(bin().args(["ledger", "dump"]).arg(&s.image));
    assert!(text.contains("flush intent (session 1)"), "{text}");
    assert!(text.contains("flush confirmed (session 1)"), "{text}");
    verify_clean(&s.image);
}

#[test]
fn kill_9_under_fio_with_overlapped_flushes_verifies_clean() {
    if !have("fio") {
        return;
    }
    let s = Scratch::new(32 << 20);
    s.init(BS as u32, true);
    let mut rng = Rng(31);
    for cycle in 0..4 {
        let svc = Service::start(&s.image, &[]);
        let mut fio = Command::new("fio")
            .current_dir(s.dir.path())
            .args([
                "--name=overlap",
                "--ioengine=nbd",
                &format!("--uri={}", svc.uri()),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--fsync=4",
                "--size=32m",
                "--time_based",
                "--runtime=30",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill once the load has written and flushed a while.
        let jdir = s.ledger.join("journal");
        let bytes = || -> u64 {
            std::fs::read_dir(&jdir)
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        };
        let before = bytes();
        wait_for("fio to write and flush", || bytes() > before + (64 << 10));
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 300));
        svc.kill9();
        if wait_timeout(&mut fio, Duration::from_secs(60)).is_none() {
            panic!("cycle {cycle}: fio did not end after the server died");
        }
        verify_clean(&s.image);
    }
    let kinds: HashSet<String> = dumped_kinds(&s.image).into_iter().map(|r| r.1).collect();
    assert!(
        kinds.contains("flush-intent") && kinds.contains("flush-confirm"),
        "{kinds:?}"
    );
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
}

/// The `meta` version of the ledger beside `image` (bytes 8..12 of `meta`).
fn meta_version(ledger: &std::path::Path) -> u32 {
    let b = std::fs::read(ledger.join("meta")).unwrap();
    u32::from_le_bytes(b[8..12].try_into().unwrap())
}

#[test]
fn meta_says_version_3_before_the_first_flush_intent_so_older_builds_refuse_by_version() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    assert_eq!(meta_version(&s.ledger), 1);
    // A strict session writes no intents: an older build can still read its ledger.
    Service::start(&s.image, &["--journal-sync", "strict"]).stop();
    assert_eq!(meta_version(&s.ledger), 1);
    Service::start(&s.image, &[]).stop();
    assert_eq!(meta_version(&s.ledger), 3);
    verify_clean(&s.image);
    // A version this build does not know is refused by version, naming the file.
    let mut b = std::fs::read(s.ledger.join("meta")).unwrap();
    b[8..12].copy_from_slice(&4u32.to_le_bytes());
    let n = b.len();
    let crc = crc32fast::hash(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(s.ledger.join("meta"), &b).unwrap();
    let out = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this build reads versions 1 to 3"), "{err}");
    assert!(err.contains("meta"), "{err}");
}
