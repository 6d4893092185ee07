//! A ledger that lost a file, or holds bytes nobody we know wrote, says so through every
//! command that reads it; and the ledger's own messages name what is wrong and what to do.

use crate::helpers::*;
use lostwrite::device::BlockDevice;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const BS: u64 = 4096;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(args: &[&str], ledger: &Path, image: Option<&Path>) -> Output {
    let mut c = bin();
    c.args(args);
    if let Some(i) = image {
        c.arg(i);
    }
    c.arg("--ledger").arg(ledger).output().unwrap()
}

/// A baselined ledger with one clean session that rewrote block 3 and flushed.
fn written(s: &Scratch) {
    s.init(BS as u32, true);
    let (l, dev) = s.writer(false);
    write_through(&l, &dev, 3, &Rng(9).block(BS as usize), false);
    flush(&l, &dev);
    l.close(|| dev.flush()).unwrap();
}

/// `verify` exits 2 naming `missing`, `status` exits 2 naming it, `ledger check` fails naming
/// it.
fn all_name(s: &Scratch, missing: &Path) {
    let name = missing.display().to_string();
    let o = run(&["verify"], &s.ledger, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&name), "verify: {}", text(&o));
    let o = run(&["status"], &s.ledger, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&name), "status: {}", text(&o));
    let o = run(&["ledger", "check"], &s.ledger, None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("DAMAGED {name}")),
        "check: {}",
        text(&o)
    );
}

