//! How `history` skims a stopped ledger: it says how many journal segments it answered from
//! their summaries without reading them (and that `ledger check` reads them all); it reads the
//! segment being written once (the open reads it only from the state table's checkpoint on, the
//! history walk whole, and damage before the checkpoint is still found); it checks only the state
//! table pages of its own blocks, and a failing one sends it through a full open; and what it
//! answers on a crashed ledger is what a full read answers.

use crate::helpers::*;
use lostwrite::device::BlockDevice;
use lostwrite::ledger::history;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions, WriteSession};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const BS: u64 = 4096;
/// Written in many segments (page 0 of the state table).
const OFTEN: u64 = 5;
/// Never written.
const NEVER: u64 = 800;
/// Written, on page 1 of the state table (512 entries a page).
const FAR: u64 = 900;

fn segments(ledger: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ledger.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Records `n` writes of random blocks below 256 (OFTEN and FAR among them), a flush every 50.
fn record(l: &WriteSession, dev: &lostwrite::device::FileDevice, rng: &mut Rng, n: u64) {
    for i in 0..n {
        let b = match i % 40 {
            0 => OFTEN,
            1 => FAR,
            _ => rng.next() % 256,
        };
        write_through(l, dev, b, &rng.block(BS as usize), i % 97 == 0);
        if i % 50 == 17 {
            flush(l, dev);
        }
    }
}

/// A ledger of many 4 KiB segments, closed cleanly (the last segment holds many frames).
fn closed_ledger(s: &Scratch) {
    s.init(BS as u32, true);
    let mut rng = Rng(33);
    let dev = s.device(true);
    let mut opts = OpenOptions::new(Access::Write);
    opts.segment_bytes = 64 << 10;
    let l = LedgerWriter::open(&s.ledger, Some((dev.identity(), dev.size())), opts)
        .unwrap()
        .begin_session(false)
        .unwrap();
    record(&l, &dev, &mut rng, 6000);
    l.close(|| dev.flush()).unwrap();
}

fn history_json(s: &Scratch, block: u64) -> serde_json::Value {
    let out = lw_ok(
        bin()
            .args(["history", "--json"])
            .arg(&s.image)
            .arg(block.to_string()),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn history_says_how_many_segments_it_did_not_read() {
    let s = Scratch::new(BS * 1024);
    closed_ledger(&s);
    let segs = segments(&s.ledger, ".seg");
    assert!(segs.len() > 5, "{segs:?}");
    let v = history_json(&s, NEVER);
    assert_eq!(v["journal_segments"], segs.len(), "{v}");
    // Every sealed segment but a bloom filter's rare false positive is skipped for a block
    // never written; the segment being written is always read.
    let skipped = v["segments_not_read"].as_u64().unwrap();
    assert!(
        skipped >= segs.len() as u64 - 3 && skipped < segs.len() as u64,
        "{v}"
    );
    let text = lw_ok(bin().arg("history").arg(&s.image).arg(NEVER.to_string()));
    assert!(
        text.contains(&format!(
            "note: {skipped} of the {} journal segments were not read",
            segs.len()
        )) && text.contains("`lostwrite ledger check` reads every segment"),
        "{text}"
    );
    // Without summaries every segment is read, and nothing is said.
    for p in segments(&s.ledger, ".sum") {
        std::fs::remove_file(p).unwrap();
    }
    assert_eq!(history_json(&s, NEVER)["segments_not_read"], 0);
    let text = lw_ok(bin().arg("history").arg(&s.image).arg(NEVER.to_string()));
    assert!(!text.contains("were not read"), "{text}");
}

/// The open reads the segment being written only from the state table's checkpoint on; the
/// history walk reads it whole, so a damaged frame before the checkpoint still stops
/// `history`, naming the segment.
#[test]
fn damage_before_the_checkpoint_in_the_segment_being_written_is_still_found() {
    let s = Scratch::new(BS * 1024);
    closed_ledger(&s);
    let last = last_segment(&s.ledger);
    let mut b = std::fs::read(&last).unwrap();
    // The first frame's first LSN (the session-close record's frame, at least).
    assert!(b.len() > 64 + 40, "{}", b.len());
    b[64 + 20] ^= 0x01;
    std::fs::write(&last, &b).unwrap();
    let o = bin()
        .args(["history", "--json"])
        .arg(&s.image)
        .arg(NEVER.to_string())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(last.to_str().unwrap()), "{err}");
}

/// Damage in a state table page of another block no longer stops `history` (it checks only
/// its blocks' pages; `ledger check` and `verify` check them all), while damage in the page of
/// an asked-for block sends it through a full open, which rebuilds the table from the journal:
/// the same answer, and exit 2 naming the table.
#[test]
fn history_checks_the_state_pages_of_its_own_blocks() {
    let s = Scratch::new(BS * 1024);
    closed_ledger(&s);
    let want_far = history_json(&s, FAR);
    let at = {
        let l = s.open(Access::Read).unwrap();
        l.state_table().entry_offset(FAR)
    };
    let state = s.ledger.join("state");
    let mut b = std::fs::read(&state).unwrap();
    b[at as usize] ^= 0x40;
    std::fs::write(&state, &b).unwrap();

    // OFTEN's page is intact: answered without judging the rest of the table.
    let o = bin()
        .args(["history", "--json"])
        .arg(&s.image)
        .arg(OFTEN.to_string())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");

    // FAR's page fails: a full open rebuilds the table, answers as before the damage, exit 2.
    let o = bin()
        .args(["history", "--json"])
        .arg(&s.image)
        .arg(FAR.to_string())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(state.to_str().unwrap()), "{err}");
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["blocks"], want_far["blocks"]);

    bin()
        .args(["ledger", "check"])
        .arg(&s.image)
        .assert()
        .code(1);
}

