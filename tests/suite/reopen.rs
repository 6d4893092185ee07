//! Reopening after a crash from the state table's running checkpoint: `serve` is killed with
//! SIGKILL under write load, and the next open replays only the journal after the checkpoint,
//! with the same state a replay of the whole journal gives (`ledger check` compares the two).
//! A checkpoint that cannot be trusted — a flipped byte in the header or in a sealed page, a
//! host that restarted since, a version-1 table that has none — falls back to a replay of the
//! whole journal and says so. Layout of the header: docs/FORMAT.md ("state").

use crate::helpers::*;
use crate::service::Service;
use lostwrite::nbd::client::Client;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BS: usize = 4096;
/// Entries per page of the state table: blocks 0..512 are page 0, 512..1024 page 1.
const PER_PAGE: u64 = 512;

/// The state table's header fields a test looks at.
struct Header {
    version: u32,
    checkpoint_lsn: u64,
    flags: u32,
}

fn header(ledger: &Path) -> Header {
    let b = std::fs::read(ledger.join("state")).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    Header {
        version: u32_at(8),
        checkpoint_lsn: u64::from_le_bytes(b[40..48].try_into().unwrap()),
        flags: u32_at(72),
    }
}

/// Rewrites the header page with `edit` applied to its bytes (the first `len`, CRC excluded) and
/// a valid CRC of the result at `len`; the rest of the page is zero.
fn rewrite_header(ledger: &Path, len: usize, edit: impl FnOnce(&mut Vec<u8>)) {
    use std::os::unix::fs::FileExt;
    let path = ledger.join("state");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut page = vec![0u8; 4096];
    f.read_exact_at(&mut page, 0).unwrap();
    let mut h = page[..96].to_vec();
    edit(&mut h);
    h.truncate(len);
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.resize(4096, 0);
    f.write_all_at(&h, 0).unwrap();
    f.sync_all().unwrap();
}

/// What a host restart does to a crashed writer's running checkpoint: the boot id it names is
/// no longer the host's (the page cache it vouched for is gone). A simulated power cut (journal
/// bytes lost that the table may reflect) must call this: without a restart no crash loses
/// appended journal bytes. Nothing changes in a header without a running checkpoint.
pub fn simulate_reboot(ledger: &Path) {
    if header(ledger).flags & 4 == 0 {
        return;
    }
    rewrite_header(ledger, 92, |h| h[76..92].copy_from_slice(&[0x5a; 16]));
}

/// Writes 4 KiB blocks in `blocks` through the service with a FLUSH every 8 writes until `stop`.
fn load(socket: PathBuf, blocks: std::ops::Range<u64>, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(blocks.start + 7);
    let mut c = Client::connect_unix(&socket, "").unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let b = blocks.start + rng.next() % (blocks.end - blocks.start);
        if c.write(b * BS as u64, &rng.block(BS), false).is_err() {
            break;
        }
        n += 1;
        if n % 8 == 0 && c.flush().is_err() {
            break;
        }
    }
    n
}

/// Serves `s`, writes blocks `before` until the service has taken a running checkpoint past its
/// session's start, then blocks `after` for a while, and kills it with SIGKILL mid-load.
/// Returns the checkpoint LSN the table's header holds after the crash.
fn crash_after_checkpoint(
    s: &Scratch,
    before: std::ops::Range<u64>,
    after: std::ops::Range<u64>,
) -> u64 {
    let svc = Service::start(&s.image, &[]);
    let start = header(&s.ledger).checkpoint_lsn;
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (sock, stop) = (svc.socket.clone(), stop.clone());
        std::thread::spawn(move || load(sock, before, stop))
    };
    // A running checkpoint is due every few seconds while records come.
    wait_for("a running checkpoint past the session's start", || {
        header(&s.ledger).checkpoint_lsn > start + 100
    });
    stop.store(true, Ordering::Relaxed);
    assert!(w.join().unwrap() > 0);
    let ckpt = header(&s.ledger).checkpoint_lsn;
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (sock, stop) = (svc.socket.clone(), stop.clone());
        std::thread::spawn(move || load(sock, after, stop))
    };
    // Writes after a checkpoint that follows every write above, still under way when the
    // service dies.
    wait_for("a running checkpoint after the first writes", || {
        header(&s.ledger).checkpoint_lsn > ckpt
    });
    std::thread::sleep(Duration::from_millis(300));
    svc.kill9();
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let h = header(&s.ledger);
    assert_eq!(h.flags & 1, 0, "the crashed writer's table is not clean");
    assert!(h.checkpoint_lsn > ckpt);
    h.checkpoint_lsn
}

