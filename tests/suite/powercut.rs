//! Power loss, simulated. A device keeps what is durable and the writes pending since its last
//! flush; at every device call a cut point is captured together with the journal bytes and how
//! far the journal was synced. Each cut is then played many ways: the device keeps its durable
//! image plus an arbitrary subset of the pending writes (some torn sector by sector), and the
//! journal keeps its synced part plus an arbitrary subset of the later frames (holes included).
//! Verify must never report a lost write for such a cut, `--journal-sync strict` must never
//! leave anything `uncertain`, and a loss of flushed data injected on top must be `reverted`.

use crate::helpers::*;
use lostwrite::device::{BlockDevice, DeviceIdentity, DeviceKind, TrimOutcome};
use lostwrite::findings::classify::Kind;
use lostwrite::ledger::{
    frame, segment, Access, BaselineSource, Ledger, LedgerWriter, OpenOptions,
};
use lostwrite::service::{Export, ExportOptions, OnMismatch};
use lostwrite::verify;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

const BS: usize = 4096;
const BLOCKS: usize = 48;
const SIZE: usize = BS * BLOCKS;

#[derive(Clone)]
struct Sim {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<(usize, Vec<u8>)>,
}

type Hook = Box<dyn Fn(&Sim) + Send + Sync>;

struct SimDevice {
    sim: Mutex<Sim>,
    hook: OnceLock<Hook>,
}

impl SimDevice {
    fn call(&self) -> std::sync::MutexGuard<'_, Sim> {
        let s = self.sim.lock().unwrap();
        if let Some(h) = self.hook.get() {
            h(&s);
        }
        s
    }

    fn put(&self, off: usize, data: &[u8], fua: bool) {
        let mut s = self.call();
        s.live[off..off + data.len()].copy_from_slice(data);
        if fua {
            s.durable[off..off + data.len()].copy_from_slice(data);
            // A device never lets older cached data land on sectors a later FUA write put on
            // the media: cut the overlap out of older pending writes.
            let end = off + data.len();
            let old = std::mem::take(&mut s.pending);
            for (o, d) in old {
                let e = o + d.len();
                if e <= off || o >= end {
                    s.pending.push((o, d));
                    continue;
                }
                if o < off {
                    s.pending.push((o, d[..off - o].to_vec()));
                }
                if e > end {
                    s.pending.push((end, d[end - o..].to_vec()));
                }
            }
        } else {
            s.pending.push((off, data.to_vec()));
        }
    }
}

impl BlockDevice for SimDevice {
    fn name(&self) -> &str {
        "sim"
    }
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.sim.lock().unwrap();
        buf.copy_from_slice(&s.live[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.put(offset as usize, buf, fua);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let mut s = self.call();
        s.durable = s.live.clone();
        s.pending.clear();
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool, _: bool) -> io::Result<()> {
        self.put(offset as usize, &vec![0u8; len as usize], false);
        Ok(())
    }
    fn trim_zeroes(&self) -> bool {
        false
    }
    fn trim(&self, _: u64, _: u64) -> io::Result<TrimOutcome> {
        Ok(TrimOutcome::Ignored)
    }
}

/// The world at the instant of a cut.
struct Cut {
    sim: Sim,
    journal: Vec<u8>,
    synced: u64,
    /// The device as of the last FLUSH or FUA that had returned and whose claim the journal had
    /// synced (the ledger knows it durable: a FLUSH's confirmation may still wait for a sync).
    known_durable: Vec<u8>,
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        kind: DeviceKind::File,
        path: "/sim".into(),
        dev: 1,
        ino: 1,
        rdev: 0,
    }
}

