//! Every classification kind, produced from a history recorded through the library API (the
//! same calls the sidecar makes) and damage done to the device underneath.

use crate::helpers::*;
use lostwrite::device::BlockDevice;
use lostwrite::findings::classify::Kind;
use lostwrite::findings::Finding;
use lostwrite::ledger::state::BlockState;

const BS: usize = 4096;

fn only(findings: &[Finding]) -> &Finding {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    &findings[0]
}

#[test]
fn a_flushed_write_that_reverts_is_reverted_with_its_lost_generations() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let mut rng = Rng(1);
    let (a, b, c) = (rng.block(BS), rng.block(BS), rng.block(BS));
    write_through(&l, &dev, 7, &a, false);
    flush(&l, &dev);
    write_through(&l, &dev, 7, &b, false);
    write_through(&l, &dev, 7, &c, false);
    flush(&l, &dev);
    l.close(|| dev.flush()).unwrap();
    s.poke(7, &a);
    let r = s.verify();
    let f = only(&r.findings);
    assert_eq!((f.block, f.kind), (7, Kind::Reverted));
    assert_eq!((f.expected_generation, f.found_generation), (3, Some(1)));
    let lost: Vec<(u32, bool)> = f.lost.iter().map(|l| (l.generation, l.durable)).collect();
    assert_eq!(lost, vec![(2, true), (3, true)]);
    assert_eq!(r.result, "findings");
}

#[test]
fn writes_after_the_last_flush_of_a_crashed_session_are_unflushed_not_lost() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let mut rng = Rng(2);
    let (a, b) = (rng.block(BS), rng.block(BS));
    write_through(&l, &dev, 3, &a, false);
    flush(&l, &dev);
    write_through(&l, &dev, 3, &b, false);
    drop(l); // the process dies before the next flush
    s.poke(3, &a); // and the device lost the unflushed write
    let r = s.verify();
    let f = only(&r.findings);
    assert_eq!((f.kind, f.found_generation), (Kind::Unflushed, Some(1)));
    assert_eq!(f.lost.len(), 1);
    assert!(!f.lost[0].durable);
    assert_eq!(
        r.result, "clean",
        "unflushed losses do not fail verification"
    );
}

#[test]
fn a_crash_does_not_excuse_losing_a_flushed_write() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let mut rng = Rng(3);
    let (a, b, c) = (rng.block(BS), rng.block(BS), rng.block(BS));
    write_through(&l, &dev, 3, &a, false);
    flush(&l, &dev);
    write_through(&l, &dev, 3, &b, false);
    flush(&l, &dev);
    write_through(&l, &dev, 3, &c, false);
    drop(l);
    s.poke(3, &a);
    let f = s.verify().findings;
    let f = only(&f);
    assert_eq!((f.kind, f.found_generation), (Kind::Reverted, Some(1)));
    assert_eq!(
        f.lost.iter().map(|l| l.durable).collect::<Vec<_>>(),
        vec![true, false]
    );
}

#[test]
fn fua_makes_a_write_durable_without_a_flush() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let orig = s.read_block(9, BS);
    write_through(&l, &dev, 9, &Rng(4).block(BS), true);
    drop(l);
    s.poke(9, &orig);
    let f = s.verify().findings;
    assert_eq!(
        (only(&f).kind, only(&f).found_generation),
        (Kind::Reverted, Some(0))
    );
}

#[test]
fn a_flush_covers_only_writes_completed_before_it() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let (o1, o2, o3) = (
        s.read_block(1, BS),
        s.read_block(2, BS),
        s.read_block(3, BS),
    );
    let mut rng = Rng(6);
    let (d1, d2, d3) = (rng.block(BS), rng.block(BS), rng.block(BS));
    // Block 1's write is still in flight when the flush begins; block 2's completed after it
    // was issued (out of order); block 3's completed before both.
    let t1 = l.record_write_data(1, &d1).unwrap();
    let t2 = l.record_write_data(2, &d2).unwrap();
    dev.write_at(&d2, 2 * BS as u64, false).unwrap();
    l.complete(&t2, true).unwrap();
    let t3 = l.record_write_data(3, &d3).unwrap();
    dev.write_at(&d3, 3 * BS as u64, false).unwrap();
    l.complete(&t3, true).unwrap();
    flush(&l, &dev);
    dev.write_at(&d1, BS as u64, false).unwrap();
    l.complete(&t1, true).unwrap();
    drop(l);
    for (b, o) in [(1, &o1), (2, &o2), (3, &o3)] {
        s.poke(b, o);
    }
    let r = s.verify();
    let kinds: Vec<(u64, Kind)> = r.findings.iter().map(|f| (f.block, f.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, Kind::Unflushed),
            (2, Kind::Reverted),
            (3, Kind::Reverted)
        ]
    );
}

