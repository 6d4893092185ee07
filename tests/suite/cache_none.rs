//! `serve --cache none`: the device is read and written with O_DIRECT, past the host's page
//! cache. Real clients (qemu-io, qemu-img, fio) write aligned and unaligned sizes and offsets,
//! which must read back byte for byte; the image's page cache must stay empty (and fill under
//! `--cache writeback`, so that an O_DIRECT silently dropped fails here); a file on tmpfs is
//! refused by name; overlapped requests pass fio's verification; and kill -9 under load leaves
//! a ledger that verifies.
//!
//! The images live in the build's scratch directory, not the system's temporary one, which
//! may be a tmpfs (where `--cache none` is refused, as one test checks).

use crate::helpers::*;
use crate::service::{can_mount, fio, have, run, wait_timeout, Service};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A sparse image of `size` bytes: none of it in the page cache.
fn sparse_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Pages of `path` in the page cache (fincore, from util-linux).
fn cached_pages(path: &Path) -> u64 {
    let out = run(Command::new("fincore")
        .args(["--noheadings", "--output", "PAGES"])
        .arg(path));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

/// What a qemu-io command does to a model of the image. Discards cover whole 4 KiB blocks
/// only (the service trims whole ledger blocks, and a hole in a file reads as zeroes).
enum Op {
    Write(u8, u64, u64),
    Fua(u8, u64, u64),
    Zero(u64, u64),
    Discard(u64, u64),
}

impl Op {
    fn command(&self) -> String {
        match *self {
            Op::Write(p, o, l) => format!("write -P {p:#x} {o} {l}"),
            Op::Fua(p, o, l) => format!("write -f -P {p:#x} {o} {l}"),
            Op::Zero(o, l) => format!("write -z {o} {l}"),
            Op::Discard(o, l) => format!("discard {o} {l}"),
        }
    }

    fn apply(&self, model: &mut [u8]) {
        let (fill, o, l) = match *self {
            Op::Write(p, o, l) | Op::Fua(p, o, l) => (p, o, l),
            Op::Zero(o, l) => (0, o, l),
            Op::Discard(o, l) => {
                let (lo, hi) = (o.div_ceil(4096) * 4096, (o + l) / 4096 * 4096);
                (0, lo, hi.saturating_sub(lo))
            }
        };
        model[o as usize..(o + l) as usize].fill(fill);
    }
}

/// Aligned, unaligned, sub-sector, page-spanning and end-of-device writes, zeroes and
/// discards, for an image of `size` bytes.
fn ops(size: u64) -> Vec<Op> {
    vec![
        Op::Write(0x11, 0, 4096),
        Op::Write(0x22, 1 << 20, 64 << 10),
        Op::Write(0x33, 100, 5000),
        Op::Write(0x44, 12288, 512),
        Op::Write(0x55, 20001, 3),
        Op::Write(0x66, (2 << 20) - 700, 200_000),
        Op::Fua(0x77, 300_001, 7000),
        Op::Write(0x88, 4 << 20, 1 << 20),
        Op::Zero((4 << 20) + 1000, 500_000),
        Op::Zero(40_960 + 100, 10_000),
        Op::Discard((1 << 20) + 4096, 8192),
        Op::Discard((4 << 20) + 600_000, 100_000),
        Op::Write(0x99, size - 4106, 4106),
        Op::Write(0xaa, 20_000, 10),
    ]
}

/// Serves a fresh image of `size` bytes with `--cache CACHE`, applies [`ops`] with qemu-io,
/// compares the whole export with the model (qemu-img compare), stops the service and checks
/// `verify`; returns the image's cached pages after the stop.
fn serve_and_compare(cache: &str, size: u64) -> u64 {
    let dir = scratch_dir();
    let image = sparse_image(dir.path(), "disk.img", size);
    assert_eq!(
        cached_pages(&image),
        0,
        "a new sparse image has nothing cached"
    );
    let socket = dir.path().join("disk.sock");
    let model = write_and_compare(&image, &socket, &["--cache", cache], size, true);
    let pages = cached_pages(&image);
    verify_clean(&image);
    assert_eq!(std::fs::read(&image).unwrap(), model, "the image on disk");
    pages
}

/// Serves `device` on `socket` with `args`, applies [`ops`] (without discards unless
/// `discards`: a block device may ignore one) with qemu-io, compares the whole export with the
/// model (qemu-img compare) and stops the service; returns the model.
fn write_and_compare(
    device: &Path,
    socket: &Path,
    args: &[&str],
    size: u64,
    discards: bool,
) -> Vec<u8> {
    let svc = Service::start_on(device, socket, args);
    let mut model = vec![0u8; size as usize];
    let mut qio = Command::new("qemu-io");
    qio.args(["-f", "raw", "-d", "unmap"]);
    for op in ops(size) {
        if matches!(op, Op::Discard(..)) && !discards {
            continue;
        }
        qio.arg("-c").arg(op.command());
        op.apply(&mut model);
    }
    run(qio.arg(svc.uri()));
    let reference = socket.with_extension("reference");
    std::fs::write(&reference, &model).unwrap();
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(svc.uri())
        .arg(&reference));
    let log = svc.stop();
    assert!(!log.contains("ERROR"), "{log}");
    model
}

