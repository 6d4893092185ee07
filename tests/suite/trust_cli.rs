//! Trust at the command line: output to a closed pipe, a log nobody reads, exit statuses and
//! messages an operator acts on, and stale reads the detector had no room for.

use crate::helpers::{bin, flush, write_through, Rng, Scratch};
use crate::service::have;
use lostwrite::device::BlockDevice;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BS: usize = 4096;

/// A pipe whose reading end is already closed: every write to the other end fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    w
}

fn exe() -> std::ffi::OsString {
    bin().get_program().to_owned()
}

/// A baselined image with two durable writes, one of them then reverted underneath.
fn damaged() -> Scratch {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, true);
    let old = s.read_block(3, BS);
    {
        let (l, dev) = s.writer(false);
        let mut rng = Rng(7);
        write_through(&l, &dev, 3, &rng.block(BS), false);
        write_through(&l, &dev, 5, &rng.block(BS), false);
        flush(&l, &dev);
        l.close(|| dev.flush()).unwrap();
    }
    s.poke(3, &old);
    s
}

#[test]
fn every_command_ends_quietly_on_a_closed_stdout_with_its_own_exit_status() {
    let s = damaged();
    let img = s.image.to_str().unwrap();
    let led = s.ledger.to_str().unwrap();
    let fresh = s.dir.path().join("fresh.img");
    let demo = s.dir.path().join("demo");
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["verify", img],
        vec!["verify", "--json", img],
        vec!["status", img],
        vec!["status", "--json", img],
        vec!["ledger", "check", "--ledger", led],
        vec!["ledger", "dump", "--ledger", led],
        vec!["report", img],
        vec!["report", "--json", img],
        vec!["history", img, "3", "5"],
        vec!["history", "--json", img, "3"],
        vec!["--help"],
        vec!["--version"],
    ];
    if have("mkfs.ext4") && have("debugfs") {
        cases.push(vec!["demo", "--dir", demo.to_str().unwrap()]);
    }
    for args in cases {
        // What the command exits with when its output is read (the demo runs once).
        let normal = if args[0] == "demo" {
            Some(0)
        } else {
            Command::new(exe())
                .args(&args)
                .stdout(Stdio::null())
                .output()
                .unwrap()
                .status
                .code()
        };
        let o = Command::new(exe())
            .args(&args)
            .stdout(closed_pipe())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), normal, "{args:?}: {err}");
        assert!(
            !err.contains("error"),
            "{args:?}: a closed pipe is no error: {err}"
        );
    }
    // A command that prints while it works: init.
    std::fs::copy(&s.image, &fresh).unwrap();
    let o = Command::new(exe())
        .args(["init", "--baseline", fresh.to_str().unwrap()])
        .stdout(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    crate::helpers::verify_clean(&fresh);
}

#[test]
fn a_stdout_that_fails_otherwise_is_trouble_not_success() {
    let s = damaged();
    // A full disk under `verify --json > findings.json`: the evidence was not saved.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(exe())
        .args(["verify", "--json"])
        .arg(&s.image)
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("writing the output to stdout"), "{err}");
}

#[test]
fn errors_say_each_cause_once_and_name_the_path() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.img");
    let o = bin().arg("verify").arg(&missing).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // The demo never writes over someone's files.
    std::fs::write(d.path().join("disk.img"), b"precious").unwrap();
    let o = bin()
        .arg("demo")
        .arg("--dir")
        .arg(d.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read(d.path().join("disk.img")).unwrap(),
        b"precious"
    );
    if have("mkfs.ext4") && have("debugfs") {
        let o = bin()
            .args(["demo", "--dir", "/proc/nope"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("/proc/nope"), "{err}");
    }
}

