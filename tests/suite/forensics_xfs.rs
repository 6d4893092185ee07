//! Forensics on XFS and on filesystems lostwrite only recognises: `report --files` on a real
//! XFS behind the sidecar, with file data, a directory and metadata reverted behind the
//! ledger's back, checked against the blocks actually reverted (from `xfs_bmap -v` and the
//! superblock); a partitioned disk with XFS, swap and btrfs side by side; and XFS inside an NBD
//! export.

use crate::ext4::{write_tree, Stack};
use crate::helpers::*;
use crate::service::{can_mount, have, run, Service};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Copies `blocks` back from `snapshot` into `image` where they differ; returns those reverted.
pub(crate) fn revert(image: &Path, snapshot: &Path, args: &[&str]) -> Vec<u64> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/inject-lost-writes.py");
    let out = run(Command::new("python3")
        .arg(tool)
        .arg(image)
        .arg(snapshot)
        .args(args));
    out.lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// `report --files --json` with `extra` arguments, exiting 1 (there are lost writes).
pub(crate) fn report_json(image: &Path, extra: &[&str]) -> Value {
    let o = bin()
        .args(["report", "--files", "--json"])
        .args(extra)
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
}

/// The 4 KiB disk blocks of a mounted file or directory, by byte offset in it, from
/// `xfs_bmap -v` (512-byte units; the filesystem starts at the disk's start).
pub(crate) fn bmap(path: &Path) -> BTreeMap<u64, u64> {
    let out = run(Command::new("xfs_bmap").arg("-v").arg(path));
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 3 || !w[0].ends_with(':') || w[2] == "hole" || !w[1].starts_with('[') {
            continue;
        }
        let range = |s: &str| -> (u64, u64) {
            let s = s.trim_matches(|c| c == '[' || c == ']' || c == ':');
            let (a, b) = s.split_once("..").unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        };
        let (f0, f1) = range(w[1]);
        let (d0, _) = range(w[2]);
        for s in (f0..=f1).step_by(8) {
            map.insert(s * 512, (d0 + (s - f0)) * 512 / 4096);
        }
    }
    map
}

/// A superblock field, as `xfs_db` prints it.
fn sb_field(image: &Path, name: &str) -> u64 {
    let out = run(Command::new("xfs_db")
        .args(["-r", "-f", "-c", "sb 0", "-c"])
        .arg(format!("print {name}"))
        .arg(image));
    out.split('=').nth(1).unwrap().trim().parse().unwrap()
}

/// The linear blocks of the internal log.
fn log_blocks(image: &Path) -> std::ops::Range<u64> {
    let (start, len) = (sb_field(image, "logstart"), sb_field(image, "logblocks"));
    let (agblocks, agblklog) = (sb_field(image, "agblocks"), sb_field(image, "agblklog"));
    let first = (start >> agblklog) * agblocks + (start & ((1 << agblklog) - 1));
    first..first + len
}

/// The first block of file `name` (as xfs_db names it) in the XFS image `fs`, found by
/// xfs_db on the filesystem's own image; the file's first extent must hold 6 blocks.
fn first_block(fs: &Path, name: &str) -> u64 {
    let names = run(Command::new("xfs_db")
        .args(["-r", "-f", "-c", "blockget -n", "-c", "ncheck"])
        .arg(fs));
    let ino = names
        .lines()
        .find(|l| l.ends_with(name))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let bm = run(Command::new("xfs_db")
        .args(["-r", "-f", "-c"])
        .arg(format!("inode {ino}"))
        .args(["-c", "bmap"])
        .arg(fs));
    let w: Vec<&str> = bm.split_whitespace().collect();
    assert_eq!((w[0], w[2]), ("data", "0"), "{bm}");
    assert!(w[7].parse::<u64>().unwrap() >= 6, "{bm}");
    let fsb: u64 = w[4].parse().unwrap();
    let (agblocks, agblklog) = (sb_field(fs, "agblocks"), sb_field(fs, "agblklog"));
    (fsb >> agblklog) * agblocks + (fsb & ((1 << agblklog) - 1))
}

