//! Ledger at scale: builds a ledger whose journal holds millions of records through the public
//! recording API (as `serve` records 4 KiB writes: one frame per request, up to a queue depth of
//! tickets in flight completed out of order, a FLUSH every so many writes), then times
//! `Ledger::open` after a crash (session left open: recovery replays the journal after the
//! table's last running checkpoint, and each crashed run leaves `LEDGER_SCALE_TAIL` records after
//! it for the next) and after a clean close (checkpointed: the journal is read and checked,
//! nothing is replayed).
//! docs/PERFORMANCE.md ("Ledger at scale") records the figures; `tools/bench-ledger.sh` runs this
//! and the CLI measurements around it.
//!
//! ```text
//! cargo bench --bench ledger_scale
//! LEDGER_SCALE_RECORDS=1000000 LEDGER_SCALE_DEVICE_GIB=1024 cargo bench --bench ledger_scale
//! ```
//!
//! Environment: `LEDGER_SCALE_RECORDS` (journal records, default 10,000,000),
//! `LEDGER_SCALE_DEVICE_GIB` (sparse device size, default 64), `LEDGER_SCALE_RUNS` (timed opens
//! per case, default 5), `LEDGER_SCALE_QD` (tickets in flight, default 16),
//! `LEDGER_SCALE_FLUSH_EVERY` (writes per FLUSH, default 1024), `LEDGER_SCALE_WORKDIR` (parent
//! of the temporary directory, default /var/tmp), `LEDGER_SCALE_KEEP=1` (keep the device and
//! the cleanly closed ledger, and the block list `history-blocks.txt`, for the CLI timings;
//! the caller deletes the directory printed as `RESULT dir`), `LEDGER_SCALE_RETAIN_BYTES` (fold
//! the journal down to this many bytes before the crash, as `serve --retain-bytes` does, so the
//! reopens replay the compacted history and the retained journal), `LEDGER_SCALE_TAIL` (records a
//! crashed session writes after its last running checkpoint, default 500,000: just under the
//! 524,288 after which the writer takes the next one, the most a crash under steady load leaves).
//!
//! Lines starting with `RESULT` are for the script; the rest is for people. The device writes
//! themselves are not issued (the device is a sparse file the ledger is made for): this measures
//! the ledger, not the disk.

use lostwrite::device::FileDevice;
use lostwrite::ledger::{
    Access, Ledger, LedgerWriter, OpenOptions, Ticket, JOURNAL_DIR, STATE_FILE,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

fn no_device_flush() -> std::io::Result<()> {
    Ok(())
}

fn journal_files(ledger: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ledger.join(JOURNAL_DIR))
        .expect("journal directory")
        .map(|e| e.expect("dir entry").path())
        .collect();
    v.sort();
    v
}

/// The journal's segment files: not the summaries beside them (a writer writes one for each
/// segment it seals, on a thread of its own, so their number lags), nor anything else.
fn segment_files(ledger: &Path) -> Vec<PathBuf> {
    journal_files(ledger)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect()
}

fn file_bytes(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum()
}