/// Runs a random workload through the service layer and captures a cut at every device call.
fn workload(dir: &Path, strict: bool, seed: u64, ops: usize) -> (Vec<Cut>, Vec<u8>) {
    let mut rng = Rng(seed);
    let mut base = vec![0u8; SIZE];
    rng.fill(&mut base);
    let dev = Arc::new(SimDevice {
        sim: Mutex::new(Sim {
            durable: base.clone(),
            live: base.clone(),
            pending: Vec::new(),
        }),
        hook: OnceLock::new(),
    });
    let ledger_dir = dir.join("ledger");
    Ledger::create(
        &ledger_dir,
        &identity(),
        SIZE as u64,
        BS as u32,
        Some(BaselineSource {
            device: &*dev,
            jobs: 1,
            progress: None,
        }),
    )
    .unwrap();
    let l = LedgerWriter::open(
        &ledger_dir,
        Some((&identity(), SIZE as u64)),
        OpenOptions::new(Access::Write),
    )
    .unwrap()
    .begin_session(strict)
    .unwrap();
    let export = Arc::new(Export::new(
        Box::new(dev.clone()),
        Some(l),
        ExportOptions {
            name: String::new(),
            read_only: false,
            on_mismatch: OnMismatch::Log,
        },
    ));
    let cuts: Arc<Mutex<Vec<Cut>>> = Arc::default();
    // What the ledger knows durable, and what it will once the journal is synced through an LSN.
    type Known = (Vec<u8>, Vec<(u64, Vec<u8>)>);
    let known: Arc<Mutex<Known>> = Arc::new(Mutex::new((base.clone(), Vec::new())));
    let seg = segment::path(&ledger_dir.join("journal"), 1);
    {
        let (export, cuts, known, seg) = (
            Arc::downgrade(&export),
            cuts.clone(),
            known.clone(),
            seg.clone(),
        );
        let hook: Hook = Box::new(move |sim: &Sim| {
            let Some(e) = export.upgrade() else { return };
            let synced = e.ledger().unwrap().journal_synced().unwrap();
            let journal = std::fs::read(&seg).unwrap();
            let mut k = known.lock().unwrap();
            let (now, later) = &mut *k;
            while later.first().is_some_and(|(lsn, _)| *lsn <= synced) {
                *now = later.remove(0).1;
            }
            cuts.lock().unwrap().push(Cut {
                sim: sim.clone(),
                journal,
                synced,
                known_durable: now.clone(),
            });
        });
        assert!(dev.hook.set(hook).is_ok());
    }
    for _ in 0..ops {
        let r = rng.next() % 100;
        let b = (rng.next() % (BLOCKS as u64 - 3)) as usize;
        if r < 55 {
            let n = 1 + (rng.next() % 3) as usize;
            let fua = rng.next() % 7 == 0;
            // Now and then an unaligned write (read-modify-write of its edge blocks).
            let (off, len) = if rng.next() % 5 == 0 {
                (b * BS + 100, n * BS - 300)
            } else {
                (b * BS, n * BS)
            };
            export.write(off as u64, &rng.block(len), fua).unwrap();
            if fua {
                let claim = export.ledger().unwrap().last_lsn();
                let image = dev.sim.lock().unwrap().durable.clone();
                known.lock().unwrap().1.push((claim, image));
            }
        } else if r < 65 {
            export
                .write_zeroes((b * BS) as u64, BS as u64, true, false, false)
                .unwrap();
        } else {
            export.flush().unwrap();
            let claim = export.ledger().unwrap().last_lsn();
            let image = dev.sim.lock().unwrap().durable.clone();
            known.lock().unwrap().1.push((claim, image));
        }
    }
    // The power goes: no session close. Keep the ledger's other files as they are.
    let cuts = std::mem::take(&mut *cuts.lock().unwrap());
    drop(export);
    (cuts, base)
}

/// Frame boundaries in a segment: (offset, length, last LSN).
fn frames(seg: &[u8], id: &[u8; 16]) -> Vec<(usize, usize, u64)> {
    let mut pos = segment::HEADER_LEN;
    let mut out = Vec::new();
    while let Ok(f) = frame::parse(&seg[pos..], id) {
        out.push((pos, f.len, f.last_lsn()));
        pos += f.len;
    }
    out
}

/// Plays a cut: the journal bytes and device image that survive.
fn play(cut: &Cut, id: &[u8; 16], rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let mut journal = cut.journal.clone();
    let fs = frames(&journal, id);
    let mut end = segment::HEADER_LEN;
    for &(off, len, last) in &fs {
        let keep = last <= cut.synced || rng.next() % 2 == 0;
        if keep {
            end = off + len;
        } else {
            journal[off..off + len].fill(0);
        }
    }
    journal.truncate(end);
    let mut image = cut.sim.durable.clone();
    for (off, data) in &cut.sim.pending {
        match rng.next() % 10 {
            0..=4 => {}
            5 => {
                // Torn: only a prefix of its 512-byte sectors reached the media.
                let sectors = data.len().div_ceil(512);
                let k = (rng.next() as usize % sectors).max(1) * 512;
                let k = k.min(data.len());
                image[*off..off + k].copy_from_slice(&data[..k]);
            }
            _ => image[*off..off + data.len()].copy_from_slice(data),
        }
    }
    (journal, image)
}

struct Image(Vec<u8>);

