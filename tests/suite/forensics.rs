//! Forensics: `report --files` on a real ext4 behind the sidecar (with e2fsck beside it),
//! partitioned images (GPT and MBR), the incident window against the ledger's own record times,
//! the timeline SVG, and the demo.

use crate::ext4::{write_tree, Stack};
use crate::helpers::*;
use crate::service::{can_mount, have, run, Service};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn inject(image: &Path, snapshot: &Path, args: &[&str]) -> Vec<u64> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/inject-lost-writes.py");
    let out = run(Command::new("python3")
        .arg(tool)
        .arg(image)
        .arg(snapshot)
        .args(args));
    out.lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// `report --files --json`, asserting it exits as `verify` would: 1 when a finding fails
/// (in view or not), 0 when none does.
fn report_json(image: &Path, extra: &[&str]) -> Value {
    let o = bin()
        .args(["report", "--files", "--json"])
        .args(extra)
        .arg(image)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    // The same device and ledger, without report's own flags.
    let mut same = Vec::new();
    let mut it = extra.iter();
    while let Some(&a) = it.next() {
        match a {
            "--device-moved" => same.push(a),
            "--ledger" => same.extend([a, it.next().unwrap()]),
            _ => {}
        }
    }
    let verify = bin().arg("verify").args(same).arg(image).output().unwrap();
    assert_eq!(
        o.status.code(),
        verify.status.code(),
        "report exits as verify does: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    v
}

fn affected(v: &Value) -> Vec<(String, String, String)> {
    v["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["owner"].as_str().unwrap().to_string(),
                a["path"].as_str().unwrap_or("").to_string(),
                a["symptom"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Phase 1 in session 1, a snapshot, phase 2 (in-place update of /app/data3.fs and new entries
/// in /app) in session 2: returns the scratch, the snapshot and the ledger dump of session 2.
pub(crate) fn two_phases_on_ext4() -> (Scratch, PathBuf) {
    let s = Scratch::new(64 << 20);
    s.init(4096, true);
    let mnt = s.dir.path().join("mnt");
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .arg(st.dev()));
    st.mount(&mnt);
    std::fs::create_dir_all(mnt.join("app")).unwrap();
    for i in 1..=3 {
        std::fs::write(mnt.join(format!("app/data{i}.fs")), Rng(i).block(200_000)).unwrap();
    }
    write_tree(&mnt.join("home"), 5, 10);
    st.umount();
    st.detach();
    svc.stop();
    let snap = s.dir.path().join("snapshot.img");
    std::fs::copy(&s.image, &snap).unwrap();
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
    for i in 1..=3 {
        std::fs::write(
            mnt.join(format!("app/new{i}.txt")),
            format!("created in phase 2: {i}\n"),
        )
        .unwrap();
    }
    st.umount();
    st.detach();
    svc.stop();
    (s, snap)
}

fn e2fsck(image: &Path) -> (i32, String) {
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn report_names_the_reverted_file_and_directory_where_e2fsck_sees_little() {
    if !can_mount()
        || !have("nbdfuse")
        || !have("mkfs.ext4")
        || !have("debugfs")
        || !have("python3")
    {
        return;
    }
    let (s, snap) = two_phases_on_ext4();
    // Only file data reverted: e2fsck passes, which is why this tool exists.
    let copy = s.dir.path().join("data-only.img");
    std::fs::copy(&s.image, &copy).unwrap();
    let reverted = inject(&copy, &snap, &["--fs-path", "/app/data3.fs"]);
    assert_eq!(reverted.len(), 16, "64 KiB of data3.fs: {reverted:?}");
    let (code, _) = e2fsck(&copy);
    assert_eq!(code, 0, "e2fsck passes when only file data reverted");
    let ledger = s.ledger.to_str().unwrap();
    let v = report_json(&copy, &["--device-moved", "--ledger", ledger]);
    let a = affected(&v);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0].0.as_str(), a[0].1.as_str()),
        ("file", "/app/data3.fs")
    );
    assert!(a[0].2.contains("reads OLD contents"), "{a:?}");
    assert_eq!(
        v["affected"][0]["bytes"],
        serde_json::json!([[8192, 73728]])
    );

    // The directory block too: e2fsck finds orphaned inodes, but not what was lost, or when.
    let reverted = inject(
        &s.image,
        &snap,
        &["--fs-path", "/app/data3.fs", "--fs-path", "/app"],
    );
    assert_eq!(reverted.len(), 17, "{reverted:?}");
    let (code, out) = e2fsck(&s.image);
    assert_ne!(code, 0);
    assert!(out.contains("Unattached inode"), "{out}");
    let v = report_json(&s.image, &[]);
    let a = affected(&v);
    assert!(
        a.iter()
            .any(|(o, p, sym)| o == "file" && p == "/app/data3.fs" && sym.contains("OLD contents")),
        "{a:?}"
    );
    assert!(
        a.iter().any(|(o, p, sym)| o == "directory"
            && p == "/app"
            && sym.contains("entries added or removed here may be lost")),
        "{a:?}"
    );
    // The window is exactly the span of session 2's records of the reverted blocks.
    let blocks: BTreeSet<u64> = reverted.into_iter().collect();
    let dump = lw_ok(bin().args(["ledger", "dump", "--json"]).arg(&s.image));
    let mut session = 0;
    let mut times = Vec::new();
    for line in dump.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        if let Some(open) = r["record"].get("SessionOpen") {
            session = open["session"].as_u64().unwrap();
        }
        if let Some(w) = r["record"].get("Write") {
            if session == 2 && blocks.contains(&w["block"].as_u64().unwrap()) {
                times.push(r["time"].as_str().unwrap().to_string());
            }
        }
    }
    times.sort();
    let w = &v["incident_window"];
    assert_eq!(w["start"].as_str().unwrap(), times.first().unwrap());
    assert_eq!(w["end"].as_str().unwrap(), times.last().unwrap());
    assert_eq!(
        w["lost_durable_writes"].as_u64().unwrap() as usize,
        times.len()
    );
}

/// A disk with two partitions (`label`: "gpt" or "dos"): partition 1 left unformatted, ext4 in
/// partition 2 holding /app/target.fs.
fn partitioned(label: &str) -> (Scratch, u64) {
    let s = Scratch::new(48 << 20);
    let script = format!("label: {label}\nstart=2048, size=16384\nstart=20480, size=73728\n");
    let mut c = Command::new("sfdisk");
    c.arg("-q")
        .arg(&s.image)
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let staging = s.dir.path().join("staging");
    std::fs::create_dir_all(staging.join("app")).unwrap();
    std::fs::write(staging.join("app/target.fs"), Rng(3).block(100_000)).unwrap();
    let start = 20480 * 512;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-E"])
        .arg(format!("offset={start}"))
        .arg("-d")
        .arg(&staging)
        .arg(&s.image)
        .arg(format!("{}k", 73728 / 2)));
    s.init(4096, true);
    (s, start)
}