#[test]
fn unknown_contents_after_a_crash_are_uncertain_but_corrupt_with_strict_journal_sync() {
    for strict in [false, true] {
        let s = Scratch::new(1 << 20);
        s.init(BS as u32, true);
        let (l, dev) = s.writer(strict);
        write_through(&l, &dev, 5, &Rng(8).block(BS), false);
        flush(&l, &dev);
        drop(l); // crash: with journal-sync=flush the tail may have lost records
        s.poke(5, &Rng(9).block(BS));
        let f = s.verify().findings;
        let want = if strict {
            Kind::Corrupt
        } else {
            Kind::Uncertain
        };
        assert_eq!(only(&f).kind, want, "strict={strict}");
    }
}

#[test]
fn zeroed_misdirected_and_corrupt_after_a_clean_session() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let mut rng = Rng(10);
    let other = rng.block(BS);
    write_through(&l, &dev, 20, &other, false);
    write_through(&l, &dev, 21, &rng.block(BS), false);
    l.close(|| dev.flush()).unwrap();
    s.poke(11, &vec![0u8; BS]);
    s.poke(12, &other);
    let base30 = s.read_block(30, BS);
    s.poke(13, &base30);
    s.poke(14, &rng.block(BS));
    let r = s.verify();
    type Row = (u64, Kind, Option<(u64, u32)>);
    let got: Vec<Row> = r
        .findings
        .iter()
        .map(|f| {
            (
                f.block,
                f.kind,
                f.belongs_to.as_ref().map(|b| (b.block, b.generation)),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (11, Kind::Zeroed, None),
            (12, Kind::Misdirected, Some((20, 1))),
            (13, Kind::Misdirected, Some((30, 0))),
            (14, Kind::Corrupt, None),
        ]
    );
}

#[test]
fn zero_writes_trims_and_failed_writes_are_recorded() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let t = l.record_zero(4, 2).unwrap();
    dev.write_zeroes(4 * BS as u64, 2 * BS as u64, false, false)
        .unwrap();
    l.complete(&t, true).unwrap();
    let t = l.record_trim(6, 1).unwrap();
    l.complete(&t, true).unwrap();
    let t = l.record_write_data(8, &Rng(11).block(BS)).unwrap();
    l.complete(&t, false).unwrap(); // the device write failed
    assert_eq!(
        l.state(4),
        BlockState::Tracked {
            generation: 1,
            crc: l.zero_crc()
        }
    );
    assert_eq!(l.state(6), BlockState::Untracked { generation: 1 });
    assert_eq!(l.state(8), BlockState::Unknown { generation: 1 });
    l.close(|| dev.flush()).unwrap();
    let r = s.verify();
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!((r.summary.untracked, r.summary.unknown), (1, 1));
    // Losing the zeroing brings back generation 0: a revert, not "zeroed".
    let before = {
        let mut b = vec![0u8; BS];
        // the baseline contents of block 4 are gone from the device; rebuild from the seed
        crate::helpers::random_image(&s.dir.path().join("orig.img"), 1 << 20, 0x5eed);
        use std::os::unix::fs::FileExt;
        std::fs::File::open(s.dir.path().join("orig.img"))
            .unwrap()
            .read_exact_at(&mut b, 4 * BS as u64)
            .unwrap();
        b
    };
    s.poke(4, &before);
    let f = s.verify().findings;
    assert_eq!(
        (only(&f).kind, only(&f).found_generation),
        (Kind::Reverted, Some(0))
    );
}

#[test]
fn misdirected_write_reverts_its_own_block_and_lands_on_another() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let mut rng = Rng(12);
    let (intended_old, new) = (s.read_block(50, BS), rng.block(BS));
    // The ledger records a write to block 50, but the storage layer puts it on block 60.
    let t = l.record_write_data(50, &new).unwrap();
    dev.write_at(&new, 60 * BS as u64, false).unwrap();
    l.complete(&t, true).unwrap();
    flush(&l, &dev);
    l.close(|| dev.flush()).unwrap();
    let _ = intended_old;
    let r = s.verify();
    let got: Vec<(u64, Kind)> = r.findings.iter().map(|f| (f.block, f.kind)).collect();
    assert_eq!(got, vec![(50, Kind::Reverted), (60, Kind::Misdirected)]);
    assert_eq!(r.findings[1].belongs_to.as_ref().unwrap().block, 50);
}