impl BlockDevice for Image {
    fn name(&self) -> &str {
        "sim-after-power-loss"
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> io::Result<()> {
        unreachable!("verify only reads")
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        unreachable!("verify only reads")
    }
    fn trim_zeroes(&self) -> bool {
        false
    }
    fn trim(&self, _: u64, _: u64) -> io::Result<TrimOutcome> {
        unreachable!("verify only reads")
    }
}

fn verify_cut(ledger_dir: &Path, seg: &Path, journal: &[u8], image: Vec<u8>) -> Vec<(u64, Kind)> {
    std::fs::write(seg, journal).unwrap();
    // A power cut restarts the host: the running checkpoint's page cache is gone.
    crate::reopen::simulate_reboot(ledger_dir);
    let l = Ledger::open(
        ledger_dir,
        Some((&identity(), SIZE as u64)),
        OpenOptions::new(Access::Read),
    )
    .unwrap();
    let r = verify::run(
        &l,
        &Image(image),
        &verify::Options {
            jobs: 1,
            strict: false,
            progress: false,
        },
    )
    .unwrap();
    r.findings.iter().map(|f| (f.block, f.kind)).collect()
}

/// Returns (cut points explored, injected losses detected).
fn explore(strict: bool, seed: u64, ops: usize, plays: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (cuts, base) = workload(dir.path(), strict, seed, ops);
    let ledger_dir = dir.path().join("ledger");
    let id = Ledger::open(&ledger_dir, None, OpenOptions::new(Access::Live))
        .unwrap()
        .meta()
        .ledger_id;
    let seg = segment::path(&ledger_dir.join("journal"), 1);
    let mut rng = Rng(seed ^ 0xabcdef);
    let (mut explored, mut injected) = (0, 0);
    for (i, cut) in cuts.iter().enumerate() {
        for p in 0..plays {
            let (journal, mut image) = play(cut, &id, &mut rng);
            let found = verify_cut(&ledger_dir, &seg, &journal, image.clone());
            for &(b, k) in &found {
                if k.fails(false) {
                    let l = Ledger::open(
                        &ledger_dir,
                        Some((&identity(), SIZE as u64)),
                        OpenOptions::new(Access::Read),
                    )
                    .unwrap();
                    let h = lostwrite::ledger::history::collect(
                        &l,
                        &std::collections::HashSet::from([b]),
                        &Default::default(),
                    )
                    .unwrap();
                    eprintln!(
                        "synced {} journal bytes {} of {}",
                        cut.synced,
                        journal.len(),
                        cut.journal.len()
                    );
                    for e in &h.events[&b] {
                        eprintln!(
                            "  event lsn {} gen {} {:?} durable {} time {}",
                            e.lsn, e.generation, e.change, e.durable, e.time
                        );
                    }
                    for (sid, s) in &h.sessions {
                        eprintln!(
                            "  session {sid}: end {:?} last {} strict {} flushes {:?}",
                            s.end, s.last_lsn, s.strict, s.flushes
                        );
                    }
                    let bo = b as usize * BS;
                    for (o, d) in &cut.sim.pending {
                        if *o < bo + BS && o + d.len() > bo {
                            eprintln!("  pending write at {o} len {}", d.len());
                        }
                    }
                    eprintln!(
                        "  durable block crc {:08x}, image block crc {:08x}",
                        crc(&cut.sim.durable[bo..bo + BS]),
                        crc(&image[bo..bo + BS])
                    );
                    l.scan_journal(1, &mut |e| {
                        if e.record.block() == Some(b) || e.record.block().is_none() {
                            eprintln!("  rec {} {:?}", e.lsn, e.record);
                        }
                        Ok(())
                    })
                    .unwrap();
                }
                assert!(
                    !k.fails(false),
                    "cut {i} play {p}: block {b} reported {k:?} after a power cut that lost only unflushed writes"
                );
                assert!(
                    !(strict && k == Kind::Uncertain),
                    "cut {i}: uncertain with strict journal sync"
                );
            }
            explored += 1;
            // Now lose flushed data too: a block the ledger knows durable goes back to its
            // baseline contents.
            let victim = (0..BLOCKS)
                .find(|&b| cut.known_durable[b * BS..(b + 1) * BS] != base[b * BS..(b + 1) * BS]);
            if let (Some(b), 0) = (victim, p % 4) {
                image[b * BS..(b + 1) * BS].copy_from_slice(&base[b * BS..(b + 1) * BS]);
                let found = verify_cut(&ledger_dir, &seg, &journal, image);
                assert!(
                    found.contains(&(b as u64, Kind::Reverted)),
                    "cut {i}: the loss of block {b}'s flushed data was not reported: {found:?}"
                );
                assert_eq!(
                    found.iter().filter(|f| f.1.fails(false)).count(),
                    1,
                    "cut {i}: {found:?}"
                );
                injected += 1;
            }
        }
    }
    (explored, injected)
}

#[test]
fn power_cuts_never_report_a_lost_write_and_flushed_losses_are_always_caught() {
    let (explored, injected) = explore(false, 11, 280, 40);
    eprintln!("journal-sync flush: {explored} cut points explored, {injected} injected losses of flushed data detected");
    assert!(explored >= 10_000, "{explored}");
    assert!(injected >= 1_000, "{injected}");
}

#[test]
fn strict_journal_sync_leaves_nothing_uncertain_after_a_power_cut() {
    let (explored, injected) = explore(true, 12, 60, 20);
    eprintln!(
        "journal-sync strict: {explored} cut points explored, {injected} injected losses detected"
    );
    assert!(explored >= 1_000, "{explored}");
}