#[test]
fn cache_none_writes_every_size_and_offset_byte_exact_past_the_page_cache() {
    if !have("qemu-io") || !have("qemu-img") || !have("fincore") {
        return;
    }
    let pages = serve_and_compare("none", 8 << 20);
    assert_eq!(
        pages, 0,
        "--cache none left pages of the image in the page cache"
    );
    // The same writes through the page cache leave pages there: the check above can fail.
    let pages = serve_and_compare("writeback", 8 << 20);
    assert!(
        pages > 0,
        "--cache writeback left nothing in the page cache"
    );
    // A size that is not a multiple of the direct-I/O alignment: its last part is written
    // through the page cache (a direct write there would grow the file); still byte exact.
    serve_and_compare("none", (8 << 20) + 1536);
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn cache_none_serves_a_block_device_byte_exact() {
    if !can_mount() || !have("losetup") || !have("qemu-io") || !have("qemu-img") {
        return;
    }
    let dir = scratch_dir();
    let size = 8 << 20;
    let backing = sparse_image(dir.path(), "backing.img", size);
    let dev = Loop(
        run(Command::new("losetup").args(["-f", "--show"]).arg(&backing))
            .trim()
            .to_string(),
    );
    let ledger = dir.path().join("loop.ledger");
    let socket = dir.path().join("loop.sock");
    let args = ["--cache", "none", "--ledger", ledger.to_str().unwrap()];
    let model = write_and_compare(Path::new(&dev.0), &socket, &args, size, false);
    let o = bin()
        .arg("verify")
        .arg(&dev.0)
        .arg("--ledger")
        .arg(&ledger)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    drop(dev);
    assert_eq!(
        std::fs::read(&backing).unwrap(),
        model,
        "the loop device's file"
    );
}

#[test]
fn cache_none_is_a_key_of_each_export_in_a_config() {
    if !have("qemu-io") || !have("fincore") {
        return;
    }
    let dir = scratch_dir();
    let direct = sparse_image(dir.path(), "direct.img", 4 << 20);
    let cached = sparse_image(dir.path(), "cached.img", 4 << 20);
    let socket = dir.path().join("host.sock");
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {socket:?}\n\n[[export]]\nname = \"direct\"\ndevice = {direct:?}\ncache = \"none\"\n\n[[export]]\nname = \"cached\"\ndevice = {cached:?}\n"
        ),
    )
    .unwrap();
    let svc = Service::start_config(&config, &socket);
    for name in ["direct", "cached"] {
        let uri = format!("nbd+unix:///{name}?socket={}", socket.display());
        run(Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x5a 4096 1048576"])
            .arg(uri));
    }
    svc.stop();
    assert_eq!(cached_pages(&direct), 0, "cache = \"none\" was not applied");
    assert!(cached_pages(&cached) > 0, "the default is writeback");
    verify_clean(&direct);
    verify_clean(&cached);
}

#[test]
fn cache_none_on_tmpfs_is_refused_naming_the_file() {
    let on_tmpfs = nix::sys::statfs::statfs("/dev/shm")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("/dev/shm is not tmpfs; CI provides one");
        }
        eprintln!("SKIP: /dev/shm is not tmpfs");
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = sparse_image(dir.path(), "disk.img", 1 << 20);
    let socket = dir.path().join("s.sock");
    let o = bin()
        .arg("serve")
        .arg(&image)
        .args(["--cache", "none", "--socket"])
        .arg(&socket)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&image.display().to_string()), "{err}");
    assert!(
        err.contains("tmpfs") && err.contains("--cache none"),
        "{err}"
    );
    // The same file is served with the page cache.
    let svc = Service::start(&image, &["--cache", "writeback"]);
    svc.stop();
}

/// fio, many jobs each with 16 requests in flight, block sizes that are not multiples of the
/// direct-I/O alignment among them, checking every block it wrote.
#[test]
fn cache_none_overlapped_requests_pass_fio_verify() {
    if !have("fio") {
        return;
    }
    let dir = scratch_dir();
    let image = sparse_image(dir.path(), "disk.img", 64 << 20);
    let svc = Service::start(&image, &["--cache", "none"]);
    for sizes in [["--bs=4k"], ["--bsrange=512-24k"]] {
        fio(
            &svc.uri(),
            &[
                "--rw=randwrite",
                sizes[0],
                "--blockalign=512",
                "--iodepth=16",
                "--numjobs=4",
                "--size=8m",
                "--offset_increment=16m",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--fsync=64",
            ],
        );
    }
    svc.stop();
    verify_clean(&image);
    lw_ok(bin().args(["ledger", "check"]).arg(&image));
}

/// kill -9 while fio writes (unaligned sizes too, 16 in flight on each of two connections),
/// a few times; then a clean session, and `verify` and `ledger check` are clean.
#[test]
fn cache_none_kill_9_under_fio_then_verify_clean() {
    if !have("fio") {
        return;
    }
    let dir = scratch_dir();
    let image = sparse_image(dir.path(), "disk.img", 32 << 20);
    lw_ok(bin().args(["init", "--baseline"]).arg(&image));
    let mut rng = Rng(0xd1ec7);
    const CYCLES: usize = 3;
    for _ in 0..CYCLES {
        let svc = Service::start(&image, &["--cache", "none"]);
        let mut load = Command::new("fio")
            .current_dir(dir.path())
            .args([
                "--verify_state_save=0",
                "--name=load",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bsrange=512-64k",
                "--blockalign=512",
                "--iodepth=16",
                "--numjobs=2",
                "--size=16m",
                "--offset_increment=16m",
                "--time_based",
                "--runtime=30",
                "--fsync=32",
            ])
            .arg(format!("--uri={}", svc.uri()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700 + rng.next() % 800));
        svc.kill9();
        // fio fails once its server is gone; past the timeout it is killed by its PID.
        let _ = wait_timeout(&mut load, Duration::from_secs(60));
    }
    let svc = Service::start(&image, &["--cache", "none"]);
    let log = svc.stop();
    assert!(
        log.contains("the previous session did not end cleanly"),
        "{log}"
    );
    verify_clean(&image);
    lw_ok(bin().args(["ledger", "check"]).arg(&image));
    let st = lw_ok(bin().args(["status", "--json"]).arg(&image));
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["sessions_crashed"], CYCLES);
}