#[test]
fn report_exits_like_verify() {
    let s = damaged();
    let report = |extra: &[&str]| {
        let o = bin()
            .arg("report")
            .args(extra)
            .arg(&s.image)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, text) = report(&[]);
    assert_eq!(code, Some(1), "a reverted block fails the report: {text}");
    // A view past every lost write shows nothing, but the device is not clean.
    let (code, text) = report(&["--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no durable write was lost in this view"),
        "{text}"
    );
    assert!(
        text.contains("1 more finding lies outside this view"),
        "{text}"
    );
    let o = bin()
        .args(["report", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["reverted"], 1, "{v}");
    let clean = Scratch::new(1 << 20);
    clean.init(BS as u32, true);
    let o = bin().arg("report").arg(&clean.image).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A served image of 512-byte blocks whose every block reverts under the service after a
/// flushed rewrite: reading it back floods the detector (and the log) with stale blocks.
struct Flood {
    dir: tempfile::TempDir,
    image: std::path::PathBuf,
    socket: std::path::PathBuf,
}

fn flood(size: u64) -> Flood {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("d.img");
    crate::helpers::random_image(&image, size, 11);
    let old = dir.path().join("old.img");
    std::fs::copy(&image, &old).unwrap();
    crate::helpers::lw_ok(
        bin()
            .args(["init", "--baseline", "--block-size", "512"])
            .arg(&image),
    );
    let socket = dir.path().join("d.sock");
    Flood { dir, image, socket }
}

fn uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// Runs a command with a deadline; panics naming it if it does not finish in time.
fn run_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_up(socket: &Path, child: &mut std::process::Child) {
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("serve exited with {st} before it listened");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops serve with SIGTERM and returns its exit status, within a generous bound.
fn stop(child: &mut std::process::Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    crate::service::wait_timeout(child, Duration::from_secs(60))
        .expect("serve stops within 60 s of SIGTERM")
}

/// Rewrites the whole export through NBD (flushed), reverts it underneath, reads it back.
fn rewrite_revert_read(f: &Flood) {
    let new = f.dir.path().join("new.img");
    crate::helpers::random_image(&new, std::fs::metadata(&f.image).unwrap().len(), 12);
    let o = run_within(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&new)
            .arg(uri(&f.socket)),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::copy(f.dir.path().join("old.img"), &f.image).unwrap();
    let o = run_within(
        Command::new("nbdcopy").arg(uri(&f.socket)).arg("null:"),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn serve_goes_on_when_its_stderr_is_closed_or_never_read() {
    if !have("nbdcopy") {
        return;
    }
    // Closed: every log line fails. Never read: the pipe fills and every write would block.
    for closed in [true, false] {
        let f = flood(16 << 20);
        let (r, w) = nix::unistd::pipe().unwrap();
        let reader = if closed {
            drop(r);
            None
        } else {
            Some(r)
        };
        let mut child = Command::new(exe())
            .arg("serve")
            .arg(&f.image)
            .arg("--socket")
            .arg(&f.socket)
            .env("LOSTWRITE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(w)
            .spawn()
            .unwrap();
        wait_up(&f.socket, &mut child);
        rewrite_revert_read(&f);
        // Every write was served and recorded: a second rewrite, flushed, then a clean stop.
        let new = f.dir.path().join("again.img");
        crate::helpers::random_image(&new, 16 << 20, 13);
        let o = run_within(
            Command::new("nbdcopy")
                .arg("--flush")
                .arg(&new)
                .arg(uri(&f.socket)),
            Duration::from_secs(120),
        );
        assert!(
            o.status.success(),
            "closed={closed}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let st = stop(&mut child);
        assert_eq!(st.code(), Some(0), "closed={closed}: serve exits cleanly");
        drop(reader);
        crate::helpers::verify_clean(&f.image);
        let status = crate::helpers::lw_ok(bin().arg("status").arg(&f.image));
        assert!(
            status.contains("closed cleanly"),
            "closed={closed}: {status}"
        );
    }
}

#[test]
fn stale_reads_the_detector_had_no_room_for_are_never_silent() {
    if !have("nbdcopy") {
        return;
    }
    let f = flood(64 << 20);
    let log = f.dir.path().join("serve.log");
    let mut child = Command::new(exe())
        .arg("serve")
        .arg(&f.image)
        .arg("--socket")
        .arg(&f.socket)
        .env("LOSTWRITE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_up(&f.socket, &mut child);
    // 131,072 stale blocks arrive far faster than 4,096 queued suspects are classified.
    rewrite_revert_read(&f);
    assert_eq!(stop(&mut child).code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let shutdown = text
        .lines()
        .find(|l| l.contains("closed cleanly"))
        .unwrap_or_else(|| panic!("{text}"));
    let dropped: u64 = shutdown
        .split(" of them unclassified")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the shutdown line counts the dropped reads: {shutdown}"));
    assert!(dropped > 0, "{shutdown}");
    assert!(
        text.contains("stale reads were not classified"),
        "the log says so as it happens: {text}"
    );
    // The findings log keeps the count, and status tells the operator what to do.
    let (entries, _) =
        lostwrite::findings::log::read(&f.image.with_extension("img.ledger")).unwrap();
    assert_eq!(
        lostwrite::findings::log::unclassified_since_verify(&entries).0,
        dropped
    );
    let status = crate::helpers::lw_ok(bin().arg("status").arg(&f.image));
    assert!(
        status.contains(&format!("{dropped} stale reads were not classified"))
            && status.contains("run `lostwrite verify`"),
        "{status}"
    );
    let json = crate::helpers::lw_ok(bin().args(["status", "--json"]).arg(&f.image));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["stale_reads_unclassified"], dropped);
    // A verify that read the page cache settles nothing.
    let o = bin()
        .args(["verify", "--cached"])
        .arg(&f.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let status = crate::helpers::lw_ok(bin().arg("status").arg(&f.image));
    assert!(status.contains("were not classified"), "{status}");
    // A whole-device verify of the media judges every block and settles them.
    let o = bin().arg("verify").arg(&f.image).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let status = crate::helpers::lw_ok(bin().arg("status").arg(&f.image));
    assert!(!status.contains("were not classified"), "{status}");
}

#[test]
fn a_ledger_that_tracks_nothing_verifies_nothing_and_says_so() {
    let s = Scratch::new(1 << 20);
    s.init(BS as u32, false);
    for cmd in ["verify", "report"] {
        let o = bin().arg(cmd).arg(&s.image).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {out}");
        assert!(!out.contains("OK"), "{cmd}: {out}");
    }
    let o = bin()
        .args(["verify", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], "nothing-tracked", "{v}");
}