#[test]
fn partitioned_images_gpt_and_mbr_map_blocks_to_files() {
    if !have("sfdisk") || !have("mkfs.ext4") || !have("debugfs") {
        return;
    }
    for label in ["gpt", "dos"] {
        let (s, start) = partitioned(label);
        let blocks = run(Command::new("debugfs")
            .args(["-c", "-R", "blocks /app/target.fs"])
            .arg(format!("{}?offset={start}", s.image.display())));
        let fsblk: u64 = blocks.split_whitespace().nth(5).unwrap().parse().unwrap();
        let target = (start + fsblk * 4096) / 4096;
        s.poke(target, &Rng(9).block(4096));
        let in_p1 = (2048 * 512) / 4096 + 10;
        s.poke(in_p1, &Rng(10).block(4096));
        let plot = s.dir.path().join("r.svg");
        let v = report_json(&s.image, &["--plot", plot.to_str().unwrap()]);
        assert_eq!(
            v["partitions"][0],
            if label == "gpt" { "gpt" } else { "mbr" }
        );
        let findings = v["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 2, "{label}: {v}");
        let by_block =
            |b: u64| findings.iter().find(|f| f["block"] == b).unwrap()["files"][0].clone();
        let f = by_block(target);
        assert_eq!(
            (
                f["region"].as_str(),
                f["owner"].as_str(),
                f["path"].as_str()
            ),
            (Some("partition 2"), Some("file"), Some("/app/target.fs")),
            "{label}"
        );
        assert_eq!(
            f["bytes"],
            serde_json::json!([20480, 24576]),
            "{label}: the 6th block of the file"
        );
        let f = by_block(in_p1);
        assert_eq!(
            (f["region"].as_str(), f["owner"].as_str()),
            (Some("partition 1"), Some("unknown-filesystem")),
            "{label}"
        );
        assert!(v["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("partition 1 does not hold an ext2/3/4")));
        // history --files says the same of the block.
        let o = lw_ok(
            bin()
                .args(["history", "--files"])
                .arg(&s.image)
                .arg(target.to_string()),
        );
        assert!(
            o.contains("owner [partition 2] file, bytes 20480-24575: data of /app/target.fs"),
            "{o}"
        );
        // The picture: well-formed, one mark per finding, one per lost write.
        let svg = std::fs::read_to_string(&plot).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        let count = |tag: &str, class: &str| {
            doc.descendants()
                .filter(|n| n.has_tag_name(tag) && n.attribute("class") == Some(class))
                .count()
        };
        let lost: usize = findings
            .iter()
            .map(|f| f["lost"].as_array().map_or(0, |l| l.len()))
            .sum();
        assert_eq!(count("line", "finding"), 2);
        assert_eq!(count("circle", "lost"), lost);
        assert!(lost >= 2);
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        // A report from saved findings says the same; a view after the window is empty.
        let saved = s.dir.path().join("findings.json");
        let o = bin()
            .args(["verify", "--json"])
            .arg(&s.image)
            .output()
            .unwrap();
        std::fs::write(&saved, &o.stdout).unwrap();
        let again = report_json(&s.image, &["--findings", saved.to_str().unwrap()]);
        assert_eq!(again["incident_window"], v["incident_window"]);
        assert_eq!(again["affected"], v["affected"]);
        let end = lostwrite::clock::parse(v["incident_window"]["end"].as_str().unwrap()).unwrap();
        let later = lostwrite::clock::rfc3339(end + 1);
        let none = report_json(&s.image, &["--since", &later]);
        assert!(none["incident_window"].is_null(), "{none}");
        assert_eq!(none["findings"].as_array().unwrap().len(), 0);
        assert_eq!(none["outside_view"], 2, "{none}");
        let text = bin()
            .args(["report", "--since", &later])
            .arg(&s.image)
            .output()
            .unwrap();
        assert_eq!(
            text.status.code(),
            Some(1),
            "the device still has lost writes"
        );
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("no durable write was lost in this view")
                && text.contains("2 more findings lie outside this view"),
            "{text}"
        );
        let all = report_json(&s.image, &["--until", &later]);
        assert_eq!(all["findings"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn the_demo_tells_the_whole_story() {
    if !have("mkfs.ext4") || !have("debugfs") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let o = bin()
        .arg("demo")
        .arg("--dir")
        .arg(d.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "through NBD",
        "INCIDENT WINDOW",
        "/app/data3.fs: this part of the file reads OLD contents",
        "/app/ (directory)",
        "inode-table",
        "timeline picture:",
        "verify named exactly the",
        "== 8. lostwrite repair --apply",
        "source 1: kept data",
        "OK: every tracked block holds its latest generation",
        "7 of the 7 files read byte for byte what was written",
        "e2fsck -fn: exit 0 (clean)",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let svg = std::fs::read_to_string(d.path().join("incident.svg")).unwrap();
    roxmltree::Document::parse(&svg).expect("well-formed SVG");
}

/// Session 1 writes /app/grow.db in two halves 2 s apart; after a snapshot, session 2 rewrites
/// those halves, appends 64 KiB (new blocks, and a new size and extent list in its inode), and
/// writes then deletes /app/tmp.bin. Returns the scratch, the snapshot, the blocks tmp.bin had
/// (free now) and the inode table block of grow.db (in ledger blocks).
fn grown_file_on_ext4() -> (Scratch, PathBuf, Vec<u64>, u64) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let s = Scratch::new(64 << 20);
    s.init(4096, true);
    let mnt = s.dir.path().join("mnt");
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .arg(st.dev()));
    st.mount(&mnt);
    std::fs::create_dir_all(mnt.join("app")).unwrap();
    let db = mnt.join("app/grow.db");
    {
        let mut f = std::fs::File::create(&db).unwrap();
        f.write_all(&Rng(1).block(32768)).unwrap();
        f.sync_all().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        f.write_all(&Rng(2).block(32768)).unwrap();
        f.sync_all().unwrap();
    }
    st.umount();
    st.detach();
    svc.stop();
    let snap = s.dir.path().join("snapshot.img");
    std::fs::copy(&s.image, &snap).unwrap();
    let svc = Service::start(&s.image, &[]);
    let mut st = Stack::attach(&svc, s.dir.path());
    st.mount(&mnt);
    {
        let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.write_all_at(&Rng(3).block(65536), 0).unwrap();
        f.write_all_at(&Rng(4).block(65536), 65536).unwrap();
        f.sync_all().unwrap();
    }
    let tmp = mnt.join("app/tmp.bin");
    {
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(&Rng(5).block(65536)).unwrap();
        f.sync_all().unwrap();
    }
    // filefrag -v: "   0:        0..      15:      33024..     33039:     16:  ..."
    let frag = run(Command::new("filefrag").arg("-v").arg(&tmp));
    let mut tmp_blocks = Vec::new();
    for line in frag.lines() {
        let cols: Vec<&str> = line.split(':').map(str::trim).collect();
        if cols.len() >= 4 && cols[0].parse::<u64>().is_ok() {
            let (a, z) = cols[2].split_once("..").unwrap();
            let (a, z): (u64, u64) = (a.trim().parse().unwrap(), z.trim().parse().unwrap());
            tmp_blocks.extend(a..=z);
        }
    }
    assert_eq!(tmp_blocks.len(), 16, "{frag}");
    std::fs::remove_file(&tmp).unwrap();
    st.umount();
    st.detach();
    svc.stop();
    // "Inode 12 is part of block group 0\n\tlocated at block 1058, offset 0x0b00"
    let imap = run(Command::new("debugfs")
        .args(["-c", "-R", "imap /app/grow.db"])
        .arg(&s.image));
    let itable: u64 = imap
        .split("located at block ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("{imap}"));
    (s, snap, tmp_blocks, itable)
}

/// The session-1 write times of `blocks`, from the ledger dump.
pub(crate) fn write_times(image: &Path, blocks: &BTreeSet<u64>, in_session: u64) -> Vec<String> {
    let dump = lw_ok(bin().args(["ledger", "dump", "--json"]).arg(image));
    let mut session = 0;
    let mut times = Vec::new();
    for line in dump.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        if let Some(open) = r["record"].get("SessionOpen") {
            session = open["session"].as_u64().unwrap();
        }
        if let Some(w) = r["record"].get("Write") {
            if session == in_session && blocks.contains(&w["block"].as_u64().unwrap()) {
                times.push(r["time"].as_str().unwrap().to_string());
            }
        }
    }
    times.sort();
    times
}

#[test]
fn free_blocks_are_not_harmless_when_the_metadata_that_listed_them_reverted_too() {
    if !can_mount() || !have("nbdfuse") || !have("mkfs.ext4") || !have("debugfs") {
        return;
    }
    if !have("filefrag") || !have("python3") {
        return;
    }
    let (s, snap, tmp_blocks, itable) = grown_file_on_ext4();
    let ledger = s.ledger.to_str().unwrap();

    // Control: only the deleted file's blocks revert; the metadata is intact, so they are free
    // now; the group's bitmap was written when the file was deleted, so they are not proven
    // free at every generation and not called harmless.
    let copy = s.dir.path().join("free-only.img");
    std::fs::copy(&s.image, &copy).unwrap();
    let list: Vec<String> = tmp_blocks.iter().map(u64::to_string).collect();
    let reverted = inject(&copy, &snap, &["--blocks", &list.join(",")]);
    assert_eq!(reverted, tmp_blocks);
    let v = report_json(&copy, &["--device-moved", "--ledger", ledger]);
    let a = affected(&v);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].0, "free");
    assert!(
        a[0].2.starts_with("free now; not proven harmless") && !a[0].2.contains(": harmless"),
        "{a:?}"
    );
    assert!(v["affected"][0].get("free_proven").is_none(), "{v}");
    assert!(v["affected"][0].get("maybe_data_of").is_none(), "{v}");

    // The file's blocks and its inode table block revert: the inode lists the old 64 KiB, the
    // 16 appended blocks are free by it, but may be its data.
    let reverted = inject(
        &s.image,
        &snap,
        &["--fs-path", "/app/grow.db", "--blocks", &itable.to_string()],
    );
    assert!(reverted.contains(&itable), "{reverted:?}");
    assert_eq!(reverted.len(), 33, "{reverted:?}");
    let v = report_json(&s.image, &[]);
    let a = affected(&v);
    assert!(
        a.iter().any(|(o, p, _)| o == "file" && p == "/app/grow.db"),
        "{a:?}"
    );
    assert!(a.iter().any(|(o, _, _)| o == "inode-table"), "{a:?}");
    let free: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["files"].as_array().unwrap())
        .filter(|r| r["owner"] == "free")
        .collect();
    assert_eq!(free.len(), 16, "the appended blocks: {v}");
    for r in free {
        let sym = r["symptom"].as_str().unwrap();
        assert!(
            !sym.contains("harmless,") && sym.contains("not harmless"),
            "{sym}"
        );
        assert!(
            sym.contains("free by the current, possibly reverted, metadata")
                && sym.contains("/app/grow.db"),
            "{sym}"
        );
        let of = r["maybe_data_of"].as_array().unwrap();
        assert!(
            of.iter().any(|w| w
                .as_str()
                .unwrap()
                .starts_with("the inode table block of inodes")),
            "{r}"
        );
    }
    let human = lw_ok_or_fail(&s.image);
    assert!(!human.contains("owned by no file now: harmless"), "{human}");

    // The blocks that still belong to the file read contents written 2 s apart in session 1:
    // the range covers both writes, and the lost writes are session 2's.
    let file = v["affected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["owner"] == "file")
        .unwrap();
    let data: BTreeSet<u64> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["owner"] == "file")
        })
        .map(|f| f["block"].as_u64().unwrap())
        .collect();
    assert_eq!(data.len(), 16);
    let old = write_times(&s.image, &data, 1);
    let written = &file["contents_written"];
    assert_eq!(written[0].as_str().unwrap(), old.first().unwrap(), "{file}");
    assert_eq!(written[1].as_str().unwrap(), old.last().unwrap(), "{file}");
    let t = |v: &Value| lostwrite::clock::parse(v.as_str().unwrap()).unwrap();
    assert!(t(&written[1]) - t(&written[0]) >= 2_000_000, "{file}");
    let new = write_times(&s.image, &data, 2);
    assert_eq!(
        file["lost_between"][0].as_str().unwrap(),
        new.first().unwrap()
    );
    assert_eq!(
        file["lost_between"][1].as_str().unwrap(),
        new.last().unwrap()
    );
    let sym = file["symptom"].as_str().unwrap();
    assert!(
        sym.contains(&format!(
            "reads OLD contents (as written between {} and {})",
            old.first().unwrap(),
            old.last().unwrap()
        )),
        "{sym}"
    );
    assert!(
        human.contains(&format!(
            "reads contents written from {} to {}",
            old.first().unwrap(),
            old.last().unwrap()
        )),
        "{human}"
    );
}

/// `report --files` in human form (it exits 1: the device has lost writes).
fn lw_ok_or_fail(image: &Path) -> String {
    let o = bin()
        .args(["report", "--files"])
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
