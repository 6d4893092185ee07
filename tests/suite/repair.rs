//! `lostwrite repair`: lost writes given back from another copy of the disk. Each test builds an
//! incident the way verify's own tests do (writes recorded through the ledger, then blocks put
//! back underneath it), keeps a copy of the image taken after the writes as the backup, and runs
//! the real binary: the plan writes nothing, `--apply` gives the bytes back and verify passes, a
//! copy holding another generation is refused for that block, an NBD export serves as a source,
//! a device held by `serve` is refused, and a repair killed midway is finished by running it
//! again.

use crate::helpers::{bin, flush, write_through, Rng, Scratch};
use crate::service::{have, Service};
use lostwrite::device::BlockDevice;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BS: usize = 4096;

/// An incident on an 8 MiB image: `orig.img` before any write, `mid.img` after the first
/// phase (blocks 10-19 at generation 1), `backup.img` after the second (blocks 10-13 at
/// generation 2, block 30 written with zeroes). Then blocks 10-13 read generation 1 again
/// (from mid), block 15 its baseline, block 16 zeroes, block 30 garbage: four kinds of damage.
struct Incident {
    s: Scratch,
    orig: PathBuf,
    mid: PathBuf,
    backup: PathBuf,
}

const DAMAGED: [u64; 7] = [10, 11, 12, 13, 15, 16, 30];

impl Incident {
    fn new() -> Incident {
        let s = Scratch::new(8 << 20);
        s.init(BS as u32, true);
        let dir = s.dir.path().to_path_buf();
        let (orig, mid, backup) = (
            dir.join("orig.img"),
            dir.join("mid.img"),
            dir.join("backup.img"),
        );
        std::fs::copy(&s.image, &orig).unwrap();
        let mut rng = Rng(0xfeed);
        let (l, dev) = s.writer(false);
        let mut phase1 = vec![0u8; 10 * BS];
        rng.fill(&mut phase1);
        write_through(&l, &dev, 10, &phase1, false);
        flush(&l, &dev);
        std::fs::copy(&s.image, &mid).unwrap();
        let mut phase2 = vec![0u8; 4 * BS];
        rng.fill(&mut phase2);
        write_through(&l, &dev, 10, &phase2, false);
        write_through(&l, &dev, 30, &[0u8; BS], false);
        flush(&l, &dev);
        l.close(|| dev.flush()).unwrap();
        drop(dev);
        std::fs::copy(&s.image, &backup).unwrap();
        let inc = Incident {
            s,
            orig,
            mid,
            backup,
        };
        for b in 10..14 {
            inc.s.poke(b, &block_of(&inc.mid, b));
        }
        inc.s.poke(15, &block_of(&inc.orig, 15));
        inc.s.poke(16, &[0u8; BS]);
        inc.s.poke(30, &rng.block(BS));
        inc
    }

    fn image(&self) -> &Path {
        &self.s.image
    }
}

fn block_of(image: &Path, b: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BS];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, b * BS as u64)
        .unwrap();
    buf
}

