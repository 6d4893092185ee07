//! The fleet report: `report` over several disks, through the real binary. Three ext4 disks
//! served and written, lost writes injected into two of them at different times: one incident
//! window across them, the hit disks ranked, the clean one said clean, each disk's files, the
//! same from saved `verify --json` files, and one lane per disk in the picture. A disk that
//! cannot be read is named, the others still reported, and the exit status is 2.

use crate::forensics::{inject, two_phases_on_ext4, write_times};
use crate::helpers::*;
use crate::service::{can_mount, have};
use lostwrite::device::BlockDevice;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const BS: usize = 4096;

/// A report command line's output: exit status, stdout, stderr.
fn report(args: &[&str]) -> (Option<i32>, String, String) {
    let o = bin().arg("report").args(args).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(out: &str, err: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The per-disk (device, rank, status) of a fleet JSON, in its order.
fn ranking(v: &Value) -> Vec<(String, Option<u64>, String)> {
    v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_string(),
                d["rank"].as_u64(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The (owner, path) of a per-disk report's affected entries, and its findings' blocks.
fn files_and_blocks(disk: &Value) -> (BTreeSet<(String, String)>, BTreeSet<u64>) {
    let r = &disk["report"];
    let files = r["affected"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| {
                    (
                        a["owner"].as_str().unwrap().to_string(),
                        a["path"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let blocks = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["block"].as_u64().unwrap())
        .collect();
    (files, blocks)
}

#[test]
fn one_report_over_three_disks_gives_one_window_ranks_the_hit_disks_and_names_their_files() {
    if !can_mount()
        || !have("nbdfuse")
        || !have("mkfs.ext4")
        || !have("debugfs")
        || !have("python3")
    {
        return;
    }
    // Made one after another, so that each disk's second session is later than the last's.
    let (a, snap_a) = two_phases_on_ext4();
    let (b, snap_b) = two_phases_on_ext4();
    let (c, _snap_c) = two_phases_on_ext4();
    let lost_a: BTreeSet<u64> = inject(&a.image, &snap_a, &["--fs-path", "/app/data3.fs"])
        .into_iter()
        .collect();
    let lost_b: BTreeSet<u64> = inject(
        &b.image,
        &snap_b,
        &["--fs-path", "/app/data3.fs", "--fs-path", "/app"],
    )
    .into_iter()
    .collect();
    assert_eq!((lost_a.len(), lost_b.len()), (16, 17));
    let times_a = write_times(&a.image, &lost_a, 2);
    let times_b = write_times(&b.image, &lost_b, 2);
    assert!(times_a.last().unwrap() < times_b.first().unwrap());
    // The ranking the ledgers call for: more lost durable writes first, then more blocks;
    // the order given (a before b) among equals.
    let (da, db, dc) = (path(&a.image), path(&b.image), path(&c.image));
    let mut hit = [
        (da, times_a.len(), lost_a.len()),
        (db, times_b.len(), lost_b.len()),
    ];
    hit.sort_by_key(|&(_, w, n)| std::cmp::Reverse((w, n)));
    let want: Vec<(String, Option<u64>, String)> = vec![
        (hit[0].0.into(), Some(1), "damaged".into()),
        (hit[1].0.into(), Some(2), "damaged".into()),
        (dc.into(), Some(3), "clean".into()),
    ];

    // From the ledgers, the clean disk given first.
    let svg = a.dir.path().join("fleet.svg");
    let (code, out, err) = report(&["--files", "--json", "--plot", path(&svg), dc, da, db]);
    assert_eq!(code, Some(1), "{err}");
    let v = json(&out, &err);
    assert_eq!(ranking(&v), want, "{out}");
    let w = &v["incident_window"];
    assert_eq!(w["start"].as_str().unwrap(), times_a.first().unwrap());
    assert_eq!(w["end"].as_str().unwrap(), times_b.last().unwrap());
    assert_eq!(
        w["lost_durable_writes"].as_u64().unwrap() as usize,
        times_a.len() + times_b.len()
    );
    assert_eq!(w["blocks"].as_u64().unwrap() as usize, 33);
    assert_eq!(w["disks"], 2);
    assert_eq!(
        (&v["disks_damaged"], &v["disks_clean"], &v["disks_not_read"]),
        (&Value::from(2), &Value::from(1), &Value::from(0))
    );
    let disk = |d: &str| {
        v["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["device"] == d)
            .unwrap()
            .clone()
    };
    let file = |o: &str, p: &str| (o.to_string(), p.to_string());
    let (files, blocks) = files_and_blocks(&disk(da));
    assert_eq!(files, BTreeSet::from([file("file", "/app/data3.fs")]));
    assert_eq!(blocks, lost_a);
    let (files, blocks) = files_and_blocks(&disk(db));
    assert_eq!(
        files,
        BTreeSet::from([file("file", "/app/data3.fs"), file("directory", "/app")])
    );
    assert_eq!(blocks, lost_b);
    let (files, blocks) = files_and_blocks(&disk(dc));
    assert!(files.is_empty() && blocks.is_empty(), "{out}");
    assert_eq!(disk(da)["files_hit"], 1);
    assert_eq!(disk(db)["files_hit"], 2);
    // Each disk's own report is the one `report DEVICE` gives.
    assert_eq!(
        disk(da)["lost_durable_writes"].as_u64().unwrap() as usize,
        times_a.len()
    );
    assert_eq!(
        disk(db)["report"]["incident_window"]["end"],
        times_b.last().unwrap().as_str()
    );

    // The picture: one lane per disk, in rank order, the lost writes in the hit disks' lanes.
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    let lanes: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("g") && n.attribute("class") == Some("lane"))
        .collect();
    let devices: Vec<&str> = lanes
        .iter()
        .map(|n| n.attribute("data-device").unwrap())
        .collect();
    assert_eq!(devices, [hit[0].0, hit[1].0, dc]);
    let marks = |n: &roxmltree::Node| {
        n.descendants()
            .filter(|m| m.has_tag_name("circle") && m.attribute("class") == Some("lost"))
            .count()
    };
    let lost_of = |d: &str| {
        if d == da {
            times_a.len()
        } else {
            times_b.len()
        }
    };
    assert_eq!(marks(&lanes[0]), lost_of(hit[0].0));
    assert_eq!(marks(&lanes[1]), lost_of(hit[1].0));
    assert_eq!(marks(&lanes[2]), 0);
    assert_eq!(lanes[2].attribute("data-status"), Some("clean"));

    // The human form says the same.
    let (code, human, err) = report(&["--files", dc, da, db]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        human.contains(&format!(
            "written between\n  {}  and  {}",
            times_a.first().unwrap(),
            times_b.last().unwrap()
        )),
        "{human}"
    );
    assert!(human.contains(&format!("\n  1. {}: ", hit[0].0)), "{human}");
    assert!(human.contains(&format!("\n  2. {}: ", hit[1].0)), "{human}");
    assert!(
        human.contains(&format!("\n  3. {dc}: clean: checked, nothing lost")),
        "{human}"
    );
    assert!(
        human.contains("[whole disk] /app/data3.fs: 16 blocks reverted"),
        "{human}"
    );
    assert!(
        human.contains("[whole disk] /app/ (directory): 1 block reverted"),
        "{human}"
    );

    // From saved `verify --json` files, which name their disks: the same report.
    let mut saved = Vec::new();
    for (d, want_code) in [(dc, 0), (da, 1), (db, 1)] {
        let o = bin().args(["verify", "--json", d]).output().unwrap();
        assert_eq!(o.status.code(), Some(want_code));
        let f = a.dir.path().join(format!("findings-{}.json", saved.len()));
        std::fs::write(&f, &o.stdout).unwrap();
        saved.push(f);
    }
    let mut args = vec!["--files", "--json"];
    for f in &saved {
        args.extend(["--findings", path(f)]);
    }
    let (code, out, err) = report(&args);
    assert_eq!(code, Some(1), "{err}");
    let s = json(&out, &err);
    assert_eq!(ranking(&s), want, "{out}");
    assert_eq!(s["incident_window"], v["incident_window"]);
    for d in [da, db, dc] {
        let of = |x: &Value| {
            files_and_blocks(
                x["disks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["device"] == d)
                    .unwrap(),
            )
        };
        assert_eq!(of(&s), of(&v), "{d}");
    }
}

/// A 1 MiB baselined disk; when `lose`, a durable write to block 3 is then reverted underneath.
fn small_disk(lose: bool) -> Scratch {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    if lose {
        let old = s.read_block(3, BS);
        let (l, dev) = s.writer(false);
        write_through(&l, &dev, 3, &Rng(3).block(BS), false);
        flush(&l, &dev);
        l.close(|| dev.flush()).unwrap();
        s.poke(3, &old);
    }
    s
}

#[test]
fn a_disk_that_cannot_be_read_is_named_and_the_others_still_reported() {
    let (hit, clean, other) = (small_disk(true), small_disk(false), small_disk(false));
    let (dh, dc, d2) = (path(&hit.image), path(&clean.image), path(&other.image));
    let missing = clean.dir.path().join("gone.img");
    let dm = path(&missing);
    let (code, out, err) = report(&[dm, dc, dh]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.contains("3 disks: 1 damaged, 1 clean, 1 NOT READ"),
        "{out}"
    );
    assert!(
        out.contains(&format!("\n  1. {dh}: 1 durable write lost")),
        "{out}"
    );
    assert!(
        out.contains(&format!("\n  2. {dc}: clean: checked, nothing lost")),
        "{out}"
    );
    assert!(out.contains(&format!("\n  NOT READ {dm}: ")), "{out}");
    assert!(err.contains(dm), "{err}");

    // In JSON too, and an unreadable findings file is named the same way.
    let bad = clean.dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let (code, out, err) = report(&["--json", dc, dh, "--findings", path(&bad)]);
    assert_eq!(code, Some(2), "{err}");
    let v = json(&out, &err);
    let not_read = &v["disks"][2];
    assert_eq!(not_read["device"], path(&bad));
    assert_eq!(not_read["status"], "not-read");
    assert!(not_read.get("rank").is_none() && not_read.get("report").is_none());
    assert!(
        not_read["trouble"]
            .as_str()
            .unwrap()
            .contains("not the JSON"),
        "{out}"
    );
    assert!(err.contains(path(&bad)), "{err}");

    // Without trouble: 1 when a disk lost writes, 0 when none did.
    assert_eq!(report(&[dc, dh]).0, Some(1));
    let (code, out, _) = report(&[dc, d2]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 disks: 0 damaged, 2 clean"), "{out}");
    assert!(
        out.contains("no durable write was lost on any disk"),
        "{out}"
    );
    // --ledger names one disk's ledger only.
    let (code, _, err) = report(&["--ledger", path(&clean.ledger), dc, d2]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--ledger names one disk's ledger"), "{err}");
}
