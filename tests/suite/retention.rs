//! Retention: `serve --retain-bytes` keeps a million-write ledger within its documented bound
//! while verification stays exact; `--retain` folds history by age; `ledger compact` does it
//! offline. Compaction is crashed at each of its steps and under load, and its file is damaged,
//! and nothing recorded is lost: the history after compaction is the history before it, cut at
//! the fold point to each block's latest change.

use crate::helpers::*;
use crate::service::{fio, have, run, Service};
use lostwrite::device::BlockDevice;
use lostwrite::ledger::compact::Retention;
use lostwrite::ledger::history::{self, Event};
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u64 = 4096;

/// Bytes in the files directly under `dir` and in its subdirectories.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Samples the journal's size every few milliseconds until dropped; keeps the largest.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(journal: &Path) -> Sampler {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p, j) = (stop.clone(), peak.clone(), journal.to_path_buf());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(dir_bytes(&j), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

fn qemu_io(uri: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run(c.arg(uri));
}

fn verify_json(image: &Path) -> (Option<i32>, Value) {
    let o = bin()
        .args(["verify", "--json"])
        .arg(image)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "verify printed no JSON: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// The check: a million writes through `serve --retain-bytes 4M` keep the journal
/// within retain-bytes + 2 segments (docs/OPERATIONS.md) and the whole ledger within its
/// bound; afterwards `verify` passes, `ledger compact --retain 0s` folds everything, and blocks
/// reverted to what they held at the fold point are named exactly (the generation they fell
/// back to, the one they lost).
#[test]
fn a_million_writes_stay_within_the_retention_bound_and_verify_stays_exact() {
    if !have("fio") || !have("qemu-io") {
        return;
    }
    let size: u64 = 64 << 20;
    let retain: u64 = 4 << 20;
    let segment = Retention {
        age: None,
        bytes: Some(retain),
    }
    .segment_bytes();
    let s = Scratch::new(size);
    s.init(BS as u32, true);
    let journal = s.ledger.join("journal");
    let sampler = Sampler::start(&journal);
    let svc = Service::start(&s.image, &["--retain-bytes", "4M"]);
    fio(
        &svc.uri(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=64m",
            "--io_size=4g",
            "--fsync=256",
        ],
    );
    let log = svc.stop();
    let peak = sampler.finish();
    assert!(
        log.contains("1048576 writes"),
        "fio did not write a million blocks: {log}"
    );
    assert!(log.contains("retention folded"), "{log}");
    let journal_bound = retain + 2 * segment;
    assert!(
        peak <= journal_bound,
        "the journal reached {peak} bytes, above retain-bytes + 2 segments = {journal_bound}"
    );
    // The whole ledger: tables, the compacted history (32 bytes per block ever written, a
    // header and the sessions), the journal, and small files.
    let blocks = size / BS;
    let tables = file_len(&s.ledger.join("state")) + file_len(&s.ledger.join("baseline"));
    let ledger_bound = tables + 32 * blocks + 4096 + journal_bound + 4096;
    let total = dir_bytes(&s.ledger);
    assert!(
        total <= ledger_bound,
        "the ledger holds {total} bytes, above its bound {ledger_bound}"
    );
    assert!(file_len(&s.ledger.join("compacted")) <= 32 * blocks + 4096);
    verify_clean(&s.image);

    // Fold everything offline, then check what is left.
    let out = lw_ok(
        bin()
            .args(["ledger", "compact", "--retain", "0s", "--json"])
            .arg(&s.image),
    );
    let c: Value = serde_json::from_str(&out).unwrap();
    assert!(c["segments_folded"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["journal_bytes_after"].as_u64().unwrap() < 4096, "{c}");
    assert_eq!(c["compacted_blocks"].as_u64(), Some(blocks), "{c}");
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
    let meta = std::fs::read(s.ledger.join("meta")).unwrap();
    assert_eq!(
        meta[8..12],
        3u32.to_le_bytes(),
        "a compacted ledger is meta version 2 or newer (3: its sessions wrote flush intents)"
    );

    // Eight blocks: their contents and generation now (each one's folded latest change).
    let picks: Vec<u64> = (0..8).map(|i| 97 + i * 2011).collect();
    let old: Vec<Vec<u8>> = picks
        .iter()
        .map(|&b| s.read_block(b, BS as usize))
        .collect();
    let mut args = vec!["history".to_string(), "--json".into()];
    args.push(s.image.display().to_string());
    args.extend(picks.iter().map(|b| b.to_string()));
    let h: Value = serde_json::from_str(&lw_ok(bin().args(&args))).unwrap();
    assert!(h["compacted_through_lsn"].as_u64().is_some(), "{h}");
    let gens: Vec<u64> = h["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let g = b["generations"].as_array().unwrap();
            assert_eq!(g.len(), 1, "only the folded latest change is left: {b}");
            assert_eq!(g[0]["durable"], true, "{b}");
            g[0]["generation"].as_u64().unwrap()
        })
        .collect();
    assert!(gens.iter().all(|&g| g > 10), "{gens:?}");

    // New durable generations through the service, then the storage loses them.
    let svc = Service::start(&s.image, &["--retain-bytes", "4M"]);
    let mut cmds: Vec<String> = picks
        .iter()
        .map(|b| format!("write -P 0xab {} 4k", b * BS))
        .collect();
    cmds.push("flush".into());
    qemu_io(&svc.uri(), &cmds);
    svc.stop();
    for (b, data) in picks.iter().zip(&old) {
        s.poke(*b, data);
    }
    let (code, v) = verify_json(&s.image);
    assert_eq!(code, Some(1), "{v}");
    let findings = v["findings"].as_array().unwrap();
    let got: BTreeMap<u64, (String, u64, u64)> = findings
        .iter()
        .map(|f| {
            (
                f["block"].as_u64().unwrap(),
                (
                    f["kind"].as_str().unwrap().to_string(),
                    f["found_generation"].as_u64().unwrap_or(u64::MAX),
                    f["expected_generation"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<u64, (String, u64, u64)> = picks
        .iter()
        .zip(&gens)
        .map(|(&b, &g)| (b, ("reverted".to_string(), g, g + 1)))
        .collect();
    assert_eq!(got, want);
}

/// A ledger written through the library in small segments: 256 blocks, `writes` writes with
/// a flush every 50 and some FUA writes, in two sessions (the first one crashed, with writes
/// after its last flush), closed cleanly.
fn small_segment_ledger(s: &Scratch, writes: u64) {
    s.init(BS as u32, true);
    let mut rng = Rng(77);
    let dev = s.device(true);
    for session in 0..2 {
        let mut opts = OpenOptions::new(Access::Write);
        opts.segment_bytes = 4096;
        let l = LedgerWriter::open(&s.ledger, Some((dev.identity(), dev.size())), opts)
            .unwrap()
            .begin_session(false)
            .unwrap();
        // The second session leaves blocks 128.. alone, so their folded latest changes are
        // the crashed session's: durable only where its flushes and FUA writes said so.
        let span = if session == 0 { 256 } else { 128 };
        for i in 0..writes / 2 {
            let b = rng.next() % span;
            write_through(&l, &dev, b, &rng.block(BS as usize), i % 97 == 0);
            if i % 50 == 17 {
                flush(&l, &dev);
            }
        }
        if session == 0 {
            // Dropped unclosed, as a crash leaves it: the tail after the last flush is not
            // durable, and the next open replays the journal in full.
            drop(l);
        } else {
            l.close(|| dev.flush()).unwrap();
        }
    }
}

type Histories = BTreeMap<u64, Vec<Event>>;

fn histories(ledger: &Path, access: Access) -> Histories {
    let l = Ledger::open(ledger, None, OpenOptions::new(access)).unwrap();
    let all: HashSet<u64> = (0..256).collect();
    let h = history::collect(&l, &all, &HashSet::new()).unwrap();
    h.events.into_iter().collect()
}

/// What compaction through `through` must leave of a history: each block's events after the
/// fold point, preceded by its latest one at or before it.
fn cut(full: &Histories, through: u64) -> Histories {
    full.iter()
        .map(|(&b, evs)| {
            let keep = evs.iter().rposition(|e| e.lsn <= through).unwrap_or(0);
            (b, evs[keep..].to_vec())
        })
        .collect()
}

/// Every step of a compaction interrupted by a crash, and the finished one: a reader and the
/// next writer see exactly the history they should, and verification is unchanged.
#[test]
fn compaction_cut_at_each_step_keeps_the_history_exact() {
    let s = Scratch::new(BS * 256);
    small_segment_ledger(&s, 6000);
    let before = s.dir.path().join("before");
    copy_dir(&s.ledger, &before);
    let full = histories(&s.ledger, Access::Read);
    let segs_before = std::fs::read_dir(s.ledger.join("journal")).unwrap().count();
    assert!(segs_before > 20, "{segs_before} segments");

    let l = s.open_writer().unwrap();
    let keep = Retention {
        age: None,
        bytes: Some(40 << 10),
    };
    let c = l
        .compact(keep, lostwrite::clock::now(), true)
        .unwrap()
        .expect("something to fold");
    assert_eq!(
        l.compact(keep, lostwrite::clock::now(), true).unwrap(),
        None
    );
    drop(l);
    let through = c.through_lsn;
    assert!(dir_bytes(&s.ledger.join("journal")) <= (40 << 10) + 2 * 4096 + 4096);
    let want = cut(&full, through);
    // The folded history holds both kinds of latest change: flushed, and lost in the crash.
    let folded_heads: Vec<&Event> = want
        .values()
        .filter_map(|evs| evs.first().filter(|e| e.lsn <= through && e.generation > 0))
        .collect();
    assert!(folded_heads.iter().any(|e| e.durable));
    assert!(folded_heads.iter().any(|e| !e.durable));
    assert_eq!(histories(&s.ledger, Access::Read), want);
    assert!(s.verify().findings.is_empty());
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));

    let folded = std::fs::read(s.ledger.join("compacted")).unwrap();
    let meta_v2 = std::fs::read(s.ledger.join("meta")).unwrap();
    let at = |name: &str| {
        let d = s.dir.path().join(name);
        copy_dir(&before, &d);
        d
    };
    // 1. Crash while writing the new file: a partial temporary file, the old journal whole.
    let d1 = at("cut1");
    std::fs::write(d1.join("compacted.tmp"), &folded[..folded.len() / 2]).unwrap();
    assert_eq!(histories(&d1, Access::Write), full);
    assert!(!d1.join("compacted.tmp").exists());
    // 2. Crash after the format was marked 2, before the file was renamed into place.
    let d2 = at("cut2");
    std::fs::write(d2.join("meta"), &meta_v2).unwrap();
    assert_eq!(histories(&d2, Access::Read), full);
    // 3. Crash after the rename, before the folded segments were deleted: a reader skips them,
    // the next writer deletes them.
    let d3 = at("cut3");
    std::fs::write(d3.join("meta"), &meta_v2).unwrap();
    std::fs::write(d3.join("compacted"), &folded).unwrap();
    assert_eq!(histories(&d3, Access::Read), want);
    assert_eq!(
        std::fs::read_dir(d3.join("journal")).unwrap().count(),
        segs_before
    );
    assert_eq!(histories(&d3, Access::Write), want);
    assert_eq!(
        std::fs::read_dir(d3.join("journal")).unwrap().count(),
        std::fs::read_dir(s.ledger.join("journal")).unwrap().count()
    );
    // 4. Crash midway through deleting them.
    let d4 = at("cut4");
    std::fs::write(d4.join("meta"), &meta_v2).unwrap();
    std::fs::write(d4.join("compacted"), &folded).unwrap();
    std::fs::remove_file(d4.join("journal/000000000001.seg")).unwrap();
    std::fs::remove_file(d4.join("journal/000000000002.seg")).unwrap();
    assert_eq!(histories(&d4, Access::Write), want);

    // Passes capped at three segments' worth of journal: several passes, one history.
    let d5 = at("passes");
    let mut opts = OpenOptions::new(Access::Write);
    opts.fold_pass_bytes = 3 * 4096;
    let l = LedgerWriter::open(&d5, None, opts).unwrap();
    l.seal_segment().unwrap();
    let all = Retention {
        age: Some(Duration::ZERO),
        bytes: None,
    };
    let passes = l.compact_all(all, lostwrite::clock::now()).unwrap();
    drop(l);
    assert!(passes.len() > 3, "{} passes", passes.len());
    assert!(passes[..passes.len() - 1].iter().all(|c| c.more));
    assert!(!passes.last().unwrap().more);
    let last = passes.last().unwrap().through_lsn;
    assert_eq!(histories(&d5, Access::Read), cut(&full, last));

    // A second compaction folds on top of the first.
    let l = s.open_writer().unwrap();
    l.seal_segment().unwrap();
    let c2 = l
        .compact(
            Retention {
                age: Some(Duration::ZERO),
                bytes: None,
            },
            lostwrite::clock::now(),
            true,
        )
        .unwrap()
        .unwrap();
    drop(l);
    assert_eq!(
        histories(&s.ledger, Access::Read),
        cut(&full, c2.through_lsn)
    );
    assert!(s.verify().findings.is_empty());
    // A state table cut short after compaction is rebuilt from the compacted history.
    let st = std::fs::OpenOptions::new()
        .write(true)
        .open(s.ledger.join("state"))
        .unwrap();
    st.set_len(8192).unwrap();
    drop(st);
    let l = s.open(Access::Write).unwrap();
    assert!(l.recovery().state_rebuilt.is_some());
    drop(l);
    assert!(s.verify().findings.is_empty());
}

/// Damage to the compacted history is named with its file and offset, and a verification that
/// needs it fails with exit 2 instead of guessing.
#[test]
fn a_damaged_compacted_history_is_named_and_never_trusted() {
    let s = Scratch::new(BS * 256);
    small_segment_ledger(&s, 2000);
    lw_ok(
        bin()
            .args(["ledger", "compact", "--retain", "0s"])
            .arg(&s.image),
    );
    let p = s.ledger.join("compacted");
    let good = std::fs::read(&p).unwrap();
    // A byte of the entries: `ledger check` names the file.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 40] ^= 0x10;
    std::fs::write(&p, &bad).unwrap();
    let o = bin()
        .args(["ledger", "check"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("compacted") && text.contains("checksum"),
        "{text}"
    );
    // With a reverted block to classify, verify needs the history and refuses it.
    let b = 5;
    let mut other = s.read_block(b, BS as usize);
    other[0] ^= 1;
    s.poke(b, &other);
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("compacted"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Its header: nothing opens the ledger.
    let mut bad = good.clone();
    bad[40] ^= 1;
    std::fs::write(&p, &bad).unwrap();
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("compacted") && err.contains("offset 124"),
        "{err}"
    );
}

/// kill -9 while the service compacts under a write load: the restarted service and `verify`
/// find every acknowledged, flushed write, and the ledger checks sound.
#[test]
fn a_service_killed_while_compacting_under_load_loses_nothing() {
    if !have("fio") {
        return;
    }
    let s = Scratch::new(32 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--retain-bytes", "1M"]);
    let uri = svc.uri();
    let load = std::thread::spawn(move || {
        let mut c = Command::new("fio");
        c.current_dir(std::env::temp_dir())
            .args(["--name=load", "--ioengine=nbd", "--rw=randwrite", "--bs=4k"])
            .args(["--iodepth=16", "--size=32m", "--time_based", "--runtime=30"])
            .args(["--fsync=32", "--verify_state_save=0"])
            .arg(format!("--uri={uri}"))
            .output()
            .unwrap()
    });
    let t = Instant::now();
    while !svc.log_text().contains("retention folded") {
        assert!(t.elapsed() < Duration::from_secs(25), "{}", svc.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Mid-compaction somewhere: folds happen every few hundred milliseconds under this load.
    std::thread::sleep(Duration::from_millis(700));
    svc.kill9();
    let _ = load.join();
    let o = bin()
        .args(["ledger", "check"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    verify_clean(&s.image);
    let svc = Service::start(&s.image, &["--retain-bytes", "1M"]);
    let log = svc.stop();
    assert!(
        log.contains("previous session did not end cleanly"),
        "{log}"
    );
    verify_clean(&s.image);
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
}

/// `--retain 2s`: history older than two seconds is folded while the service runs, even when
/// the journal is nearly idle; what is younger stays record by record.
#[test]
fn retain_by_age_folds_old_history_of_a_quiet_journal() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--retain", "2s"]);
    let w = |b: u64, p: u8| vec![format!("write -P {p} {} 4k", b * BS), "flush".to_string()];
    qemu_io(&svc.uri(), &w(3, 1));
    qemu_io(&svc.uri(), &w(3, 2));
    let t = Instant::now();
    // The compacted history is installed before the segments it folded are deleted.
    let seg1 = s.ledger.join("journal/000000000001.seg");
    while !s.ledger.join("compacted").exists() || seg1.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", svc.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu_io(&svc.uri(), &w(3, 3));
    qemu_io(&svc.uri(), &w(4, 4));
    svc.stop();
    verify_clean(&s.image);
    let out = lw_ok(bin().args(["history"]).arg(&s.image).arg("3"));
    assert!(out.contains("is compacted"), "{out}");
    // Generation 2 was folded as block 3's latest change then; generation 3 is recorded after.
    let gens: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" write "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(gens, ["2", "3"], "{out}");
}

/// `ledger compact` says what it needs and refuses to run beside a service.
#[test]
fn ledger_compact_refuses_without_a_limit_and_while_served() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let o = bin()
        .args(["ledger", "compact"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--retain") && err.contains("--retain-bytes"),
        "{err}"
    );
    let o = bin()
        .args(["ledger", "compact", "--retain-bytes", "lots"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let svc = Service::start(&s.image, &[]);
    let o = bin()
        .args(["ledger", "compact", "--retain", "0s"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("running `lostwrite serve`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    svc.stop();
    let out = lw_ok(
        bin()
            .args(["ledger", "compact", "--retain", "30d"])
            .arg(&s.image),
    );
    assert!(out.contains("nothing to fold"), "{out}");
}

/// Retention set per export in a `serve --config` file (as a string and as a number of bytes)
/// reaches each export's ledger.
#[test]
fn retention_in_a_config_file_applies_per_export() {
    if !have("fio") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs: Vec<std::path::PathBuf> = ["a.img", "b.img"].iter().map(|n| d.join(n)).collect();
    for (i, img) in imgs.iter().enumerate() {
        random_image(img, 8 << 20, 70 + i as u64);
        lw_ok(bin().args(["init", "--baseline"]).arg(img));
    }
    let sock = d.join("host.sock");
    let cfg = d.join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = {sock:?}\n\n\
             [[export]]\nname = \"a\"\ndevice = {:?}\nretain_bytes = \"1M\"\n\n\
             [[export]]\nname = \"b\"\ndevice = {:?}\nretain_bytes = 1048576\nretain = \"1h\"\n",
            imgs[0], imgs[1]
        ),
    )
    .unwrap();
    let svc = Service::start_config(&cfg, &sock);
    for name in ["a", "b"] {
        fio(
            &format!("nbd+unix:///{name}?socket={}", sock.display()),
            &[
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--size=8m",
                "--io_size=400m",
                "--fsync=256",
            ],
        );
    }
    let log = svc.stop();
    for img in &imgs {
        let ledger = img.with_extension("img.ledger");
        assert!(ledger.join("compacted").exists(), "{log}");
        let journal = dir_bytes(&ledger.join("journal"));
        assert!(journal <= 3 << 20, "{}: {journal} bytes", ledger.display());
        verify_clean(img);
    }
    assert!(
        log.contains("export \"b\": retaining 1h and at most 1048576 bytes"),
        "{log}"
    );
}
