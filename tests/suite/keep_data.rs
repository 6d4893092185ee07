//! `serve --keep-data`: the data log beside the ledger. Through the real binary: the kept bytes
//! of a block are what a client wrote (whole, partial and older generations); the window drops
//! old entries; a flipped byte in an entry is named by `ledger check` and never returned; a
//! torn tail left after kill -9 under fio is cut by the next writer, and verify and
//! `ledger check` are clean.

use crate::helpers::*;
use crate::service::{have, run, Service};
use lostwrite::nbd::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BS: usize = 4096;

/// The data log's segment files, in order.
fn segments(ledger: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ledger.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    v.sort();
    v
}

/// Walks a segment's entries as docs/FORMAT.md lays them out: (offset, block, codec, length).
fn entries(seg: &Path) -> Vec<(u64, u64, u8, u64)> {
    let b = std::fs::read(seg).unwrap();
    let mut at = 64usize;
    let mut out = Vec::new();
    while at + 88 <= b.len() && &b[at..at + 4] == b"LWKD" {
        let stored = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let block = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
        out.push((at as u64, block, b[at + 52], (88 + stored) as u64));
        at += 88 + stored;
    }
    out
}

/// `ledger export-block`: (exit status, bytes on stdout, stderr).
fn export(image: &Path, block: u64, generation: Option<u32>) -> (i32, Vec<u8>, String) {
    let mut c = bin();
    c.args(["ledger", "export-block", "--block", &block.to_string()])
        .arg(image);
    if let Some(g) = generation {
        c.args(["--generation", &g.to_string()]);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn kept_bytes_are_what_qemu_io_wrote_whole_partial_and_older_generations() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(4 << 20);
    let before = std::fs::read(&s.image).unwrap();
    let svc = Service::start(&s.image, &["--keep-data", "64M"]);
    run(Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", "write -P 0x11 0 8k"])
        .args(["-c", "write -P 0x22 4096 4k"])
        .args(["-c", "write -P 0x33 10000 100"])
        .args(["-c", "flush"])
        .arg(svc.uri()));
    svc.stop();
    let image = std::fs::read(&s.image).unwrap();
    // Block 0 and block 1's latest generation, whole writes.
    let (st, b0, err) = export(&s.image, 0, None);
    assert_eq!(st, 0, "{err}");
    assert_eq!(b0, vec![0x11; BS]);
    let (st, b1, err) = export(&s.image, 1, None);
    assert_eq!(st, 0, "{err}");
    assert_eq!(b1, vec![0x22; BS]);
    // Block 1's first generation is kept too.
    let (st, old, err) = export(&s.image, 1, Some(1));
    assert_eq!(st, 0, "{err}");
    assert_eq!(old, vec![0x11; BS]);
    // Block 2 got 100 bytes: kept whole, merged with what the device held.
    let (st, b2, err) = export(&s.image, 2, None);
    assert_eq!(st, 0, "{err}");
    let mut want = before[2 * BS..3 * BS].to_vec();
    want[10000 - 2 * BS..10000 - 2 * BS + 100].fill(0x33);
    assert_eq!(b2, want);
    assert_eq!(b2, image[2 * BS..3 * BS]);
    // A block never written has nothing kept; a generation never written is refused.
    assert_eq!(export(&s.image, 7, None).0, 1);
    let (st, out, err) = export(&s.image, 1, Some(9));
    assert_eq!((st, out.len()), (1, 0), "{err}");
    let check = lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
    assert!(
        check.contains("4 entries verified"),
        "ledger check should count the data log's entries: {check}"
    );
    // The pattern compresses: the data log is far smaller than what it keeps.
    let seg = &segments(&s.ledger)[0];
    assert!(entries(seg).iter().filter(|e| e.2 == 1).count() >= 3);
}

#[test]
fn the_keep_data_window_drops_old_entries_by_size_and_by_age() {
    let s = Scratch::new(16 << 20);
    // By size: 2M keeps about 2 MiB of data log (1 MiB segments); 8 MiB of random blocks go in.
    let svc = Service::start(&s.image, &["--keep-data", "2M"]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let mut rng = Rng(7);
    let mut last = Vec::new();
    for b in 0..2048u64 {
        last = rng.block(BS);
        c.write(b * BS as u64, &last, false).unwrap();
    }
    c.flush().unwrap();
    let data = s.ledger.join("data");
    wait_for("retention to bound the data log", || {
        dir_bytes(&data) <= 3 << 20
    });
    c.disconnect().unwrap();
    svc.stop();
    assert!(
        segments(&s.ledger)[0] != data.join("000000000001.dat"),
        "the first segment was not deleted"
    );
    let (st, _, err) = export(&s.image, 0, None);
    assert_eq!(st, 1, "block 0 is older than the window: {err}");
    let (st, bytes, err) = export(&s.image, 2047, None);
    assert_eq!(st, 0, "{err}");
    assert_eq!(bytes, last);
    lw_ok(bin().args(["ledger", "check"]).arg(&s.image));

    // By age: a block written now is kept, and gone once it is older than the window.
    let svc = Service::start(&s.image, &["--keep-data", "2s"]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let young = rng.block(BS);
    c.write(5 * BS as u64, &young, false).unwrap();
    c.flush().unwrap();
    let (st, bytes, err) = export(&s.image, 5, None);
    assert_eq!((st, bytes), (0, young), "{err}");
    wait_for("the age window to drop block 5's entry", || {
        export(&s.image, 5, None).0 == 1
    });
    c.disconnect().unwrap();
    svc.stop();
    verify_clean(&s.image);
}

#[test]
fn a_flipped_byte_in_an_entry_is_named_by_check_and_never_returned() {
    let s = Scratch::new(4 << 20);
    let svc = Service::start(&s.image, &["--keep-data", "64M"]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let mut rng = Rng(3);
    let blocks: Vec<Vec<u8>> = (0..4).map(|_| rng.block(BS)).collect();
    for (b, data) in blocks.iter().enumerate() {
        c.write((b * BS) as u64, data, false).unwrap();
    }
    c.flush().unwrap();
    c.disconnect().unwrap();
    svc.stop();
    let seg = segments(&s.ledger).pop().unwrap();
    let (offset, block, _, _) = entries(&seg)
        .into_iter()
        .find(|e| e.1 == 1)
        .expect("an entry of block 1");
    assert_eq!(block, 1);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset as usize + 88 + 10] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let o = bin()
        .args(["ledger", "check"])
        .arg(&s.image)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let named = format!("DAMAGED {} at offset {offset}", seg.display());
    assert!(out.contains(&named), "want {named:?} in: {out}");
    let (st, got, err) = export(&s.image, 1, None);
    assert_eq!(
        (st, got.len()),
        (1, 0),
        "a damaged entry was returned: {err}"
    );
    assert!(err.contains("damaged entry"), "{err}");
    // The entries beside it are still found.
    for b in [0u64, 2, 3] {
        let (st, got, err) = export(&s.image, b, None);
        assert_eq!(st, 0, "block {b}: {err}");
        assert_eq!(got, blocks[b as usize]);
    }
    // A writer leaves the damage for the operator and keeps on in a new segment.
    let svc = Service::start(&s.image, &["--keep-data", "64M"]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let again = rng.block(BS);
    c.write(BS as u64, &again, false).unwrap();
    c.flush().unwrap();
    c.disconnect().unwrap();
    let log = svc.stop();
    assert!(log.contains("is damaged at offset"), "{log}");
    assert_eq!(export(&s.image, 1, None).1, again);
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "the damaged segment was changed"
    );
}

#[test]
fn a_torn_tail_after_kill_9_under_fio_is_cut_and_verify_and_check_are_clean() {
    if !have("fio") {
        return;
    }
    let s = Scratch::new(32 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--keep-data", "256M"]);
    let mut fio = Command::new("fio");
    fio.current_dir(std::env::temp_dir())
        .args([
            "--verify_state_save=0",
            "--name=keep",
            "--ioengine=nbd",
            &format!("--uri={}", svc.uri()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--fsync=32",
            "--size=100%",
            "--time_based",
            "--runtime=60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut fio = fio.spawn().unwrap();
    let data = s.ledger.join("data");
    wait_for("fio to write through the data log", || {
        dir_bytes(&data) > 1 << 20
    });
    svc.kill9();
    crate::service::wait_timeout(&mut fio, std::time::Duration::from_secs(30));
    // A crash mid-append: the last entry is cut short.
    let seg = segments(&s.ledger).pop().unwrap();
    let (offset, _, _, len) = *entries(&seg).last().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(offset + len / 2).unwrap();
    drop(f);
    let check = lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
    assert!(
        check.contains(&format!(
            "torn tail in {} at offset {offset}",
            seg.display()
        )),
        "{check}"
    );
    // The next writer cuts it, and everything is clean.
    let svc = Service::start(&s.image, &["--keep-data", "256M"]);
    let log = svc.stop();
    assert!(
        log.contains(&format!(
            "cut a torn tail of {} bytes at offset {offset}",
            len / 2
        )),
        "{log}"
    );
    // Cut there; the clean close then appended only its 88-byte mark.
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), offset + 88);
    verify_clean(&s.image);
    let check = lw_ok(bin().args(["ledger", "check"]).arg(&s.image));
    assert!(!check.contains("torn tail"), "{check}");
    assert!(check.contains("entries verified"), "{check}");
    // What is kept of a block's latest generation is what the device holds.
    let image = std::fs::read(&s.image).unwrap();
    let mut found = 0;
    for b in (0..8192u64).step_by(512) {
        let (st, bytes, err) = export(&s.image, b, None);
        match st {
            0 => {
                found += 1;
                assert_eq!(
                    bytes,
                    image[b as usize * BS..(b as usize + 1) * BS],
                    "block {b}"
                );
            }
            1 => {}
            _ => panic!("block {b}: {err}"),
        }
    }
    eprintln!("{found} of 16 sampled blocks had their latest generation kept");
}
