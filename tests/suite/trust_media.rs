//! Verification reads the media, not the host's page cache; and one owner per device. Through
//! the real binary: a loop block device whose page cache (kept alive by a holder process) holds
//! newer data than the image file below it, and two claimants of one device.

use crate::helpers::*;
use crate::service::{have, run, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BS: u64 = 4096;

/// True when this process may attach loop devices (root, losetup); CI must have them.
fn can_loop() -> bool {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the loop-device tests need root, which CI provides");
        }
        eprintln!("SKIP: not root (loop devices need it)");
        return false;
    }
    have("losetup") && have("qemu-io")
}

/// A loop device, detached by the name losetup gave it.
struct Loop(String);

impl Loop {
    fn attach(image: &Path) -> Loop {
        Loop(
            run(Command::new("losetup").args(["-f", "--show"]).arg(image))
                .trim()
                .to_string(),
        )
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A process that keeps the device open, so its page cache outlives every other opener (the
/// kernel drops a block device's cache at its last close); killed by PID.
struct Holder(Child);

impl Holder {
    fn start(dev: &str) -> Holder {
        Holder(
            Command::new("sleep")
                .arg("3600")
                .stdin(std::fs::File::open(dev).unwrap())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The filesystem type of `dir` as stat(1) names it ("tmpfs", "ext2/ext3", ...).
fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// The incident the project exists for, below the host: durable writes through `serve` on a
/// block device, then the media under it reverted while the host's page cache of the device
/// still holds the new data. `verify` must see the media (exit 1, the 16 blocks named), and
/// say it read it directly; `--cached` reads the cache and says so. `history`'s "holds now"
/// and `report` read the media too. The device is claimed while served (O_EXCL).
#[test]
fn verify_sees_reverted_media_under_a_stale_page_cache_of_a_block_device() {
    if !can_loop() {
        return;
    }
    let s = Scratch::new(16 << 20);
    let dev = Loop::attach(&s.image);
    let _holder = Holder::start(&dev.0);
    let ledger = s.dir.path().join("loop.ledger");
    let led = ledger.to_str().unwrap();
    let o = bin()
        .args(["init", "--baseline", "--ledger", led])
        .arg(&dev.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("read: direct"), "{}", text(&o));
    // What the media holds at 1 MiB before the writes (16 blocks of 4 KiB).
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.image)
        .unwrap();
    let mut old = vec![0u8; 64 << 10];
    image.read_exact_at(&mut old, 1 << 20).unwrap();

    let sock = s.dir.path().join("loop.sock");
    let svc = Service::start_on(Path::new(&dev.0), &sock, &["--ledger", led]);
    // A second claimant of the served block device is refused, naming the device.
    let o = bin()
        .args(["init", "--ledger"])
        .arg(s.dir.path().join("other.ledger"))
        .arg(&dev.0)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{}: the device is claimed by", dev.0)),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains(&format!("process {} (lostwrite)", svc.pid())),
        "{}",
        text(&o)
    );
    run(Command::new("qemu-io")
        .args(["-f", "raw", "-t", "writeback"])
        .arg(svc.uri())
        .args(["-c", "write -P 0x61 1m 64k", "-c", "flush"]));
    svc.stop();

    // The media below reverts; the device's page cache keeps the new contents.
    image.write_all_at(&old, 1 << 20).unwrap();
    image.sync_data().unwrap();
    let mut cached = vec![0u8; 64 << 10];
    std::fs::File::open(&dev.0)
        .unwrap()
        .read_exact_at(&mut cached, 1 << 20)
        .unwrap();
    assert!(
        cached.iter().all(|&b| b == 0x61),
        "the page cache of {} should still hold the new data for this test to mean anything",
        dev.0
    );

    let o = bin()
        .args(["verify", "--ledger", led])
        .arg(&dev.0)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("16 reverted"), "{t}");
    assert!(t.contains("read: direct"), "{t}");
    let o = bin()
        .args(["verify", "--json", "--ledger", led])
        .arg(&dev.0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["read"], "direct", "{v}");
    let blocks: Vec<u64> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "reverted")
        .map(|f| f["block"].as_u64().unwrap())
        .collect();
    assert_eq!(blocks, (256..272).collect::<Vec<u64>>(), "{v}");

    // "holds now" of history reads the media too.
    let o = bin()
        .args(["history", "--json", "--ledger", led])
        .arg(&dev.0)
        .arg("256")
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["read"], "direct", "{h}");
    assert_eq!(h["blocks"][0]["device_holds_generation"], 0, "{h}");

    let o = bin()
        .args(["report", "--json", "--ledger", led])
        .arg(&dev.0)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["read"], "direct", "{r}");
    assert_eq!(r["summary"]["reverted"], 16, "{r}");

