//! Hostile and broken input: a state table cut short, journal segments out of order, thousands
//! of connections opened and dropped, and a ledger whose filesystem fills up.

use crate::helpers::*;
use crate::service::{can_mount, run, Service};
use lostwrite::ledger::check::check;
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use lostwrite::nbd::client::Client;
use std::io::Write;
use std::process::Command;

const BS: usize = 4096;

fn written(s: &Scratch) -> Vec<u8> {
    let data = Rng(4).block(BS);
    let (l, dev) = s.writer(false);
    write_through(&l, &dev, 7, &data, false);
    l.close(|| lostwrite::device::BlockDevice::flush(&dev))
        .unwrap();
    data
}

#[test]
fn a_short_state_table_is_rebuilt_from_the_journal() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let data = written(&s);
    let state = s.ledger.join("state");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    assert!(!check(&s.ledger).unwrap().problems.is_empty());
    // A reader rebuilds in memory, says so, and is right.
    let l = s.open(Access::Read).unwrap();
    assert!(
        l.recovery()
            .state_rebuilt
            .as_deref()
            .unwrap()
            .contains("short"),
        "{:?}",
        l.recovery()
    );
    assert_eq!(
        l.state(7),
        BlockState::Tracked {
            generation: 1,
            crc: crc(&data)
        }
    );
    drop(l);
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a damaged ledger never verifies clean"
    );
    // A writer replaces the file.
    drop(s.open(Access::Write).unwrap());
    assert_eq!(std::fs::metadata(&state).unwrap().len(), len);
    assert!(check(&s.ledger).unwrap().problems.is_empty());
    assert_eq!(
        bin()
            .arg("verify")
            .arg(&s.image)
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn swapped_or_duplicated_segments_are_damage() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let dev = s.device(false);
    let mut opts = OpenOptions::new(Access::Write);
    opts.segment_bytes = 200;
    let l = LedgerWriter::open(
        &s.ledger,
        Some((dev.identity(), lostwrite::device::BlockDevice::size(&dev))),
        opts,
    )
    .unwrap()
    .begin_session(false)
    .unwrap();
    let dev = s.device(true);
    for b in 0..12 {
        write_through(&l, &dev, b, &Rng(b).block(BS), false);
    }
    l.close(|| lostwrite::device::BlockDevice::flush(&dev))
        .unwrap();
    let j = s.ledger.join("journal");
    for (what, a, b) in [("swapped", 2, 3), ("duplicated", 2, 4)] {
        let copy = tempfile::tempdir().unwrap();
        let ledger = copy.path().join("l");
        copy_dir(&s.ledger, &ledger);
        let seg = |n: u64| ledger.join("journal").join(format!("{n:012}.seg"));
        let (pa, pb) = (
            std::fs::read(seg(a)).unwrap(),
            std::fs::read(seg(b)).unwrap(),
        );
        std::fs::write(seg(b), &pa).unwrap();
        if what == "swapped" {
            std::fs::write(seg(a), &pb).unwrap();
        }
        assert!(!check(&ledger).unwrap().problems.is_empty(), "{what}");
        let e = Ledger::open(&ledger, None, OpenOptions::new(Access::Read))
            .err()
            .expect(what);
        assert!(e.to_string().contains(".seg"), "{what}: {e}");
    }
    drop(j);
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn thousands_of_connections_opened_and_dropped() {
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    let before = threads(svc.pid());
    let mut rng = Rng(21);
    for i in 0..3000 {
        let mut c = std::os::unix::net::UnixStream::connect(&svc.socket).unwrap();
        match i % 4 {
            0 => {}
            1 => {
                let _ = c.write_all(&3u32.to_be_bytes());
            }
            2 => {
                let n = (rng.next() % 64) as usize;
                let _ = c.write_all(&rng.block(n));
            }
            _ => {
                let mut cl = Client::connect_unix(&svc.socket, "").unwrap();
                let mut b = [0u8; 512];
                cl.read(0, &mut b).unwrap();
            }
        }
    }
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    c.write(4096, &Rng(1).block(BS), false).unwrap();
    c.flush().unwrap();
    drop(c);
    // Connection threads go away with their connections.
    let t = std::time::Instant::now();
    // Generous: with the whole suite running on two cores, 3,000 exits can take a while.
    while threads(svc.pid()) > before + 2 && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        threads(svc.pid()) <= before + 2,
        "{} threads, {before} before",
        threads(svc.pid())
    );
    svc.stop();
    verify_clean(&s.image);
}

/// A tmpfs of a given size mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_ledger_filesystem_refuses_writes_with_enospc_and_records_nothing_false() {
    if !can_mount() {
        return;
    }
    let s = Scratch::new(16 << 20);
    let small = s.dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=192k", "tmpfs"])
        .arg(&small));
    let _guard = Tmpfs(small.clone());
    let ledger = small.join("l");
    let o = bin()
        .args(["init", "--baseline", "--ledger"])
        .arg(&ledger)
        .arg(&s.image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svc = Service::start(&s.image, &["--ledger", ledger.to_str().unwrap()]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let mut rng = Rng(8);
    let mut refused = None;
    for i in 0..40_000u64 {
        let b = i % 4096;
        let data = rng.block(BS);
        match c.write(b * BS as u64, &data, false) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                refused = Some((b, data));
                break;
            }
        }
    }
    let (b, data) = refused.expect("the ledger's filesystem never filled");
    // Nothing was written that could not be recorded.
    assert_ne!(s.read_block(b, BS), data);
    let _ = c.flush();
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        svc.log_text().contains("No space left on device"),
        "{}",
        svc.log_text()
    );
    svc.kill9();
    lw_ok(
        bin()
            .arg("verify")
            .arg("--ledger")
            .arg(&ledger)
            .arg(&s.image),
    );
}