/// A deleted baseline was read as "no baseline": verify passed, and a block reverted to its
/// baseline contents was called zeroed. Now it is damage everyone names.
#[test]
fn a_deleted_baseline_is_damage_that_verify_status_and_check_name() {
    let s = Scratch::new(BS * 64);
    let orig = s.read_block(3, BS as usize);
    written(&s);
    // The storage loses the rewrite of block 3: it holds its baseline contents again.
    s.poke(3, &orig);
    let base = s.ledger.join("baseline");
    std::fs::remove_file(&base).unwrap();
    all_name(&s, &base);
    let o = run(&["verify", "--json"], &s.ledger, Some(&s.image));
    assert!(
        text(&o).contains("restore the ledger directory from a copy"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("zeroed\""), "{}", text(&o));
}

/// A baselined ledger written in 4 KiB segments (300 writes over 64 blocks, flushed) in one
/// clean session.
fn written_in_small_segments(s: &Scratch, seed: u64) {
    s.init(BS as u32, true);
    let dev = s.device(true);
    let mut opts = OpenOptions::new(Access::Write);
    opts.segment_bytes = 4096;
    let l = LedgerWriter::open(&s.ledger, Some((dev.identity(), dev.size())), opts)
        .unwrap()
        .begin_session(false)
        .unwrap();
    let mut rng = Rng(seed);
    for i in 0..300u64 {
        write_through(&l, &dev, i % 64, &rng.block(BS as usize), false);
    }
    flush(&l, &dev);
    l.close(|| dev.flush()).unwrap();
}

/// A ledger written in 4 KiB segments over two sessions and compacted by `ledger compact`.
fn compacted(s: &Scratch) {
    written_in_small_segments(s, 5);
    lw_ok(
        bin()
            .args(["ledger", "compact", "--retain", "0s", "--ledger"])
            .arg(&s.ledger),
    );
    assert!(s.ledger.join("compacted").exists());
}

/// The compacted history is a file `meta` (format 2) and the journal's first segment promise:
/// without it, the history before the journal is gone, and that is named as such (not as a
/// missing segment 1).
#[test]
fn a_deleted_compacted_history_is_damage_that_verify_status_and_check_name() {
    let s = Scratch::new(BS * 64);
    compacted(&s);
    verify_clean_at(&s);
    let p = s.ledger.join("compacted");
    std::fs::remove_file(&p).unwrap();
    all_name(&s, &p);
    let o = run(&["verify"], &s.ledger, Some(&s.image));
    assert!(
        text(&o).contains("compacted history is missing"),
        "{}",
        text(&o)
    );
}

fn verify_clean_at(s: &Scratch) {
    let o = run(&["verify"], &s.ledger, Some(&s.image));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The state table is derived data: a deleted one is damage every reader names, and
/// `ledger check --repair` writes it anew from the journal.
#[test]
fn a_deleted_state_table_is_named_and_repair_rebuilds_it() {
    let s = Scratch::new(BS * 64);
    written(&s);
    let p = s.ledger.join("state");
    std::fs::remove_file(&p).unwrap();
    all_name(&s, &p);
    let o = run(&["ledger", "check", "--repair"], &s.ledger, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(p.exists());
    verify_clean_at(&s);
}

/// Without its journal directory a ledger has no history: named, with what to do.
#[test]
fn a_deleted_journal_directory_is_named() {
    let s = Scratch::new(BS * 64);
    written(&s);
    let j = s.ledger.join("journal");
    std::fs::remove_dir_all(&j).unwrap();
    all_name(&s, &j);
    let o = run(&["verify"], &s.ledger, Some(&s.image));
    assert!(
        text(&o).contains("journal directory is missing"),
        "{}",
        text(&o)
    );
}

/// After a clean close the journal was synced through its end and nothing of ours appended:
/// bytes found there are no crash's torn tail. They are damage (named with file and offset);
/// `ledger check --repair` moves them aside, destroying nothing. After a crash they are still
/// a torn tail.
#[test]
fn bytes_after_a_clean_close_are_damage_not_a_crash_torn_tail() {
    let s = Scratch::new(BS * 64);
    written(&s);
    let seg = last_segment(&s.ledger);
    let end = std::fs::metadata(&seg).unwrap().len();
    let junk = b"bytes nobody we know wrote";
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(junk).unwrap();
    }
    let where_ = format!("{}: damaged at offset {end}", seg.display());
    let o = run(&["verify"], &s.ledger, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&where_), "{}", text(&o));
    assert!(text(&o).contains("clean end"), "{}", text(&o));
    assert!(!text(&o).contains("left by a crash"), "{}", text(&o));
    let o = run(&["ledger", "check"], &s.ledger, None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("DAMAGED {} at offset {end}", seg.display())),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("left by a crash"), "{}", text(&o));
    // A writer (what `serve` opens) refuses it too, rather than truncating what it did not
    // write.
    let dev = s.device(false);
    let w = Ledger::open(
        &s.ledger,
        Some((dev.identity(), dev.size())),
        OpenOptions::new(Access::Write),
    );
    assert!(w.is_err(), "a writer opened a ledger with foreign bytes");
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        end + junk.len() as u64
    );

    let o = run(&["ledger", "check", "--repair"], &s.ledger, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut kept = seg.clone().into_os_string();
    kept.push(format!(".foreign-{end}"));
    assert_eq!(std::fs::read(&kept).unwrap(), junk);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), end);
    verify_clean_at(&s);
    bytes_after_a_crashed_session_are_still_a_torn_tail();
}

/// `status`, `history` and `ledger dump` read a damaged state table (rebuilding their view
/// from the journal): they say so, naming the file and offset, and exit 2.
#[test]
fn status_history_and_dump_exit_2_on_a_damaged_state_table() {
    let s = Scratch::new(BS * 64);
    written(&s);
    let state = s.ledger.join("state");
    let mut b = std::fs::read(&state).unwrap();
    // Block 3's entry (data area after the header page and one check page).
    b[8192 + 3 * 8] ^= 0x40;
    std::fs::write(&state, &b).unwrap();
    let name = format!("state table {}", state.display());
    let image = s.image.to_str().unwrap();
    for args in [
        &["status", image][..],
        &["status", "--json", image][..],
        &["history", image, "3"][..],
        &["ledger", "dump"][..],
    ] {
        let o = run(args, &s.ledger, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(&name), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("offset 4096"), "{args:?}: {}", text(&o));
    }
    let o = run(&["status", "--json"], &s.ledger, Some(&s.image));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["ledger_damage"].as_str().unwrap().contains("--repair"));
    // `ledger check` prints block states the way the rest of the tool does.
    let o = run(&["ledger", "check"], &s.ledger, None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(!out.contains("Tracked {"), "{out}");
    let crc = crc(&Rng(9).block(BS as usize));
    assert!(
        out.contains(&format!(
            "the journal says tracked at generation 1 (crc {crc:08x})"
        )),
        "{out}"
    );
}