/// A writer that crashed after a running checkpoint in the segment being written: the
/// skimming open replays the tail from the checkpoint's position, and the history walk reads the
/// whole journal; the events and sessions are those of a full read.
#[test]
fn history_of_a_crashed_ledger_is_that_of_a_full_read() {
    let s = Scratch::new(BS * 1024);
    closed_ledger(&s);
    let mut rng = Rng(34);
    let dev = s.device(true);
    let mut opts = OpenOptions::new(Access::Write);
    opts.segment_bytes = 64 << 10;
    let l = LedgerWriter::open(&s.ledger, Some((dev.identity(), dev.size())), opts)
        .unwrap()
        .begin_session(false)
        .unwrap();
    record(&l, &dev, &mut rng, 700);
    l.checkpoint_running().unwrap();
    record(&l, &dev, &mut rng, 300);
    drop(l);
    let ident = Some((dev.identity(), dev.size()));
    let blocks: HashSet<u64> = [OFTEN, NEVER, FAR, 7].into();
    let answer = |skim: bool| {
        let mut opts = OpenOptions::new(if skim { Access::Live } else { Access::Read });
        opts.skim = skim;
        let l = Ledger::open(&s.ledger, ident, opts).unwrap();
        assert!(!l.recovery().previous_clean);
        let h = history::collect(&l, &blocks, &HashSet::new()).unwrap();
        let mut events: Vec<_> = h.events.into_iter().collect();
        events.sort_by_key(|(b, _)| *b);
        let sessions: Vec<_> = h
            .sessions
            .values()
            .map(|s| (s.id, s.end, s.last_lsn, s.last_time, s.flush_count()))
            .collect();
        let states: Vec<_> = blocks.iter().map(|&b| (b, l.state(b))).collect();
        (events, sessions, states, h.end.next_lsn)
    };
    let full = answer(false);
    assert!(full.0.iter().any(|(b, e)| *b == OFTEN && e.len() > 20));
    assert_eq!(answer(true), full);
}
