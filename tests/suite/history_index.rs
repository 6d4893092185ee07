//! Segment summaries: `history` skips sealed journal segments whose summaries say they cannot
//! hold the asked-for blocks, and its answer is the answer of a full read, whether the summaries
//! are intact, flipped, truncated, missing or another segment's, and after `serve` was killed
//! while it rolled segments.

use crate::helpers::*;
use crate::service::Service;
use lostwrite::device::BlockDevice;
use lostwrite::ledger::{Access, LedgerWriter, OpenOptions};
use lostwrite::nbd::client::Client;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BS: u64 = 4096;
/// Written in many segments.
const MANY: [u64; 2] = [5, 77];
/// Written once, in one segment.
const ONCE: u64 = 700;
/// Never written.
const NEVER: u64 = 800;

fn files(journal: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// A ledger of many 4 KiB segments in three sessions (the first one crashed with writes after
/// its last flush; some FUA writes), closed cleanly. Block ONCE is written once, mid-way.
fn many_segments(s: &Scratch) {
    s.init(BS as u32, true);
    let mut rng = Rng(15);
    let dev = s.device(true);
    for session in 0..3 {
        let mut opts = OpenOptions::new(Access::Write);
        opts.segment_bytes = 4096;
        let l = LedgerWriter::open(&s.ledger, Some((dev.identity(), dev.size())), opts)
            .unwrap()
            .begin_session(false)
            .unwrap();
        for i in 0..1500u64 {
            let b = if session == 1 && i == 700 {
                ONCE
            } else {
                rng.next() % 256
            };
            write_through(&l, &dev, b, &rng.block(BS as usize), i % 97 == 0);
            if i % 50 == 17 {
                flush(&l, &dev);
            }
        }
        if session == 0 {
            drop(l);
        } else {
            l.close(|| dev.flush()).unwrap();
        }
    }
}

/// `history --json` of the test's blocks, read through the ledger in `ledger`.
fn history(image: &Path, ledger: &Path) -> String {
    let mut cmd = bin();
    cmd.arg("history")
        .arg("--json")
        .arg("--ledger")
        .arg(ledger)
        .arg(image);
    for b in MANY.iter().chain(&[ONCE, NEVER]) {
        cmd.arg(b.to_string());
    }
    let mut v: serde_json::Value = serde_json::from_str(&lw_ok(&mut cmd)).unwrap();
    // The fields that name where the ledger was read and how many segments were not read.
    v.as_object_mut().unwrap().remove("ledger");
    v.as_object_mut().unwrap().remove("segments_not_read");
    serde_json::to_string_pretty(&v).unwrap()
}

/// The answer of a full read: the same ledger copied without its summaries.
fn full_read(s: &Scratch) -> String {
    let bare = s.dir.path().join("bare.ledger");
    let _ = std::fs::remove_dir_all(&bare);
    copy_dir(&s.ledger, &bare);
    for p in files(&bare.join("journal"), ".sum") {
        std::fs::remove_file(p).unwrap();
    }
    let out = history(&s.image, &bare);
    std::fs::remove_dir_all(&bare).unwrap();
    out
}

#[test]
fn history_with_summaries_answers_as_a_full_read_whatever_their_state() {
    let s = Scratch::new(BS * 1024);
    many_segments(&s);
    let journal = s.ledger.join("journal");
    let segs = files(&journal, ".seg");
    let sums = files(&journal, ".sum");
    assert!(segs.len() > 50, "{} segments", segs.len());
    // Every sealed segment has its summary; the one being written has none.
    assert_eq!(sums.len(), segs.len() - 1, "{sums:?}");
    assert!(!sums.contains(&segs.last().unwrap().with_extension("sum")));

    let want = full_read(&s);
    let v: serde_json::Value = serde_json::from_str(&want).unwrap();
    let events = |b: u64| {
        v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["block"] == b)
            .unwrap()["generations"]
            .as_array()
            .unwrap()
            .len()
    };
    // Baseline generation and the writes: MANY in many segments, ONCE once, NEVER only its
    // baseline.
    assert!(MANY.iter().all(|&b| events(b) > 5), "{want}");
    assert_eq!(events(ONCE), 2, "{want}");
    assert_eq!(events(NEVER), 1, "{want}");
    assert_eq!(history(&s.image, &s.ledger), want, "intact summaries");

    let backup = s.dir.path().join("backup.ledger");
    copy_dir(&s.ledger, &backup);
    let restore = || {
        std::fs::remove_dir_all(&s.ledger).unwrap();
        copy_dir(&backup, &s.ledger);
    };
    let mid = &sums[sums.len() / 2];
    let first = &sums[0];
    let len = std::fs::metadata(mid).unwrap().len();
    // A flipped byte in the bloom filter, in the marks, and in the header.
    for at in [100, len - 10, 40] {
        let mut b = std::fs::read(mid).unwrap();
        b[at as usize] ^= 0x10;
        std::fs::write(mid, &b).unwrap();
        assert_eq!(history(&s.image, &s.ledger), want, "byte {at} flipped");
        restore();
    }
    // Truncated (torn by a crash), empty, missing.
    for keep in [len / 2, 0] {
        let f = std::fs::OpenOptions::new().write(true).open(mid).unwrap();
        f.set_len(keep).unwrap();
        assert_eq!(history(&s.image, &s.ledger), want, "cut to {keep} bytes");
        restore();
    }
    for p in [mid, first] {
        std::fs::remove_file(p).unwrap();
        assert_eq!(
            history(&s.image, &s.ledger),
            want,
            "{} missing",
            p.display()
        );
        restore();
    }
    // Another segment's summary in its place, and every summary shifted by one.
    std::fs::copy(first, mid).unwrap();
    assert_eq!(
        history(&s.image, &s.ledger),
        want,
        "another segment's summary"
    );
    restore();
    for w in sums.windows(2).rev() {
        std::fs::rename(&w[0], &w[1]).unwrap();
    }
    assert_eq!(history(&s.image, &s.ledger), want, "summaries shifted");
    restore();

    // The next writer writes again what is missing or does not match, and nothing else.
    std::fs::remove_file(mid).unwrap();
    std::fs::copy(first, &sums[1]).unwrap();
    let w = s.open_writer().unwrap();
    drop(w);
    assert_eq!(files(&journal, ".sum"), sums);
    assert_eq!(
        std::fs::read(mid).unwrap(),
        std::fs::read(backup.join("journal").join(mid.file_name().unwrap())).unwrap()
    );
    assert_eq!(history(&s.image, &s.ledger), want, "rewritten summaries");
    verify_clean(&s.image);
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
}