/// An XFS image of `len` bytes made by mkfs.xfs from a prototype file: /app/target.fs holds
/// 100,000 bytes.
fn xfs_with_target(dir: &Path, len: u64) -> std::path::PathBuf {
    let staged = dir.join("target.fs");
    std::fs::write(&staged, Rng(3).block(100_000)).unwrap();
    let proto = dir.join("proto");
    std::fs::write(
        &proto,
        format!(
            "boot\n0 0\nd--755 0 0\napp d--755 0 0\ntarget.fs ---644 0 0 {}\n$\n$\n",
            staged.display()
        ),
    )
    .unwrap();
    let fs = dir.join("xfs.img");
    std::fs::File::create(&fs).unwrap().set_len(len).unwrap();
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-p"])
        .arg(&proto)
        .arg(&fs));
    fs
}

/// Each finding's block with its owners (owner, path, bytes).
fn owners(v: &Value) -> BTreeMap<u64, Vec<(String, String, Value)>> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let files = f["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["owner"].as_str().unwrap().to_string(),
                        r["path"].as_str().unwrap_or("").to_string(),
                        r["bytes"].clone(),
                    )
                })
                .collect();
            (f["block"].as_u64().unwrap(), files)
        })
        .collect()
}

#[test]
fn report_maps_reverted_xfs_blocks_to_files_directories_and_metadata() {
    if !can_mount()
        || !have("nbdfuse")
        || !have("nbdkit")
        || !have("mkfs.xfs")
        || !have("xfs_db")
        || !have("xfs_bmap")
        || !have("python3")
    {
        return;
    }
    // Phase 1 (session 1): mkfs.xfs and files, through the sidecar; /app large enough to be
    // a directory with its own blocks.
    let s = Scratch::new(320 << 20);
    s.init(4096, true);
    let mnt = s.dir.path().join("mnt");
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(st.dev()));
    st.mount(&mnt);
    std::fs::create_dir_all(mnt.join("app")).unwrap();
    for i in 1..=3 {
        std::fs::write(mnt.join(format!("app/data{i}.fs")), Rng(i).block(200_000)).unwrap();
    }
    for i in 0..80 {
        std::fs::write(mnt.join(format!("app/log-{i:03}.txt")), format!("{i}\n")).unwrap();
    }
    write_tree(&mnt.join("home"), 5, 10);
    st.umount();
    st.detach();
    svc.stop();
    let snap = s.dir.path().join("snapshot.img");
    std::fs::copy(&s.image, &snap).unwrap();

    // Phase 2 (session 2): 64 KiB of /app/data3.fs rewritten in place, new entries in /app.
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    st.mount(&mnt);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("app/data3.fs"))
            .unwrap();
        f.write_all_at(&Rng(77).block(65536), 8192).unwrap();
        f.sync_all().unwrap();
    }
    for i in 1..=40 {
        std::fs::write(
            mnt.join(format!("app/new{i}.txt")),
            format!("created in phase 2: {i}\n"),
        )
        .unwrap();
    }
    let data3 = bmap(&mnt.join("app/data3.fs"));
    let app_dir: BTreeSet<u64> = bmap(&mnt.join("app")).into_values().collect();
    assert!(!app_dir.is_empty(), "/app has directory blocks");
    st.umount();
    st.detach();
    svc.stop();

    // Only file data reverted: xfs_repair sees nothing, the report names the file and range.
    let rewritten: Vec<String> = (8192..73728)
        .step_by(4096)
        .map(|o| data3[&o].to_string())
        .collect();
    let copy = s.dir.path().join("data-only.img");
    std::fs::copy(&s.image, &copy).unwrap();
    let reverted = revert(&copy, &snap, &["--blocks", &rewritten.join(",")]);
    assert_eq!(reverted.len(), 16, "64 KiB of data3.fs: {reverted:?}");
    if have("xfs_repair") {
        let o = Command::new("xfs_repair")
            .args(["-n", "-f"])
            .arg(&copy)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "xfs_repair -n passes: data only");
    }
    let ledger = s.ledger.to_str().unwrap();
    let v = report_json(&copy, &["--device-moved", "--ledger", ledger]);
    assert_eq!(
        v["partitions"][1][0]["filesystem"], "xfs",
        "{}",
        v["partitions"]
    );
    let a = v["affected"].as_array().unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0]["owner"].as_str(), a[0]["path"].as_str()),
        (Some("file"), Some("/app/data3.fs"))
    );
    assert_eq!(a[0]["bytes"], serde_json::json!([[8192, 73728]]));
    assert!(
        a[0]["symptom"]
            .as_str()
            .unwrap()
            .contains("reads OLD contents"),
        "{a:?}"
    );

    // Everything phase 2 wrote reverted: data, directory, inodes, AG headers, btrees, log.
    let (a, b) = (
        std::fs::read(&s.image).unwrap(),
        std::fs::read(&snap).unwrap(),
    );
    let changed: Vec<String> = (0..a.len() / 4096)
        .filter(|i| a[i * 4096..(i + 1) * 4096] != b[i * 4096..(i + 1) * 4096])
        .map(|i| i.to_string())
        .collect();
    drop((a, b));
    let reverted: BTreeSet<u64> = revert(&s.image, &snap, &["--blocks", &changed.join(",")])
        .into_iter()
        .collect();
    let v = report_json(&s.image, &[]);
    let by_block = owners(&v);
    assert_eq!(
        by_block.keys().copied().collect::<BTreeSet<_>>(),
        reverted,
        "verify finds exactly the reverted blocks"
    );
    let log = log_blocks(&s.image);
    let data3_blocks: BTreeMap<u64, u64> = data3.iter().map(|(&o, &b)| (b, o)).collect();
    let mut kinds = BTreeSet::new();
    for (b, files) in &by_block {
        assert_eq!(files.len(), 1, "block {b}: {files:?}");
        let (owner, path, bytes) = &files[0];
        kinds.insert(owner.clone());
        if let Some(off) = data3_blocks.get(b) {
            assert_eq!(
                (owner.as_str(), path.as_str()),
                ("file", "/app/data3.fs"),
                "block {b}"
            );
            assert_eq!(bytes, &serde_json::json!([off, off + 4096]), "block {b}");
        } else if app_dir.contains(b) {
            assert_eq!(
                (owner.as_str(), path.as_str()),
                ("directory", "/app"),
                "block {b}"
            );
        } else if log.contains(b) {
            assert_eq!(owner, "log", "block {b}");
        } else {
            // The new files' data went with their inodes and entries: no other file is named.
            assert!(
                [
                    "ag-header",
                    "inode-chunk",
                    "inode-btree",
                    "free-space-btree",
                    "refcount-btree",
                    "reserved",
                    "free"
                ]
                .contains(&owner.as_str()),
                "block {b}: {files:?}"
            );
        }
    }
    for want in ["file", "directory", "log", "ag-header", "inode-chunk"] {
        assert!(kinds.contains(want), "{want} in {kinds:?}");
    }
    let symptoms: Vec<&str> = v["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["symptom"].as_str().unwrap())
        .collect();
    for want in [
        "the XFS log",
        "xfs_repair",
        "these files may revert their size",
        "/app: entries added or removed here may be lost",
    ] {
        assert!(
            symptoms.iter().any(|s| s.contains(want)),
            "{want}: {symptoms:#?}"
        );
    }
}