fn lw(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn verify_code(image: &Path) -> Option<i32> {
    lw(&["verify", image.to_str().unwrap()]).status.code()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// The `ledger dump` lines that are repairs.
fn repairs(image: &Path) -> Vec<String> {
    let o = lw(&["ledger", "dump", image.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("repair of block"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_plan_writes_nothing_and_apply_gives_the_backup_bytes_back() {
    let inc = Incident::new();
    let img = inc.image().to_str().unwrap();
    let from = inc.backup.to_str().unwrap();
    let before = std::fs::read(inc.image()).unwrap();
    let o = lw(&["repair", img, "--from", from, "--json"]);
    assert_eq!(o.status.code(), Some(1), "blocks still fail: {}", text(&o));
    let plan = json(&o);
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["failing"], 7, "{plan}");
    assert_eq!(plan["repairable"], 7, "{plan}");
    let runs: Vec<(u64, u64)> = plan["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["first"].as_u64().unwrap(), r["last"].as_u64().unwrap()))
        .collect();
    assert_eq!(runs, vec![(10, 13), (15, 16), (30, 30)]);
    let kinds: Vec<&str> = plan["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"reverted") && kinds.contains(&"zeroed"),
        "{kinds:?}"
    );
    let planned: Vec<u64> = plan["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["block"].as_u64().unwrap())
        .collect();
    assert_eq!(planned, DAMAGED);
    assert_eq!(
        std::fs::read(inc.image()).unwrap(),
        before,
        "the plan wrote the device"
    );
    assert!(repairs(inc.image()).is_empty(), "the plan recorded repairs");

    let o = lw(&["repair", img, "--from", from, "--apply"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("applied: wrote 7 of 7"), "{out}");
    assert!(out.contains("OK: every tracked block"), "{out}");
    assert_eq!(verify_code(inc.image()), Some(0));
    assert!(
        std::fs::read(inc.image()).unwrap() == std::fs::read(&inc.backup).unwrap(),
        "the repaired image differs from the backup"
    );
    let r = repairs(inc.image());
    assert_eq!(r.len(), 7, "{r:?}");
    assert!(r[0].contains("repair of block 10: gen 2"), "{r:?}");
    let h = lw(&["history", img, "10"]);
    assert!(
        text(&h).contains("repaired: gen 2"),
        "history shows no repair: {}",
        text(&h)
    );
    let c = lw(&["ledger", "check", img]);
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
    // Nothing fails any more: a second repair has nothing to do and says so with 0.
    let o = lw(&["repair", img, "--from", from, "--apply"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(repairs(inc.image()).len(), 7);
}

#[test]
fn a_source_holding_another_generation_is_refused_for_that_block() {
    let inc = Incident::new();
    let img = inc.image().to_str().unwrap();
    let mid = inc.mid.to_str().unwrap();
    let o = lw(&["repair", img, "--from", mid]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("block 10 (reverted, expected gen 2")
            && out.contains("source 1 holds generation 1 of 2"),
        "{out}"
    );
    assert!(
        out.contains("block 30 (corrupt, expected gen 1") && out.contains("generation 0 of 1"),
        "{out}"
    );
    let o = lw(&["repair", img, "--from", mid, "--apply", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "blocks 10-13 and 30 remain: {}",
        text(&o)
    );
    let v = json(&o);
    assert_eq!(v["written"], 2, "{v}");
    let left: Vec<u64> = v["verify"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["block"].as_u64().unwrap())
        .collect();
    assert_eq!(left, vec![10, 11, 12, 13, 30]);
    for b in 10..14 {
        assert_eq!(
            block_of(inc.image(), b),
            block_of(&inc.mid, b),
            "refused block {b} was written"
        );
    }
    assert_eq!(block_of(inc.image(), 15), block_of(&inc.backup, 15));
    assert_eq!(verify_code(inc.image()), Some(1));
    // With the backup after it, the rest comes from there: sources are tried in order.
    let back = inc.backup.to_str().unwrap();
    let o = lw(&["repair", img, "--from", mid, "--from", back, "--json"]);
    let v = json(&o);
    let b10 = &v["blocks"][0];
    assert_eq!(
        (b10["block"].as_u64(), b10["source"].as_u64()),
        (Some(10), Some(2))
    );
    assert_eq!(b10["refused"][0]["holds_generation"], 1, "{v}");
    let o = lw(&["repair", img, "--from", mid, "--from", back, "--apply"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(verify_code(inc.image()), Some(0));
}

/// nbdkit serving `image` read-only on `socket`, stopped by PID when dropped.
struct Export(std::process::Child);

impl Export {
    fn start(image: &Path, socket: &Path) -> Export {
        let child = Command::new("nbdkit")
            .args(["-r", "-f", "-U"])
            .arg(socket)
            .arg("file")
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "nbdkit did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Export(child)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

#[test]
fn repair_from_an_nbd_export_of_the_backup() {
    if !have("nbdkit") {
        return;
    }
    let inc = Incident::new();
    let socket = inc.s.dir.path().join("backup.sock");
    let _export = Export::start(&inc.backup, &socket);
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let img = inc.image().to_str().unwrap();
    let o = lw(&["repair", img, "--from", &uri, "--apply", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["sources"][0]["read"], "nbd", "{v}");
    assert_eq!(v["written"], 7, "{v}");
    assert_eq!(verify_code(inc.image()), Some(0));
    assert!(std::fs::read(inc.image()).unwrap() == std::fs::read(&inc.backup).unwrap());
}

#[test]
fn a_device_held_by_serve_is_refused_naming_the_server() {
    let inc = Incident::new();
    let before = std::fs::read(inc.image()).unwrap();
    let svc = Service::start(inc.image(), &[]);
    let o = lw(&[
        "repair",
        inc.image().to_str().unwrap(),
        "--from",
        inc.backup.to_str().unwrap(),
        "--apply",
    ]);
    let pid = svc.pid();
    svc.stop();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("process {pid}")) && err.contains("stop it"),
        "{err}"
    );
    assert!(
        err.contains("through a running serve is not supported yet"),
        "{err}"
    );
    assert!(
        std::fs::read(inc.image()).unwrap() == before,
        "a held device was written"
    );
}

/// A repair of 4096 scattered blocks (sixteen batches, each written, synced and recorded) is
/// killed once its first repair record is in the journal, or wherever it is when it ends: the
/// ledger stays sound, and running the repair again finishes it.
#[test]
fn a_repair_killed_midway_is_finished_by_running_it_again() {
    let s = Scratch::new(64 << 20);
    s.init(BS as u32, true);
    let dir = s.dir.path().to_path_buf();
    let orig = dir.join("orig.img");
    let backup = dir.join("backup.img");
    std::fs::copy(&s.image, &orig).unwrap();
    let blocks: Vec<u64> = (0..4096).map(|i| 1024 + 2 * i).collect();
    {
        let (l, dev) = s.writer(false);
        let mut rng = Rng(0xbeef);
        for &b in &blocks {
            write_through(&l, &dev, b, &rng.block(BS), false);
        }
        flush(&l, &dev);
        l.close(|| dev.flush()).unwrap();
    }
    std::fs::copy(&s.image, &backup).unwrap();
    {
        let o = std::fs::File::open(&orig).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&s.image)
            .unwrap();
        let mut buf = vec![0u8; BS];
        for &b in &blocks {
            o.read_exact_at(&mut buf, b * BS as u64).unwrap();
            f.write_all_at(&buf, b * BS as u64).unwrap();
        }
    }
    assert_eq!(verify_code(&s.image), Some(1));
    let seg = crate::helpers::last_segment(&s.ledger);
    let journal_len = || std::fs::metadata(&seg).map(|m| m.len()).unwrap_or(0);
    let start_len = journal_len();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lostwrite"))
        .arg("repair")
        .arg(&s.image)
        .arg("--from")
        .arg(&backup)
        .arg("--apply")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while journal_len() == start_len && t.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let finished = child.try_wait().unwrap().is_some();
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
    eprintln!(
        "repair {} before the kill; {} repairs recorded",
        if finished { "had ended" } else { "was running" },
        repairs(&s.image).len()
    );
    let img = s.image.to_str().unwrap();
    let c = lw(&["ledger", "check", img]);
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
    let v = verify_code(&s.image);
    assert!(
        matches!(v, Some(0) | Some(1)),
        "verify after the kill: {v:?}"
    );
    let o = lw(&["repair", img, "--from", backup.to_str().unwrap(), "--apply"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(verify_code(&s.image), Some(0));
    let c = lw(&["ledger", "check", img]);
    assert_eq!(c.status.code(), Some(0), "{}", text(&c));
    assert!(std::fs::read(&s.image).unwrap() == std::fs::read(&backup).unwrap());
}

/// `--files`: the plan names the file whose bytes come back, with the byte range within it, on
/// an ext4 image whose file data lost a durable rewrite of 16 KiB in its middle.
#[test]
fn the_plan_names_the_byte_ranges_of_a_file_that_come_back() {
    if !have("mkfs.ext4") || !have("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root/app");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("data.bin"), Rng(0x51).block(16 * BS)).unwrap();
    let img = dir.path().join("disk.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(dir.path().join("root"))
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let o = lw(&["init", img.to_str().unwrap(), "--baseline"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = Command::new("debugfs")
        .args(["-c", "-R", "blocks /app/data.bin"])
        .arg(&img)
        .output()
        .unwrap();
    let blocks: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|b| b.parse().unwrap())
        .collect();
    assert_eq!(blocks.len(), 16, "{out:?}");
    let orig = dir.path().join("orig.img");
    std::fs::copy(&img, &orig).unwrap();
    {
        let dev = lostwrite::device::FileDevice::open(&img, true).unwrap();
        let l = lostwrite::ledger::LedgerWriter::open(
            &dir.path().join("disk.img.ledger"),
            Some((dev.identity(), dev.size())),
            lostwrite::ledger::OpenOptions::new(lostwrite::ledger::Access::Write),
        )
        .unwrap()
        .begin_session(false)
        .unwrap();
        let mut rng = Rng(0x52);
        for &b in &blocks[4..8] {
            write_through(&l, &dev, b, &rng.block(BS), false);
        }
        flush(&l, &dev);
        l.close(|| dev.flush()).unwrap();
    }
    let backup = dir.path().join("backup.img");
    std::fs::copy(&img, &backup).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for &b in &blocks[4..8] {
        f.write_all_at(&block_of(&orig, b), b * BS as u64).unwrap();
    }
    drop(f);
    let o = lw(&[
        "repair",
        img.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
        "--files",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = json(&o);
    let files = v["files"].as_array().unwrap();
    let data = files
        .iter()
        .find(|f| f["path"] == "/app/data.bin")
        .unwrap_or_else(|| panic!("no /app/data.bin in {v}"));
    assert_eq!(data["owner"], "file");
    assert_eq!(data["back"], serde_json::json!([[16384, 32768]]), "{v}");
    assert_eq!(data["blocks_back"], 4);
    let o = lw(&[
        "repair",
        img.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
        "--files",
    ]);
    assert!(
        text(&o).contains("file /app/data.bin: bytes 16384-32767 come back"),
        "{}",
        text(&o)
    );
}

#[test]
fn repair_from_what_serve_kept_needs_no_other_copy() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--keep-data", "64M"]);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 40960 16384",
            "-c",
            "flush",
        ])
        .arg(svc.uri())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    svc.stop();
    let written = std::fs::read(&s.image).unwrap();
    // The four blocks read their baseline (zeroes) again: lost durable writes.
    for b in 10..14 {
        s.poke(b, &[0u8; BS]);
    }
    let img = s.image.to_str().unwrap();
    let o = lw(&["repair", img, "--no-kept-data", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        json(&o)["repairable"],
        0,
        "without the kept data there is no source"
    );
    let o = lw(&["repair", img, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the plan writes nothing: {}",
        text(&o)
    );
    let plan = json(&o);
    assert_eq!(plan["failing"], 4, "{plan}");
    assert_eq!(plan["repairable"], 4, "{plan}");
    let label = plan["sources"][0]["name"].as_str().unwrap_or_default();
    assert!(label.starts_with("kept data"), "{plan}");
    let o = lw(&["repair", img, "--apply"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(verify_code(&s.image), Some(0));
    assert!(
        std::fs::read(&s.image).unwrap() == written,
        "the written bytes are back"
    );
    assert_eq!(repairs(&s.image).len(), 4);
}
