//! The durability protocol's hard cases through the library API and the service layer:
//! concurrent flushes, a device whose fdatasync fails (fsyncgate), and zeroing or trimming a
//! whole device with more blocks than fit in one journal frame.

use crate::helpers::*;
use lostwrite::device::{BlockDevice, FileDevice, TrimOutcome};
use lostwrite::ledger::history::{self, SessionEnd};
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::Access;
use lostwrite::nbd::errno;
use lostwrite::server::failure::Failure;
use lostwrite::service::{Export, ExportOptions, OnMismatch};
use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BS: usize = 4096;

#[test]
fn a_flush_that_finds_nothing_new_waits_for_the_flush_that_records_it() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    write_through(&l, &dev, 4, &Rng(1).block(BS), false);
    let started = AtomicBool::new(false);
    let flush_records = |l: &lostwrite::ledger::Ledger| {
        let mut n = 0;
        l.scan_journal(1, &mut |e| {
            use lostwrite::ledger::record::Record;
            n += matches!(e.record, Record::Flush { .. } | Record::FlushConfirm { .. }) as usize;
            Ok(())
        })
        .unwrap();
        n
    };
    let seen_by_second = std::thread::scope(|sc| {
        // The first flush takes the completed write, then its device sync is slow.
        sc.spawn(|| {
            l.flush(|| {
                started.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            })
            .unwrap()
        });
        let second = sc.spawn(|| {
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // Nothing new for this one to record: it must still not answer before the
            // first flush's record is in the journal.
            l.flush(|| Ok(())).unwrap();
            flush_records(&l)
        });
        second.join().unwrap()
    });
    assert_eq!(
        seen_by_second, 1,
        "the second flush replied before the first recorded"
    );
    drop(l);
    // The write is durable in the ledger: losing it now is a lost update, not an allowed loss.
    let l = s.open(Access::Read).unwrap();
    let h = history::collect(&l, &HashSet::from([4]), &HashSet::new()).unwrap();
    assert!(h.events[&4].last().unwrap().durable);
}

/// FLUSHes that arrive while one runs share the next round: one device sync for all of them,
/// begun after each arrived, so every write completed before any of them is durable; and when
/// that shared device sync fails, every one of them fails.
#[test]
fn flushes_arriving_together_share_one_round_and_its_outcome() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let syncs = std::sync::atomic::AtomicUsize::new(0);
    let started = AtomicBool::new(false);
    let fail = AtomicBool::new(false);
    let sync = || {
        syncs.fetch_add(1, Ordering::SeqCst);
        started.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        if fail.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(nix::libc::EIO))
        } else {
            Ok(())
        }
    };
    for round in 0..2 {
        if round == 1 {
            fail.store(true, Ordering::SeqCst);
        }
        syncs.store(0, Ordering::SeqCst);
        started.store(false, Ordering::SeqCst);
        let results: Vec<bool> = std::thread::scope(|sc| {
            // A first flush holds the device sync while eight writers each write a block and
            // flush: all eight arrive while it runs, and wait for the round after it.
            let first = sc.spawn(|| l.flush(sync).is_ok());
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let (l, dev) = (&l, &dev);
            let rest: Vec<_> = (0..8u64)
                .map(|i| {
                    sc.spawn(move || {
                        if round == 0 {
                            write_through(l, dev, 10 + i, &Rng(i).block(BS), false);
                        }
                        l.flush(sync).is_ok()
                    })
                })
                .collect();
            std::iter::once(first)
                .chain(rest)
                .map(|h| h.join().unwrap())
                .collect()
        });
        let n = syncs.load(Ordering::SeqCst);
        if round == 0 {
            assert!(results.iter().all(|&ok| ok));
            assert!(
                n < 9,
                "{n} device syncs for 9 flushes: the waiting ones did not share"
            );
        } else {
            // Every flush of a failed round reports the failure; none claims durability.
            assert!(results.iter().all(|&ok| !ok), "{results:?}");
        }
    }
    drop(l);
    let l = s.open(Access::Read).unwrap();
    let blocks: HashSet<u64> = (10..18).collect();
    let h = history::collect(&l, &blocks, &HashSet::new()).unwrap();
    for b in 10..18 {
        assert!(h.events[&b].last().unwrap().durable, "block {b}");
    }
}