/// A GPT disk: swap in partition 1, XFS (made from a prototype file, holding /app/target.fs)
/// in partition 2, a btrfs superblock magic in partition 3.
#[test]
fn partitions_name_xfs_files_and_the_filesystems_lostwrite_only_recognises() {
    if !have("sfdisk") || !have("mkfs.xfs") || !have("xfs_db") || !have("mkswap") {
        return;
    }
    if !can_mount() || !have("nbdfuse") || !have("nbdkit") {
        return;
    }
    let (p1, p2, p3) = (
        (2048u64, 16384u64),
        (20480u64, 634880u64),
        (655360u64, 16384u64),
    );
    let s = Scratch::new((p3.0 + p3.1 + 2048) * 512);
    let script = format!(
        "label: gpt\nstart={}, size={}\nstart={}, size={}\nstart={}, size={}\n",
        p1.0, p1.1, p2.0, p2.1, p3.0, p3.1
    );
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&s.image)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let fs = xfs_with_target(s.dir.path(), p2.1 * 512);
    let swap = s.dir.path().join("swap.img");
    std::fs::File::create(&swap)
        .unwrap()
        .set_len(p1.1 * 512)
        .unwrap();
    run(Command::new("mkswap").arg(&swap));
    {
        use std::os::unix::fs::FileExt;
        let img = std::fs::OpenOptions::new()
            .write(true)
            .open(&s.image)
            .unwrap();
        img.write_all_at(&std::fs::read(&swap).unwrap(), p1.0 * 512)
            .unwrap();
        img.write_all_at(&std::fs::read(&fs).unwrap(), p2.0 * 512)
            .unwrap();
        img.write_all_at(b"_BHRfS_M", p3.0 * 512 + 0x10040).unwrap();
    }
    s.init(4096, true);
    let target = (p2.0 * 512) / 4096 + first_block(&fs, "app/target.fs") + 5;
    s.poke(target, &Rng(9).block(4096));
    let in_swap = (p1.0 * 512) / 4096 + 100;
    s.poke(in_swap, &Rng(10).block(4096));
    let in_btrfs = (p3.0 * 512) / 4096 + 100;
    s.poke(in_btrfs, &Rng(11).block(4096));

    let v = report_json(&s.image, &[]);
    let regions: Vec<&str> = v["partitions"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["filesystem"].as_str().unwrap())
        .collect();
    assert_eq!(
        regions,
        ["swap (not supported)", "xfs", "btrfs (not supported)"],
        "{}",
        v["partitions"]
    );
    let by_block = owners(&v);
    assert_eq!(
        by_block[&target],
        [(
            "file".to_string(),
            "/app/target.fs".to_string(),
            serde_json::json!([20480, 24576])
        )]
    );
    for b in [in_swap, in_btrfs] {
        assert_eq!(by_block[&b][0].0, "unknown-filesystem");
    }
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for want in [
        "partition 1 holds swap: lostwrite cannot map its blocks to files",
        "partition 3 holds btrfs: lostwrite cannot map its blocks to files",
        "btrfs scrub",
    ] {
        assert!(notes.iter().any(|n| n.contains(want)), "{want}: {notes:#?}");
    }
}