/// A block number beyond the device is refused with the argument and the device's size.
#[test]
fn dump_and_history_refuse_a_block_beyond_the_device() {
    let s = Scratch::new(BS * 64);
    written(&s);
    let o = run(
        &["ledger", "dump", "--block", "18446744073709551615"],
        &s.ledger,
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--block 18446744073709551615") && text(&o).contains("64 blocks"),
        "{}",
        text(&o)
    );
    let o = bin()
        .arg("history")
        .arg(&s.image)
        .arg("64")
        .arg("--ledger")
        .arg(&s.ledger)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("64 blocks"), "{}", text(&o));
}

/// `--ledger` naming a file, and `init` on directories that are not ledgers: each refusal says
/// what is there; an empty directory is used; nothing found is written or removed.
#[test]
fn ledger_paths_that_are_not_ledgers_are_named_for_what_they_are() {
    let s = Scratch::new(BS * 64);
    let file = s.dir.path().join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    let o = run(&["verify"], &file, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is a file, not a directory"),
        "{}",
        text(&o)
    );
    let o = run(&["init"], &file, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("file, not a directory"), "{}", text(&o));
    assert!(!text(&o).contains("already exists"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

    let other = s.dir.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.jpg"), "meow").unwrap();
    let o = run(&["init"], &other, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not a ledger and holds other files"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("already exists"), "{}", text(&o));
    let names: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cat.jpg")]);

    let empty = s.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = run(&["init", "--baseline"], &empty, Some(&s.image));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(empty.join("meta").exists());
    let o = run(&["verify"], &empty, Some(&s.image));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A real ledger is still "already exists".
    let o = run(&["init"], &empty, Some(&s.image));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
}

/// The same kind of bytes after a session that never closed (a crash) are still a torn tail:
/// ignored by readers with a warning that says so.
fn bytes_after_a_crashed_session_are_still_a_torn_tail() {
    let s = Scratch::new(BS * 64);
    s.init(BS as u32, true);
    {
        let (l, dev) = s.writer(false);
        write_through(&l, &dev, 3, &Rng(9).block(BS as usize), false);
        flush(&l, &dev);
        // Dropped without close: the process died.
    }
    let seg = last_segment(&s.ledger);
    let end = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xab; 30]).unwrap();
    }
    let o = run(&["verify", "--json"], &s.ledger, Some(&s.image));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = v["ledger_warnings"][0].as_str().unwrap_or_default();
    assert!(
        w.contains(&format!("torn tail at offset {end}")) && w.contains("left by a crash"),
        "{v}"
    );
    let o = run(&["ledger", "check"], &s.ledger, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A ledger written in 4 KiB segments in one clean session: (ledger, sorted segment paths).
fn segmented(s: &Scratch) -> Vec<std::path::PathBuf> {
    written_in_small_segments(s, 6);
    let mut segs: Vec<_> = std::fs::read_dir(s.ledger.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "{segs:?}");
    segs
}

/// Journal segments are files the chain and the state table's checkpoint promise: a deleted
/// one, in the middle or at the end, is named by its own path (the file to restore), not by
/// the segment after it or the journal as a whole.
#[test]
fn a_deleted_journal_segment_is_named_by_its_own_path() {
    for which in ["middle", "last"] {
        let s = Scratch::new(BS * 64);
        let segs = segmented(&s);
        let gone = if which == "middle" {
            segs[1].clone()
        } else {
            segs.last().unwrap().clone()
        };
        std::fs::remove_file(&gone).unwrap();
        all_name(&s, &gone);
        let o = run(&["verify"], &s.ledger, Some(&s.image));
        assert!(
            text(&o).contains("is missing") && text(&o).contains("restore"),
            "{which}: {}",
            text(&o)
        );
    }
}