/// A file device whose fdatasync can be made to fail, as a dying disk's does.
struct Flaky {
    inner: FileDevice,
    fail_flush: AtomicBool,
}

impl BlockDevice for Flaky {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.inner.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.inner.flush()
    }
    fn write_zeroes(&self, o: u64, l: u64, t: bool, f: bool) -> io::Result<()> {
        self.inner.write_zeroes(o, l, t, f)
    }
    fn trim_zeroes(&self) -> bool {
        self.inner.trim_zeroes()
    }
    fn trim(&self, o: u64, l: u64) -> io::Result<TrimOutcome> {
        self.inner.trim(o, l)
    }
}

fn flaky_export(s: &Scratch) -> (Arc<Export>, Arc<Flaky>) {
    let (l, dev) = s.writer(false);
    let flaky = Arc::new(Flaky {
        inner: dev,
        fail_flush: AtomicBool::new(false),
    });
    (Arc::new(export_of(Box::new(flaky.clone()), l)), flaky)
}

/// A writable export of `dev` recording into `l`.
fn export_of(dev: Box<dyn BlockDevice>, l: lostwrite::ledger::WriteSession) -> Export {
    Export::new(
        dev,
        Some(l),
        ExportOptions {
            name: String::new(),
            read_only: false,
            on_mismatch: OnMismatch::Log,
        },
    )
}

#[test]
fn a_failed_device_sync_poisons_the_session_flush_and_fua_alike() {
    for via_fua_zeroing in [false, true] {
        let s = Scratch::new(1 << 20);
        s.init(BS as u32, true);
        let (e, flaky) = flaky_export(&s);
        e.write(0, &Rng(2).block(BS), false).unwrap();
        flaky.fail_flush.store(true, Ordering::SeqCst);
        let r = if via_fua_zeroing {
            e.write_zeroes(8192, 4096, true, false, true)
        } else {
            e.flush()
        };
        assert_eq!(Failure::Op(r.unwrap_err()).errno(), errno::EIO);
        // The disk "recovers": a later fdatasync would succeed, but proves nothing.
        flaky.fail_flush.store(false, Ordering::SeqCst);
        assert_eq!(
            Failure::Op(e.flush().unwrap_err()).errno(),
            errno::EIO,
            "fua={via_fua_zeroing}"
        );
        assert_eq!(
            Failure::Op(e.write(4096, &Rng(3).block(BS), false).unwrap_err()).errno(),
            errno::EIO
        );
        let e = Arc::try_unwrap(e).ok().unwrap();
        drop(flaky);
        e.close().unwrap();
        // The session is not closed cleanly: it counts as crashed.
        let l = s.open(Access::Read).unwrap();
        let h = history::collect(&l, &HashSet::new(), &HashSet::new()).unwrap();
        assert_eq!(
            h.sessions[&1].end,
            SessionEnd::Crashed,
            "fua={via_fua_zeroing}"
        );
    }
}

#[test]
fn zeroing_and_trimming_a_whole_device_of_small_blocks_is_recorded_in_pieces() {
    // 64 MiB in 512-byte blocks: 131072 blocks, more than one frame or piece holds.
    let s = Scratch::new(64 << 20);
    s.init(512, true);
    let (l, dev) = s.writer(false);
    let e = Export::new(
        Box::new(dev),
        Some(l),
        ExportOptions {
            name: String::new(),
            read_only: false,
            on_mismatch: OnMismatch::Log,
        },
    );
    e.write_zeroes(0, 64 << 20, false, false, true).unwrap();
    e.trim(0, 32 << 20, true).unwrap();
    let zero = e.ledger().unwrap().zero_crc();
    for b in [0u64, 65535, 65536, 131071] {
        assert_eq!(
            e.ledger().unwrap().state(b),
            BlockState::Tracked {
                generation: if b < 65536 { 2 } else { 1 },
                crc: zero
            }
        );
    }
    e.close().unwrap();
    let r = s.verify();
    assert!(r.findings.is_empty());
    assert_eq!(r.summary.ok, 131072);
    assert!(lostwrite::ledger::check::check(&s.ledger)
        .unwrap()
        .problems
        .is_empty());
}