/// A child process stopped (SIGTERM, by its PID) when the test ends, even when it fails.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// `report --files` on an NBD export holding XFS: xfs_db reads it through the copy-on-write
/// view over nbdkit's nbd plugin, the damaged block is named by its file, and the view is
/// gone afterwards.
#[test]
fn report_names_xfs_files_inside_an_export() {
    if !can_mount() || !have("nbdkit") || !have("nbdfuse") || !have("mkfs.xfs") || !have("xfs_db") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fs = xfs_with_target(d, 300 << 20);
    let target = first_block(&fs, "app/target.fs") + 5;
    let sock = d.join("up.sock");
    let _up = Stopped(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&sock)
            .arg("file")
            .arg(&fs)
            .spawn()
            .unwrap(),
    );
    let t = std::time::Instant::now();
    while !sock.exists() && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let ledger = d.join("led");
    let ledger = ledger.to_str().unwrap();
    lw_ok(
        bin()
            .args(["init", "--baseline", "--ledger", ledger])
            .arg(&uri),
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&fs).unwrap();
        f.write_all_at(&Rng(9).block(4096), target * 4096).unwrap();
    }
    // The views are made under this test's own TMPDIR, so a view another test has mounted at
    // the same moment cannot be mistaken for one this report left behind.
    let views = d.join("views");
    std::fs::create_dir(&views).unwrap();
    let o = bin()
        .env("TMPDIR", &views)
        .args(["report", "--files", "--json", "--ledger", ledger])
        .arg(&uri)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        owners(&v)[&target],
        [(
            "file".to_string(),
            "/app/target.fs".to_string(),
            serde_json::json!([20480, 24576])
        )],
        "{v}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let views = views.to_str().unwrap();
    assert!(!mounts.contains(views), "{mounts}");
    assert_eq!(
        std::fs::read_dir(views).unwrap().count(),
        0,
        "the report left a view directory behind"
    );
}