/// The `replayed N records from LSN X` line of a log: (N, X).
fn replayed(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("replayed") && l.contains("records from LSN"))
        .unwrap_or_else(|| panic!("no replay line in the log:\n{log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = |w: &str| words.iter().position(|x| *x == w).unwrap();
    let n = words[at("replayed") + 1].parse().unwrap();
    let from = words[at("LSN") + 1].parse().unwrap();
    (n, from)
}

fn check_sound(s: &Scratch) -> String {
    let out = bin()
        .args(["ledger", "check", "--ledger"])
        .arg(&s.ledger)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("match a replay of the journal"),
        "ledger check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn verify_json(image: &Path, ledger: &Path) -> serde_json::Value {
    let out = bin()
        .args(["verify", "--json", "--ledger"])
        .arg(ledger)
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        String::from_utf8_lossy(&out.stdout).replace(&ledger.display().to_string(), "LEDGER");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // When it ran differs between two runs whatever the ledger says.
    v.as_object_mut().unwrap().remove("time");
    v
}

fn history(image: &Path, ledger: &Path, blocks: &[u64]) -> String {
    let mut cmd = bin();
    cmd.args(["history", "--ledger"]).arg(ledger).arg(image);
    for b in blocks {
        cmd.arg(b.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace(&ledger.display().to_string(), "LEDGER")
}

#[test]
fn a_crash_replays_only_the_journal_after_the_running_checkpoint() {
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    let ckpt = crash_after_checkpoint(&s, 0..2 * PER_PAGE, 0..2 * PER_PAGE);
    // A copy whose checkpoint is not trusted (as after a host restart): the whole journal.
    let full = s.dir.path().join("full.ledger");
    copy_dir(&s.ledger, &full);
    simulate_reboot(&full);
    // The crashed ledger as `ledger check` reads it: the tail replayed onto the table matches a
    // replay of the whole journal, entry by entry.
    let text = check_sound(&s);
    assert!(text.contains("running checkpoint"), "{text}");
    // Readers get the same answers from the tail as from the whole journal.
    assert_eq!(
        verify_json(&s.image, &s.ledger),
        verify_json(&s.image, &full)
    );
    let blocks = [0, 1, 5, 300, 511, 512, 700, 1023];
    assert_eq!(
        history(&s.image, &s.ledger, &blocks),
        history(&s.image, &full, &blocks)
    );
    // The writer replays only the tail, and says from where.
    let svc = Service::start(&s.image, &[]);
    let log = svc.stop();
    let (n, from) = replayed(&log);
    assert_eq!(from, ckpt + 1, "{log}");
    assert!(n > 0, "{log}");
    assert!(
        log.contains("the running checkpoint of the crashed writer"),
        "{log}"
    );
    check_sound(&s);
    verify_clean(&s.image);
    // The copy, opened by a writer, is rebuilt whole and ends up with the same table.
    let svc = Service::start(&s.image, &["--ledger", full.to_str().unwrap()]);
    let log = svc.stop();
    let (n_full, from_full) = replayed(&log);
    assert_eq!(from_full, 1, "{log}");
    assert!(n_full > n, "{log}");
    assert!(log.contains("the host has restarted since"), "{log}");
}

#[test]
fn a_flipped_byte_in_the_checkpoint_or_a_sealed_page_falls_back_to_a_full_replay() {
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, false);
    // Page 1 (blocks 512..1024) is written before the checkpoint only; the tail after it
    // changes page 0 alone.
    crash_after_checkpoint(&s, PER_PAGE..2 * PER_PAGE, 0..PER_PAGE);
    let keep = s.dir.path().join("crashed.ledger");
    copy_dir(&s.ledger, &keep);

    // A flipped bit in the checkpoint LSN: the header fails its checksum.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(s.ledger.join("state"))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 41).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], 41).unwrap();
    }
    let svc = Service::start(&s.image, &[]);
    let log = svc.stop();
    assert_eq!(replayed(&log).1, 1, "{log}");
    assert!(log.contains("state header checksum mismatch"), "{log}");
    check_sound(&s);
    verify_clean(&s.image);

    // A flipped bit in an entry of page 1, sealed by the checkpoint and not changed after it.
    std::fs::remove_dir_all(&s.ledger).unwrap();
    copy_dir(&keep, &s.ledger);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(s.ledger.join("state"))
            .unwrap();
        // Header page, one page of check values, then the entries: block 600's.
        let off = 4096 + 4096 + 600 * 8;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], off).unwrap();
    }
    let svc = Service::start(&s.image, &[]);
    let log = svc.stop();
    assert_eq!(replayed(&log).1, 1, "{log}");
    assert!(
        log.contains("page 1 (blocks 512..1024) fails its check"),
        "{log}"
    );
    check_sound(&s);
    verify_clean(&s.image);
}

#[test]
fn a_version_1_state_table_is_read_and_a_crashed_one_is_rebuilt_whole() {
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    crash_after_checkpoint(&s, 0..2 * PER_PAGE, 0..2 * PER_PAGE);
    // The header as version 1 wrote it: no boot id, no RUNNING flag, its CRC at 76.
    rewrite_header(&s.ledger, 76, |h| {
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        let flags = u32::from_le_bytes(h[72..76].try_into().unwrap()) & 3;
        h[72..76].copy_from_slice(&flags.to_le_bytes());
    });
    assert_eq!(header(&s.ledger).version, 1);
    check_sound(&s);
    let svc = Service::start(&s.image, &[]);
    let log = svc.stop();
    assert_eq!(replayed(&log).1, 1, "{log}");
    assert!(log.contains("left no running checkpoint"), "{log}");
    verify_clean(&s.image);
    // The writer wrote the table anew in version 2; a clean version-1 table reads as it is.
    assert_eq!(header(&s.ledger).version, 2);
    rewrite_header(&s.ledger, 76, |h| {
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
    });
    assert_eq!(header(&s.ledger).flags & 1, 1, "closed cleanly");
    check_sound(&s);
    verify_clean(&s.image);
    let svc = Service::start(&s.image, &[]);
    let log = svc.stop();
    assert_eq!(replayed(&log).0, 0, "{log}");
}
