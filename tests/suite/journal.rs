//! The ledger's own integrity: frames round-trip, a torn tail at every byte offset of the last
//! frame recovers to the previous frame, and a flipped byte anywhere in the journal or the state
//! table is detected; broken segment chains are reported.

use crate::helpers::*;
use lostwrite::device::BlockDevice;
use lostwrite::ledger::check::check;
use lostwrite::ledger::frame;
use lostwrite::ledger::record::{Record, SessionOpen};
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use proptest::prelude::*;
use std::path::Path;

const BS: usize = 4096;

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
            ".{0,20}"
        )
            .prop_map(|(session, previous_clean, strict, pid, software)| {
                Record::SessionOpen(SessionOpen {
                    session,
                    previous_clean,
                    strict,
                    pid,
                    software,
                })
            }),
        any::<u64>().prop_map(|session| Record::SessionClose { session }),
        any::<u64>().prop_map(|blocks| Record::Baseline { blocks }),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(block, generation, crc)| {
            Record::Write {
                block,
                generation,
                crc,
            }
        }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(block, generation)| Record::Zero { block, generation }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(block, generation)| Record::Trim { block, generation }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(block, generation)| Record::Failed { block, generation }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5)
        )
            .prop_map(|(session, covers, extra)| Record::Flush {
                session,
                covers,
                extra
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(first, last)| Record::Durable { first, last }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5)
        )
            .prop_map(|(session, covers, extra)| Record::FlushIntent {
                session,
                covers,
                extra
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(session, intent)| Record::FlushConfirm { session, intent }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(records in proptest::collection::vec(record(), 1..20),
                         lsn in 1u64..u64::MAX / 2, time in any::<i64>(), synced in any::<u64>()) {
        let id = [9u8; 16];
        let mut buf = Vec::new();
        frame::encode(&mut buf, &id, lsn, time, synced, &records);
        let f = frame::parse(&buf, &id).unwrap();
        prop_assert_eq!(f.len, buf.len());
        prop_assert_eq!((f.first_lsn, f.time, f.synced_lsn), (lsn, time, synced));
        prop_assert_eq!(f.records().unwrap(), records);
    }

    #[test]
    fn any_flipped_bit_in_a_frame_is_caught(records in proptest::collection::vec(record(), 1..5),
                                            at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let id = [3u8; 16];
        let mut buf = Vec::new();
        frame::encode(&mut buf, &id, 1, 0, 0, &records);
        let i = at.index(buf.len());
        buf[i] ^= 1 << bit;
        prop_assert!(frame::parse(&buf, &id).is_err());
    }
}

/// Offsets of every frame in a segment file, and (last) where the valid frames end.
fn frame_offsets(seg: &Path, id: &[u8; 16]) -> Vec<usize> {
    let buf = std::fs::read(seg).unwrap();
    let mut pos = 64;
    let mut out = Vec::new();
    while pos < buf.len() && buf[pos..].iter().any(|&b| b != 0) {
        let f = frame::parse(&buf[pos..], id).unwrap();
        out.push(pos);
        pos += f.len;
    }
    out.push(pos);
    out
}

/// A ledger with a baseline and one session of five single-block writes; `close` decides
/// whether the session ends cleanly or the process "dies".
fn five_writes(close: bool) -> (Scratch, Vec<Vec<u8>>) {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let mut rng = Rng(77);
    let mut datas = Vec::new();
    for b in 0..5u64 {
        let d = rng.block(BS);
        write_through(&l, &dev, b * 10, &d, false);
        datas.push(d);
    }
    flush(&l, &dev);
    if close {
        l.close(|| dev.flush()).unwrap();
    } else {
        drop(l);
    }
    (s, datas)
}

#[test]
fn torn_tail_at_every_offset_of_the_last_frame_recovers_to_the_previous_frame() {
    let (s, datas) = five_writes(false);
    let id = Ledger::open(&s.ledger, None, OpenOptions::new(Access::Read))
        .unwrap()
        .meta()
        .ledger_id;
    let seg = last_segment(&s.ledger);
    let offsets = frame_offsets(&seg, &id);
    let (last, len) = (offsets[offsets.len() - 2], offsets[offsets.len() - 1]);
    // The last frame is the flush's confirmation; the write of block 40 comes before it.
    let full = s.open(Access::Read).unwrap();
    let lsn_end = full.header().checkpoint_lsn;
    drop(full);
    for cut in last..len {
        let copy = tempfile::tempdir().unwrap();
        let ledger = copy.path().join("l");
        copy_dir(&s.ledger, &ledger);
        let seg_copy = ledger.join("journal").join(seg.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg_copy)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let l = Ledger::open(&ledger, None, OpenOptions::new(Access::Read))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(l.recovery().torn_tail.is_some(), cut > last, "cut at {cut}");
        assert_eq!(l.header().checkpoint_lsn, lsn_end - 1, "cut at {cut}");
        assert_eq!(
            l.state(40),
            BlockState::Tracked {
                generation: 1,
                crc: crc(&datas[4])
            }
        );
        drop(l);
        // A writer truncates the tail for good.
        let w = Ledger::open(&ledger, None, OpenOptions::new(Access::Write)).unwrap();
        drop(w);
        assert_eq!(std::fs::metadata(&seg_copy).unwrap().len(), last as u64);
        let l = Ledger::open(&ledger, None, OpenOptions::new(Access::Read)).unwrap();
        assert!(l.recovery().torn_tail.is_none());
        assert!(check(&ledger).unwrap().problems.is_empty(), "cut at {cut}");
    }
}

#[test]
fn a_torn_tail_drops_the_last_write_record() {
    let (s, datas) = five_writes(false);
    let seg = last_segment(&s.ledger);
    let id = s.open(Access::Read).unwrap().meta().ledger_id;
    let offsets = frame_offsets(&seg, &id);
    // Cut inside the frame of the last write (the one before the flush's intent and
    // confirmation frames).
    let cut = offsets[offsets.len() - 4] + 7;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    // Only a host crash loses appended journal bytes, and the host restarts after it.
    crate::reopen::simulate_reboot(&s.ledger);
    let l = s.open(Access::Read).unwrap();
    assert!(l.recovery().torn_tail.is_some());
    // Block 40's write record is gone: the ledger falls back to its baseline generation.
    assert_eq!(l.state(40).generation(), 0);
    assert_eq!(
        l.state(30),
        BlockState::Tracked {
            generation: 1,
            crc: crc(&datas[3])
        }
    );
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn a_flipped_byte_anywhere_in_the_journal_is_detected() {
    let (s, _) = five_writes(true);
    let seg = last_segment(&s.ledger);
    let len = std::fs::metadata(&seg).unwrap().len();
    assert!(check(&s.ledger).unwrap().problems.is_empty());
    for at in 0..len {
        let copy = tempfile::tempdir().unwrap();
        let ledger = copy.path().join("l");
        copy_dir(&s.ledger, &ledger);
        flip(&ledger.join("journal").join(seg.file_name().unwrap()), at);
        let rep = check(&ledger).unwrap();
        assert!(!rep.problems.is_empty(), "flip at {at} not found by check");
        assert!(rep.problems[0].file.ends_with(".seg"), "{:?}", rep.problems);
        let opened = Ledger::open(&ledger, None, OpenOptions::new(Access::Read));
        assert!(
            opened.is_err(),
            "flip at {at}: a damaged journal was opened"
        );
    }
}

#[test]
fn a_flipped_byte_anywhere_in_the_state_table_is_detected() {
    let (s, _) = five_writes(true);
    let state = s.ledger.join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    let positions: Vec<u64> = (0..200)
        .chain((200..len).step_by(37))
        .chain([len - 1])
        .collect();
    for at in positions {
        let copy = tempfile::tempdir().unwrap();
        let ledger = copy.path().join("l");
        copy_dir(&s.ledger, &ledger);
        flip(&ledger.join("state"), at);
        let rep = check(&ledger).unwrap();
        assert!(!rep.problems.is_empty(), "flip at {at} not found by check");
        let l = Ledger::open(&ledger, None, OpenOptions::new(Access::Read)).unwrap();
        assert!(
            l.recovery().state_rebuilt.is_some(),
            "flip at {at}: a damaged state table was believed"
        );
        // The rebuilt view is right anyway.
        assert_eq!(l.state(40).generation(), 1);
    }
}

#[test]
fn a_flipped_byte_in_meta_or_baseline_is_detected() {
    let (s, _) = five_writes(true);
    for file in ["meta", "baseline"] {
        let p = s.ledger.join(file);
        let len = std::fs::metadata(&p).unwrap().len();
        for at in (0..len).step_by(if file == "meta" { 1 } else { 97 }) {
            let copy = tempfile::tempdir().unwrap();
            let ledger = copy.path().join("l");
            copy_dir(&s.ledger, &ledger);
            flip(&ledger.join(file), at);
            let rep = check(&ledger).unwrap();
            assert!(!rep.problems.is_empty(), "{file}: flip at {at} not found");
            assert!(Ledger::open(&ledger, None, OpenOptions::new(Access::Read)).is_err());
        }
    }
}

/// Many small segments, for chain tests.
fn segmented() -> Scratch {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let dev = s.device(false);
    let mut opts = OpenOptions::new(Access::Write);
    opts.segment_bytes = 300;
    let l = LedgerWriter::open(&s.ledger, Some((dev.identity(), dev.size())), opts)
        .unwrap()
        .begin_session(false)
        .unwrap();
    let dev = s.device(true);
    let mut rng = Rng(5);
    for b in 0..20u64 {
        write_through(&l, &dev, b, &rng.block(BS), false);
    }
    l.close(|| dev.flush()).unwrap();
    s
}

#[test]
fn segment_chain_breaks_are_reported() {
    let s = segmented();
    let segs: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(s.ledger.join("journal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    assert!(segs.len() >= 4, "{} segments", segs.len());
    assert!(check(&s.ledger).unwrap().problems.is_empty());
    // Each damage on a fresh copy: (what, how).
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "missing middle segment",
            Box::new(|j: &Path| {
                std::fs::remove_file(j.join("000000000002.seg")).unwrap();
            }),
        ),
        (
            "segment replaced by another",
            Box::new(|j: &Path| {
                std::fs::copy(j.join("000000000003.seg"), j.join("000000000002.seg")).unwrap();
            }),
        ),
        (
            "middle segment reverted to an older, shorter copy",
            Box::new(|j: &Path| {
                let p = j.join("000000000002.seg");
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len - 60)
                    .unwrap();
            }),
        ),
        (
            "last segment missing",
            Box::new(move |j: &Path| {
                let mut v: Vec<_> = std::fs::read_dir(j)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                v.sort();
                std::fs::remove_file(v.pop().unwrap()).unwrap();
            }),
        ),
        (
            "last segment truncated to a whole frame",
            Box::new(move |j: &Path| {
                let mut v: Vec<_> = std::fs::read_dir(j)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                v.sort();
                let p = v.pop().unwrap();
                let len = std::fs::metadata(&p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(len - 52)
                    .unwrap();
            }),
        ),
    ];
    for (what, damage) in cases {
        let copy = tempfile::tempdir().unwrap();
        let ledger = copy.path().join("l");
        copy_dir(&s.ledger, &ledger);
        damage(&ledger.join("journal"));
        let rep = check(&ledger).unwrap();
        assert!(!rep.problems.is_empty(), "{what}: not detected");
        assert!(
            Ledger::open(&ledger, None, OpenOptions::new(Access::Read)).is_err(),
            "{what}: opened anyway"
        );
    }
}

#[test]
fn a_second_writer_and_a_verify_during_a_writer_are_refused() {
    let (s, _) = five_writes(true);
    let (l, _dev) = s.writer(false);
    let e = s.open(Access::Write).err().expect("second writer refused");
    assert!(e.to_string().contains("in use by process"), "{e}");
    let e = s.open(Access::Read).err().expect("verify refused");
    assert!(e.to_string().contains("being written"), "{e}");
    let live = s.open(Access::Live).unwrap();
    assert!(live.is_live_view());
    drop(l);
    assert!(s.open(Access::Read).is_ok());
}