/// A segment whose summary says it cannot hold the block is not read: bytes damaged in it do
/// not stop `history` of that block (`ledger check` and `verify` read every segment and find
/// them), while without the summary the same `history` reads the segment and refuses.
#[test]
fn history_reads_only_the_segments_that_may_hold_its_blocks() {
    let s = Scratch::new(BS * 1024);
    many_segments(&s);
    let journal = s.ledger.join("journal");
    let segs = files(&journal, ".seg");
    let victim = &segs[2];
    let mut b = std::fs::read(victim).unwrap();
    b[64 + 50] ^= 0x01;
    std::fs::write(victim, &b).unwrap();
    let out = lw_ok(
        bin()
            .args(["history", "--json"])
            .arg(&s.image)
            .arg(NEVER.to_string()),
    );
    assert!(out.contains("\"generations\""), "{out}");
    bin()
        .args(["ledger", "check"])
        .arg(&s.image)
        .assert()
        .code(1);
    std::fs::remove_file(victim.with_extension("sum")).unwrap();
    let err = bin()
        .args(["history", "--json"])
        .arg(&s.image)
        .arg(NEVER.to_string())
        .assert()
        .code(2);
    let text = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(text.contains(victim.to_str().unwrap()), "{text}");
}

/// `serve` killed with SIGKILL while it rolls segments every quarter second (`--retain 2s`
/// seals them, retention folds the old ones): after each kill, `history` with the summaries
/// left behind equals a full read, and every summary belongs to a segment.
#[test]
fn kill_9_while_rolling_leaves_a_history_that_is_still_right() {
    let s = Scratch::new(BS * 1024);
    s.init(BS as u32, true);
    let mut rng = Rng(21);
    // Summaries found after the kills: the reads above did skim.
    let mut summaries = 0;
    for cycle in 0..4 {
        let svc = Service::start(&s.image, &["--retain", "2s"]);
        let mut c = Client::connect_unix(&svc.socket, "").unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(1200 + rng.next() % 900);
        let mut n = 0u64;
        while std::time::Instant::now() < until {
            let b = if n == 100 { ONCE } else { rng.next() % 256 };
            c.write(b * BS, &rng.block(BS as usize), n % 13 == 0)
                .unwrap();
            if n % 8 == 7 {
                c.flush().unwrap();
            }
            n += 1;
        }
        svc.kill9();
        let segs = files(&s.ledger.join("journal"), ".seg");
        summaries += files(&s.ledger.join("journal"), ".sum").len();
        assert_eq!(
            history(&s.image, &s.ledger),
            full_read(&s),
            "cycle {cycle} ({n} writes, {} segments)",
            segs.len()
        );
    }
    // The next writer leaves a summary beside every sealed segment and none without one.
    let svc = Service::start(&s.image, &[]);
    svc.stop();
    let journal = s.ledger.join("journal");
    let segs = files(&journal, ".seg");
    let sums: Vec<PathBuf> = files(&journal, ".sum");
    let want: Vec<PathBuf> = segs[..segs.len() - 1]
        .iter()
        .map(|p| p.with_extension("sum"))
        .collect();
    assert!(
        summaries > 0 && !want.is_empty(),
        "{summaries} summaries, {segs:?}"
    );
    assert_eq!(sums, want);
    verify_clean(&s.image);
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
}