/// Writes back and drops the ledger's files from the page cache, so the next open reads them
/// from the disk (a cold start after a reboot, without dropping anyone else's cache).
fn evict(ledger: &Path) {
    let mut files = journal_files(ledger);
    files.push(ledger.join(STATE_FILE));
    for p in files {
        let f = std::fs::File::open(&p).expect("open for eviction");
        f.sync_all().expect("fsync before eviction");
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .expect("posix_fadvise");
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Case {
    key: &'static str,
    what: &'static str,
    times: Vec<Duration>,
    replayed: u64,
}

impl Case {
    fn report(&mut self) {
        let med = median(&mut self.times);
        let (lo, hi) = (self.times[0], *self.times.last().expect("runs"));
        println!(
            "  {:<50} median {:>8.1} ms  (min {:>8.1}, max {:>8.1}; {} runs; {} records replayed)",
            self.what,
            ms(med),
            ms(lo),
            ms(hi),
            self.times.len(),
            self.replayed
        );
        println!(
            "RESULT open_{} {:.1} {:.1} {:.1} {} {}",
            self.key,
            ms(med),
            ms(lo),
            ms(hi),
            self.times.len(),
            self.replayed
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let records = env_u64("LEDGER_SCALE_RECORDS", 10_000_000);
    let device_gib = env_u64("LEDGER_SCALE_DEVICE_GIB", 64);
    let runs = env_u64("LEDGER_SCALE_RUNS", 5).max(1) as usize;
    let qd = env_u64("LEDGER_SCALE_QD", 16).max(1) as usize;
    let flush_every = env_u64("LEDGER_SCALE_FLUSH_EVERY", 1024).max(1);
    let tail = env_u64("LEDGER_SCALE_TAIL", 500_000);
    let keep = std::env::var("LEDGER_SCALE_KEEP").is_ok_and(|v| v == "1");
    let workdir =
        PathBuf::from(std::env::var("LEDGER_SCALE_WORKDIR").unwrap_or_else(|_| "/var/tmp".into()));

    let tmp = tempfile::Builder::new()
        .prefix("lostwrite-ledger-scale-")
        .tempdir_in(&workdir)
        .expect("temporary directory");
    let image = tmp.path().join("disk.img");
    let ledger = tmp.path().join("disk.img.ledger");
    let device_size = device_gib << 30;
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(device_size))
        .expect("sparse device file");
    let dev = FileDevice::open(&image, false).expect("device");
    let ident = Some((dev.identity(), device_size));
    Ledger::create(&ledger, dev.identity(), device_size, 4096, None).expect("create ledger");
    let blocks = device_size / 4096;
    println!(
        "ledger_scale: {records} journal records of 4 KiB random writes on a {device_gib} GiB device ({blocks} blocks), QD {qd}, a FLUSH every {flush_every} writes; in {}",
        tmp.path().display()
    );

    // ---- build: the recording path of `serve` for 4 KiB writes ----
    let t0 = Instant::now();
    let l = LedgerWriter::open(&ledger, ident, OpenOptions::new(Access::Write))
        .expect("open")
        .begin_session(false)
        .expect("session");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inflight: Vec<Ticket> = Vec::with_capacity(qd);
    let mut history_blocks: Vec<u64> = Vec::new();
    let (mut writes, mut flushes, mut last_lsn) = (0u64, 0u64, 1u64);
    // Records so far: the session-open (LSN 1), the writes and the flushes.
    while last_lsn < records {
        let b = rng.below(blocks);
        let crc = rng.next() as u32;
        let t = l.record_write(b, &[crc]).expect("record_write");
        last_lsn = t.last;
        writes += 1;
        if writes % (records / 1010).max(1) == 0 && history_blocks.len() < 1000 {
            history_blocks.push(b);
        }
        inflight.push(t);
        if inflight.len() >= qd {
            // The device write of any request in flight may finish first.
            let i = rng.below(inflight.len() as u64) as usize;
            let done = inflight.swap_remove(i);
            l.complete(&done, true).expect("complete");
        }
        if writes % flush_every == 0 {
            // A FLUSH arrives while other requests are still in flight: it covers what completed.
            l.flush(no_device_flush).expect("flush");
            flushes += 1;
            last_lsn += 1;
        }
    }
    for t in inflight.drain(..) {
        l.complete(&t, true).expect("complete");
    }
    l.flush(no_device_flush).expect("flush");
    flushes += 1;
    let build = t0.elapsed();
    let segs = segment_files(&ledger);
    let journal_bytes = file_bytes(&segs);
    let headers = segs.len() as u64 * 64;
    let state_bytes = std::fs::metadata(ledger.join(STATE_FILE))
        .expect("stat state")
        .len();
    println!(
        "  built in {:.1} s: {writes} writes + {flushes} flushes ({:.0} recorded writes/s without device I/O)",
        build.as_secs_f64(),
        writes as f64 / build.as_secs_f64()
    );
    println!(
        "  journal: {journal_bytes} bytes in {} segments = {:.2} bytes per write (flushes included); state table {state_bytes} bytes",
        segs.len(),
        (journal_bytes - headers) as f64 / writes as f64
    );
    println!("RESULT device_gib {device_gib}");
    println!("RESULT records {records}");
    println!("RESULT writes {writes}");
    println!("RESULT flushes {flushes}");
    println!("RESULT flush_every {flush_every}");
    println!("RESULT qd {qd}");
    println!("RESULT journal_bytes {journal_bytes}");
    println!("RESULT segments {}", segs.len());
    println!("RESULT state_bytes {state_bytes}");
    println!("RESULT build_s {:.1}", build.as_secs_f64());
    let retain = env_u64("LEDGER_SCALE_RETAIN_BYTES", 0);
    if retain > 0 {
        let t = Instant::now();
        let keep = lostwrite::ledger::compact::Retention {
            age: None,
            bytes: Some(retain),
        };
        // As `ledger compact` does: passes of at most MAX_PASS_BYTES until within the limit.
        let passes = l
            .compact_all(keep, lostwrite::clock::now())
            .expect("compact");
        let c = passes.last().expect("something to fold");
        let fold = std::fs::metadata(ledger.join("compacted"))
            .expect("stat compacted")
            .len();
        let left = file_bytes(&segment_files(&ledger));
        println!(
            "  folded segments {}..={} in {} passes, {:.1} s: compacted history {fold} bytes ({} blocks), journal left {left} bytes",
            passes[0].segments.0,
            c.segments.1,
            passes.len(),
            t.elapsed().as_secs_f64(),
            c.entries
        );
        println!("RESULT retain_bytes {retain}");
        println!("RESULT fold_s {:.1}", t.elapsed().as_secs_f64());
        println!("RESULT fold_bytes {fold}");
        println!("RESULT fold_entries {}", c.entries);
        println!("RESULT journal_left {left}");
    }
    // A crash: the process ends with its session open (as after kill -9; the page cache keeps
    // what it wrote). The state table's header says "not clean".
    drop(l);

    // ---- reopen after a crash ----
    let mut crash_hot = Case {
        key: "crash_write_hot",
        what: "after a crash, Access::Write (serve), hot",
        times: Vec::new(),
        replayed: 0,
    };
    let mut crash_read = Case {
        key: "crash_read_hot",
        what: "after a crash, Access::Read (verify), hot",
        times: Vec::new(),
        replayed: 0,
    };
    let mut crash_cold = Case {
        key: "crash_write_cold",
        what: "after a crash, Access::Write (serve), cold",
        times: Vec::new(),
        replayed: 0,
    };
    for i in 0..2 * runs {
        let cold = i % 2 == 1;
        if !cold {
            // A reader recovers in memory and leaves the files as they are: still crashed.
            let t = Instant::now();
            let r =
                Ledger::open(&ledger, ident, OpenOptions::new(Access::Read)).expect("read open");
            crash_read.times.push(t.elapsed());
            crash_read.replayed = crash_read.replayed.max(r.recovery().replayed);
            assert!(!r.recovery().previous_clean, "the ledger is not crashed");
            drop(r);
        }
        // The writer recovers (full replay, table checkpointed); a new session that then dies
        // leaves the ledger crashed again, one record longer, for the next run.
        if cold {
            evict(&ledger);
        }
        let t = Instant::now();
        let w = LedgerWriter::open(&ledger, ident, OpenOptions::new(Access::Write)).expect("open");
        let e = t.elapsed();
        let c = if cold {
            &mut crash_cold
        } else {
            &mut crash_hot
        };
        c.times.push(e);
        c.replayed = c.replayed.max(w.recovery().replayed);
        assert!(!w.recovery().previous_clean, "the ledger is not crashed");
        let w = w.begin_session(false).expect("session");
        // The next crash leaves a tail of `tail` records after the session's last checkpoint.
        for k in 0..tail {
            let t = w
                .record_write(rng.below(blocks), &[rng.next() as u32])
                .expect("record_write");
            w.complete(&t, true).expect("complete");
            if k % flush_every == flush_every - 1 {
                w.flush(no_device_flush).expect("flush");
            }
        }
        drop(w);
    }

    // ---- close cleanly, then reopen ----
    // (The crashed session stays the last one until a session ends cleanly.)
    let w = LedgerWriter::open(&ledger, ident, OpenOptions::new(Access::Write))
        .expect("open")
        .begin_session(false)
        .expect("session");
    w.close(no_device_flush).expect("close");
    let mut clean_hot = Case {
        key: "clean_write_hot",
        what: "after a clean close, Access::Write (serve), hot",
        times: Vec::new(),
        replayed: 0,
    };
    let mut clean_read = Case {
        key: "clean_read_hot",
        what: "after a clean close, Access::Read (verify), hot",
        times: Vec::new(),
        replayed: 0,
    };
    let mut clean_cold = Case {
        key: "clean_write_cold",
        what: "after a clean close, Access::Write (serve), cold",
        times: Vec::new(),
        replayed: 0,
    };
    for _ in 0..runs {
        for (c, access, cold) in [
            (&mut clean_hot, Access::Write, false),
            (&mut clean_read, Access::Read, false),
            (&mut clean_cold, Access::Write, true),
        ] {
            if cold {
                evict(&ledger);
            }
            let t = Instant::now();
            let o = Ledger::open(&ledger, ident, OpenOptions::new(access)).expect("open");
            c.times.push(t.elapsed());
            c.replayed = o.recovery().replayed;
            assert!(
                o.recovery().previous_clean,
                "the ledger was not closed cleanly"
            );
            drop(o);
        }
    }
    println!("Ledger::open of the {records}-record journal:");
    for c in [
        &mut crash_hot,
        &mut crash_cold,
        &mut crash_read,
        &mut clean_hot,
        &mut clean_cold,
        &mut clean_read,
    ] {
        c.report();
    }

    if keep {
        let list: Vec<String> = history_blocks.iter().map(u64::to_string).collect();
        std::fs::write(
            tmp.path().join("history-blocks.txt"),
            list.join("\n") + "\n",
        )
        .expect("block list");
        let kept = tmp.keep();
        println!("RESULT dir {}", kept.display());
        println!("RESULT image {}", image.display());
        println!("RESULT ledger {}", ledger.display());
    }
}