    // --cached reads the page cache, and says so: there, every block still looks written.
    let o = bin()
        .args(["verify", "--cached", "--json", "--ledger", led])
        .arg(&dev.0)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["read"], "cached", "{v}");
    assert_eq!(v["read_note"], "--cached was given", "{v}");
}

/// A regular file is read with O_DIRECT too, and the human and JSON output say so.
#[test]
fn verify_of_a_file_says_it_read_directly() {
    let s = Scratch::new(1 << 20);
    if fs_type(s.dir.path()) == "tmpfs" {
        eprintln!("SKIP: the scratch directory is on tmpfs, which has no media to read directly");
        return;
    }
    s.init(BS as u32, true);
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("read: direct"), "{}", text(&o));
    let o = bin()
        .args(["verify", "--json", "--cached"])
        .arg(&s.image)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["read"], "cached", "{v}");
}

/// Two `serve` on one image with two ledgers: the second is refused (exit 2), naming the
/// device and the process holding it; `init` of another ledger while it is served likewise.
#[test]
fn a_second_claimant_of_a_served_file_is_refused() {
    let s = Scratch::new(4 << 20);
    // A ledger of its own for a reader to verify against while the device is served.
    s.init(BS as u32, true);
    let a = s.dir.path().join("a.ledger");
    let b = s.dir.path().join("b.ledger");
    let svc = Service::start_on(
        &s.image,
        &s.dir.path().join("a.sock"),
        &["--ledger", a.to_str().unwrap()],
    );
    let holder = format!("process {}", svc.pid());
    // Each claimant is refused with exit 2, naming the holder; returns what it said.
    let refused = |args: &[&std::ffi::OsStr]| {
        let o = bin()
            .args(args)
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {t}");
        assert!(t.contains(&holder), "{args:?}: {t}");
        t
    };
    let (image, b_sock) = (s.image.as_os_str(), s.dir.path().join("b.sock"));
    let os = |a: &'static str| std::ffi::OsStr::new(a);
    let t = refused(&[
        os("serve"),
        image,
        os("--ledger"),
        b.as_os_str(),
        os("--socket"),
        b_sock.as_os_str(),
    ]);
    assert!(
        t.contains(&format!("{}: the device is claimed by", s.image.display())),
        "{t}"
    );
    refused(&[os("init"), image, os("--ledger"), b.as_os_str()]);
    assert!(!b.exists(), "a refused init must not leave a ledger");
    // A read-only serve still judges reads against a ledger: a writer beside it keeps it out.
    refused(&[
        os("serve"),
        image,
        os("--read-only"),
        os("--ledger"),
        b.as_os_str(),
        os("--socket"),
        b_sock.as_os_str(),
    ]);
    // Readers take no claim.
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    svc.stop();
    // Released with the process: a new owner may start.
    let svc = Service::start_on(
        &s.image,
        &s.dir.path().join("b.sock"),
        &["--ledger", b.to_str().unwrap()],
    );
    svc.stop();
}

/// A mounted filesystem, unmounted by its mount point (a `-o loop` mount detaches its loop
/// device with it).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// True when this process may mount filesystems; a skip says so (CI, which runs as root,
/// fails instead).
fn may_mount(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the {what} test needs root to mount, which CI provides");
    }
    eprintln!("SKIP: not root (mounting {what} needs it)");
    false
}