#[test]
fn one_append_of_more_records_than_a_frame_holds_spans_frames() {
    let s = Scratch::new(64 << 20);
    s.init(512, false);
    let (l, dev) = s.writer(false);
    let crcs: Vec<u32> = (0..100_000u32).collect();
    let t = l.record_write(0, &crcs).unwrap();
    assert_eq!(t.last - t.first + 1, 100_000);
    l.complete(&t, false).unwrap();
    l.close(|| dev.flush()).unwrap();
    let l = s.open(Access::Read).unwrap();
    let mut n = 0;
    l.scan_journal(1, &mut |e| {
        if matches!(e.record, lostwrite::ledger::record::Record::Write { .. }) {
            n += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 100_000);
}

/// WRITEs a connection pipelines run together: their records go to the journal in one append
/// (one frame), ahead of every device write, and each block gets its next generation. Writes
/// that overlap, or are not whole blocks, run one at a time, in order, so the last one wins.
#[test]
fn pipelined_writes_share_one_journal_append_and_keep_their_order() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    let e = export_of(Box::new(dev), l);
    let data: Vec<Vec<u8>> = (0..6u64).map(|i| Rng(100 + i).block(2 * BS)).collect();
    // Whole, disjoint blocks: one append.
    let batch: Vec<(u64, &[u8])> = (0..6u64)
        .map(|i| (i * 4 * BS as u64, data[i as usize].as_slice()))
        .collect();
    assert!(e.write_many(&batch).iter().all(|r| r.is_ok()));
    // The same block twice, and an unaligned write: one at a time, the last one wins.
    let (a, b) = (Rng(7).block(BS), Rng(8).block(BS));
    let odd = Rng(9).block(100);
    let mixed: Vec<(u64, &[u8])> = vec![(40 * BS as u64, &a), (40 * BS as u64, &b), (3, &odd)];
    assert!(e.write_many(&mixed).iter().all(|r| r.is_ok()));
    // Out of range: refused, like a single write, without refusing the others.
    let beyond: Vec<(u64, &[u8])> = vec![(1 << 20, &a), (44 * BS as u64, &a)];
    let r = e.write_many(&beyond);
    assert!(r[0].is_err() && r[1].is_ok());
    let e = Arc::try_unwrap(Arc::new(e)).ok().unwrap();
    e.close().unwrap();

    assert_eq!(s.read_block(40, BS), b);
    let l = s.open(Access::Read).unwrap();
    // The journal's frames, each as the blocks its Write records name.
    let buf = std::fs::read(last_segment(&s.ledger)).unwrap();
    let id = l.meta().ledger_id;
    let mut frames: Vec<Vec<u64>> = Vec::new();
    let mut at = lostwrite::ledger::segment::HEADER_LEN;
    while at < buf.len() {
        let f = lostwrite::ledger::frame::parse(&buf[at..], &id).unwrap();
        let blocks: Vec<u64> = f
            .records()
            .unwrap()
            .iter()
            .filter_map(|r| match *r {
                lostwrite::ledger::record::Record::Write { block, .. } => Some(block),
                _ => None,
            })
            .collect();
        if !blocks.is_empty() {
            frames.push(blocks);
        }
        at += f.len;
    }
    let first: Vec<u64> = (0..6u64).flat_map(|i| [i * 4, i * 4 + 1]).collect();
    assert_eq!(frames[0], first, "the batch was not one frame: {frames:?}");
    assert!(frames.len() >= 4, "{frames:?}");
    match l.state(40) {
        BlockState::Tracked { generation, crc: c } => {
            assert_eq!(generation, 2);
            assert_eq!(c, crc(&b));
        }
        other => panic!("{other:?}"),
    }
    drop(l);
    verify_clean(&s.image);
}