/// `init --baseline` then `verify --json` of `image` with a ledger beside `dir`: both succeed;
/// returns init's output and verify's JSON.
fn init_and_verify(dir: &Path, image: &Path) -> (String, serde_json::Value) {
    let ledger = dir.join("disk.ledger");
    let o = bin()
        .args(["init", "--baseline", "--ledger"])
        .arg(&ledger)
        .arg(image)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let init = text(&o);
    let o = bin()
        .args(["verify", "--json", "--ledger"])
        .arg(&ledger)
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    (init, serde_json::from_slice(&o.stdout).unwrap())
}

/// Where the filesystem refuses O_DIRECT (squashfs), the device is dropped from the page cache
/// before each read, and the output says so and how far that could be checked, instead of
/// claiming a direct read or silently reading the cache.
#[test]
fn a_file_that_refuses_o_direct_is_read_after_dropping_its_cache_and_says_so() {
    if !may_mount("squashfs") || !have("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    random_image(&src.join("disk.img"), 4 << 20, 7);
    let sq = dir.path().join("fs.sq");
    run(Command::new("mksquashfs")
        .arg(&src)
        .arg(&sq)
        .args(["-noappend", "-quiet"]));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&sq)
        .arg(&mnt));
    let _mount = Mount(mnt.clone());
    let (init, v) = init_and_verify(dir.path(), &mnt.join("disk.img"));
    assert!(init.contains("read: cache-dropped"), "{init}");
    assert_eq!(v["read"], "cache-dropped", "{v}");
    let note = v["read_note"].as_str().unwrap_or_default();
    assert!(note.starts_with("the filesystem refused O_DIRECT ("), "{v}");
}

/// An NBD export is read over NBD, and the output says so rather than claiming the media.
#[test]
fn an_nbd_device_says_it_was_read_over_nbd() {
    if !have("nbdkit") {
        return;
    }
    let s = Scratch::new(1 << 20);
    let sock = s.dir.path().join("nk.sock");
    let child = Command::new("nbdkit")
        .args(["-f", "-U"])
        .arg(&sock)
        .arg("file")
        .arg(&s.image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _up = Holder(child);
    let t = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nbdkit did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let ledger = s.dir.path().join("nbd.ledger");
    let o = bin()
        .args(["init", "--baseline", "--ledger"])
        .arg(&ledger)
        .arg(&uri)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("read: nbd"), "{}", text(&o));
    for extra in [&[][..], &["--cached"][..]] {
        let o = bin()
            .args(["verify", "--json", "--ledger"])
            .arg(&ledger)
            .args(extra)
            .arg(&uri)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["read"], "nbd", "{v}");
    }
}

/// A file on tmpfs has no media below the page cache: the output says the cache was read and
/// why, rather than "direct" (which tmpfs accepts on newer kernels).
#[test]
fn a_file_on_tmpfs_says_the_cache_is_all_there_is() {
    let fs = fs_type(Path::new("/dev/shm"));
    if fs != "tmpfs" {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("/dev/shm is not tmpfs ({fs:?}); CI provides one");
        }
        eprintln!("SKIP: /dev/shm is not tmpfs");
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = dir.path().join("disk.img");
    random_image(&image, 1 << 20, 3);
    lw_ok(bin().args(["init", "--baseline"]).arg(&image));
    let o = bin()
        .args(["verify", "--json"])
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["read"], "cached", "{v}");
    assert!(
        v["read_note"]
            .as_str()
            .unwrap_or_default()
            .contains("tmpfs"),
        "{v}"
    );
}

/// ext4 with data=journal accepts O_DIRECT opens but serves such reads from the page cache: the
/// kernel says so only through statx (no direct I/O alignment). The read must not be called
/// direct: the cache is dropped before each read instead, and the note says why.
#[test]
fn a_filesystem_that_would_serve_o_direct_from_its_cache_is_not_called_direct() {
    if !may_mount("ext4 data=journal") || !have("mkfs.ext4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs.img");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop,data=journal"])
        .arg(&fs)
        .arg(&mnt));
    let _mount = Mount(mnt.clone());
    let image = mnt.join("disk.img");
    random_image(&image, 4 << 20, 9);
    let (_, v) = init_and_verify(dir.path(), &image);
    assert_eq!(v["read"], "cache-dropped", "{v}");
    assert!(
        v["read_note"].as_str().unwrap().contains("no direct I/O"),
        "{v}"
    );
}
