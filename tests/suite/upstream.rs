//! An NBD export as the device: `serve` in front of qemu-nbd (qcow2 and raw), and `init`,
//! `verify` and `report` reading through an export, with the ledger recognising its device by
//! URI.

use crate::helpers::{bin, lw_ok};
use crate::service::{fio, have, run, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BS: u64 = 4096;

/// An upstream NBD server (qemu-nbd or nbdkit), stopped by PID when dropped.
struct Upstream {
    child: Option<Child>,
    socket: PathBuf,
}

impl Upstream {
    /// `qemu-nbd -t -e 8 -f FORMAT -k SOCKET IMAGE` (plus `--read-only`), once it accepts.
    fn start(image: &Path, format: &str, socket: &Path, read_only: bool) -> Upstream {
        let _ = std::fs::remove_file(socket);
        let mut c = Command::new("qemu-nbd");
        c.args(["-t", "-e", "8", "-f", format, "-k"])
            .arg(socket)
            .arg("--cache=none")
            .arg("--aio=threads");
        if read_only {
            c.arg("--read-only");
        }
        let child = c
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "qemu-nbd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Upstream {
            child: Some(child),
            socket: socket.to_path_buf(),
        }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// SIGTERM and wait (qemu-nbd flushes and closes the image).
    fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// `init --baseline` through the upstream, then `serve` in front of it on `DIR/lw.sock`.
fn sidecar(up: &Upstream, ledger: &Path, dir: &Path) -> Service {
    lw_ok(
        bin()
            .args(["init", "--baseline", "--ledger"])
            .arg(ledger)
            .arg(up.uri()),
    );
    Service::start_on(
        Path::new(&up.uri()),
        &dir.join("lw.sock"),
        &["--ledger", ledger.to_str().unwrap()],
    )
}

/// `lostwrite ARGS --ledger LEDGER DEVICE`, asserting its exit status; (stdout, stderr).
fn lw(args: &[&str], ledger: &Path, device: &str, code: i32) -> (Vec<u8>, String) {
    let o = bin()
        .args(args)
        .arg("--ledger")
        .arg(ledger)
        .arg(device)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{args:?} {device}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (o.stdout, err)
}

fn tools(list: &[&str]) -> bool {
    list.iter().all(|t| have(t))
}

fn findings(out: &[u8]) -> BTreeMap<u64, Value> {
    let v: Value = serde_json::from_slice(out).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["block"].as_u64().unwrap(), f.clone()))
        .collect()
}

/// The scenario: a qcow2 image behind qemu-nbd behind `serve`, two flushed fio phases,
/// guest blocks reverted inside the qcow2 with qemu-io, then `verify` through a read-only
/// qemu-nbd names exactly those blocks.
#[test]
fn qcow2_behind_serve_reverted_guest_blocks_are_named_exactly() {
    if !tools(&["qemu-nbd", "qemu-img", "qemu-io", "fio", "nbdcopy"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, ledger) = (d.join("disk.qcow2"), d.join("ledger"));
    let size = 32u64 << 20;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg(size.to_string()));
    let up = Upstream::start(&img, "qcow2", &d.join("up.sock"), false);
    let svc = sidecar(&up, &ledger, d);
    // Every block written in each phase, with different contents, then flushed.
    for seed in ["1", "2"] {
        fio(
            &svc.uri(),
            &[
                "--rw=write",
                "--bs=64k",
                "--iodepth=8",
                "--size=100%",
                "--refill_buffers",
                &format!("--randseed={seed}"),
                "--end_fsync=1",
            ],
        );
        if seed == "1" {
            run(Command::new("nbdcopy")
                .arg(svc.uri())
                .arg(d.join("phase1.raw")));
        }
    }
    let log = svc.stop();
    assert!(log.contains("closed cleanly"), "{log}");
    up.stop();

    let phase1 = std::fs::read(d.join("phase1.raw")).unwrap();
    let reverted = [0u64, 3, 1000, 2047, 4096, 6001, 8191];
    let mut qio = Command::new("qemu-io");
    qio.args(["-f", "qcow2"]).arg(&img);
    for &b in &reverted {
        let f = d.join(format!("old-{b}"));
        std::fs::write(&f, &phase1[(b * BS) as usize..((b + 1) * BS) as usize]).unwrap();
        qio.arg("-c")
            .arg(format!("write -q -s {} {} 4k", f.display(), b * BS));
    }
    run(&mut qio);

    // The same URI as before, now read-only: the ledger recognises its device.
    let ro = Upstream::start(&img, "qcow2", &d.join("up.sock"), true);
    let (out, _) = lw(&["verify", "--json"], &ledger, &ro.uri(), 1);
    let got = findings(&out);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), reverted);
    for (b, f) in &got {
        assert_eq!(f["kind"], "reverted", "block {b}: {f}");
        // Baseline 0, phase 1 is generation 1, phase 2 generation 2.
        assert_eq!(f["found_generation"], 1, "block {b}: {f}");
        assert_eq!(f["expected_generation"], 2, "block {b}: {f}");
        assert_eq!(f["lost"][0]["durable"], true, "block {b}: {f}");
    }
    // The text report reads through the export too.
    let (out, _) = lw(&["report"], &ledger, &ro.uri(), 1);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("7 reverted") || text.contains("reverted: 7"),
        "{text}"
    );
    ro.stop();
}

/// A ledger made for a file refuses an export of the same contents unless told
/// `--device-moved`; a ledger made for an export refuses another export's URI.
#[test]
fn a_ledger_follows_its_device_to_an_export_only_when_told() {
    if !tools(&["qemu-nbd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("disk.raw");
    crate::helpers::random_image(&img, 4 << 20, 7);
    lw_ok(bin().args(["init", "--baseline"]).arg(&img));
    let ledger = PathBuf::from(format!("{}.ledger", img.display()));
    let up = Upstream::start(&img, "raw", &d.join("ro.sock"), true);
    let (_, err) = lw(&["verify"], &ledger, &up.uri(), 2);
    assert!(
        err.contains("--device-moved") && err.contains("nbd"),
        "{err}"
    );
    lw_ok(
        bin()
            .args(["verify", "--device-moved", "--ledger"])
            .arg(&ledger)
            .arg(up.uri()),
    );

    // A ledger made for the export names it by URI; a relative socket path is made absolute.
    let led2 = d.join("led2");
    let o = lw_ok(bin().current_dir(d).args([
        "init",
        "--baseline",
        "--ledger",
        "led2",
        "nbd+unix:///?socket=ro.sock",
    ]));
    assert!(o.contains(&up.uri()), "{o}");
    lw_ok(bin().args(["verify", "--ledger"]).arg(&led2).arg(up.uri()));
    let other = Upstream::start(&img, "raw", &d.join("other.sock"), true);
    let (_, err) = lw(&["verify"], &led2, &other.uri(), 2);
    assert!(
        err.contains("ro.sock") && err.contains("other.sock"),
        "{err}"
    );
    // serve refuses to write through a read-only export.
    let o = bin()
        .args(["serve", "--socket"])
        .arg(d.join("lw.sock"))
        .arg("--ledger")
        .arg(&led2)
        .arg(up.uri())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--read-only"), "{err}");
    other.stop();
    up.stop();
}

/// Bad URIs and unreachable servers are refused with the reason, exit status 2.
#[test]
fn bad_uris_and_absent_servers_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let led = dir.path().join("led");
    for (uri, why) in [
        ("nbd+unix:///disk", "?socket="),
        ("nbds://host/disk", "TLS"),
        ("nbd://host:0/disk", "port"),
        ("nbd+unix:///?socket=/nonexistent/sock", "/nonexistent/sock"),
    ] {
        let (_, err) = lw(&["verify"], &led, uri, 2);
        assert!(err.contains(why), "{uri}: {err}");
    }
    // No ledger directory can be derived from a URI.
    let o = bin()
        .args(["verify", "nbd+unix:///?socket=/s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ledger"));
}

/// The upstream dies mid-session: requests fail with an error (none hangs), the session is
/// not closed as clean, and what was flushed before stays verifiable.
#[test]
fn upstream_lost_mid_session_fails_requests_and_leaves_the_session_unclean() {
    if !tools(&["qemu-nbd"]) {
        return;
    }
    use lostwrite::nbd::client::Client;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("disk.raw");
    crate::helpers::random_image(&img, 4 << 20, 9);
    let ledger = d.join("led");
    let up = Upstream::start(&img, "raw", &d.join("up.sock"), false);
    let svc = sidecar(&up, &ledger, d);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    c.write(0, &[0xab; 8192], false).unwrap();
    c.flush().unwrap();
    drop(up); // SIGKILL: the upstream is gone.
    let e = c.write(8192, &[0xcd; 4096], false).unwrap_err();
    assert!(e.to_string().contains("error"), "{e}");
    assert!(c.flush().is_err());
    let mut buf = [0u8; 4096];
    assert!(c.read(0, &mut buf).is_err());
    drop(c);
    let (code, log) = svc.stop_status();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("connection to nbd+unix"), "{log}");
    assert!(log.contains("left unclosed"), "{log}");
    // The flushed write is in the image and verifies; the session counts as crashed.
    let ro = Upstream::start(&img, "raw", &d.join("up.sock"), true);
    let o = bin()
        .args(["verify", "--json", "--ledger"])
        .arg(&ledger)
        .arg(ro.uri())
        .output()
        .unwrap();
    // Exit 0 or 1: blocks written but never flushed may be judged; none may be reverted.
    assert!(matches!(o.status.code(), Some(0 | 1)), "{o:?}");
    let got = findings(&o.stdout);
    assert!(
        !got.contains_key(&0) && !got.contains_key(&1),
        "flushed blocks must verify: {got:?}"
    );
    assert!(
        got.values().all(|f| f["kind"] != "reverted"),
        "nothing flushed was lost: {got:?}"
    );
    let st = lw_ok(bin().args(["status", "--ledger"]).arg(&ledger));
    assert!(st.contains("(1 crashed)"), "{st}");
    assert!(st.contains(&format!("device   {}", ro.uri())), "{st}");
    ro.stop();
}

/// nbdkit upstream demanding 512-byte alignment, without WRITE_ZEROES and without multi-conn:
/// `serve` passes the minimum block size on, emulates zeroing with writes, keeps to one
/// upstream connection, and the result is byte-exact and verifies.
#[test]
fn nbdkit_upstream_constraints_are_honoured() {
    if !tools(&["nbdkit", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("disk.raw");
    crate::helpers::random_image(&img, 8 << 20, 11);
    let sock = d.join("nk.sock");
    let child = Command::new("nbdkit")
        .args(["-f", "-U"])
        .arg(&sock)
        .args([
            "--filter=blocksize-policy",
            "--filter=nozero",
            "--filter=multi-conn",
            "file",
        ])
        .arg(&img)
        .args([
            "blocksize-minimum=512",
            "blocksize-preferred=4096",
            "blocksize-maximum=1M",
            "zeromode=none",
            "multi-conn-mode=disable",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Upstream {
        child: Some(child),
        socket: sock.clone(),
    };
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nbdkit did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ledger = d.join("led");
    let svc = sidecar(&up, &ledger, d);
    let info: Value =
        serde_json::from_str(&run(Command::new("nbdinfo").arg("--json").arg(svc.uri()))).unwrap();
    assert_eq!(info["exports"][0]["block_size_minimum"], 512, "{info}");
    // Unaligned, zeroing, FUA and discard, through qemu's client (which aligns to 512 itself).
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", "write -P 0x11 100 3000"])
        .args(["-c", "write -z 8192 12288"])
        .args(["-c", "write -f -P 0x22 65536 4096"])
        .args(["-c", "discard 1M 1M"])
        .args(["-c", "flush"])
        .args(["-c", "read -P 0x11 100 3000"])
        .args(["-c", "read -P 0 8192 12288"])
        .args(["-c", "read -P 0x22 65536 4096"])
        .arg(svc.uri()));
    assert!(!out.contains("fail") && !out.contains("error"), "{out}");
    // A fast zeroing the upstream cannot do is refused before anything is recorded: the
    // block keeps its contents and stays tracked.
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -z -n 1048576 4096"])
        .arg(svc.uri())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("not supported"), "{out}");
    let log = svc.stop();
    assert!(log.contains("1 connection(s)"), "{log}");
    let raw = std::fs::read(&img).unwrap();
    assert!(raw[100..3100].iter().all(|&b| b == 0x11));
    assert!(raw[8192..20480].iter().all(|&b| b == 0));
    assert!(raw[65536..69632].iter().all(|&b| b == 0x22));
    lw_ok(
        bin()
            .args(["verify", "--ledger"])
            .arg(&ledger)
            .arg(up.uri()),
    );
    let st: Value = serde_json::from_str(&lw_ok(
        bin().args(["status", "--json", "--ledger"]).arg(&ledger),
    ))
    .unwrap();
    assert_eq!(st["blocks_unknown"], 0, "{st}");
    // Without recording there is no ledger to name.
    let plain = Service::start_on(
        Path::new(&up.uri()),
        &d.join("plain.sock"),
        &["--no-record"],
    );
    run(Command::new("nbdinfo").arg("--size").arg(plain.uri()));
    plain.stop();
    up.stop();
}

/// `report --files` on an export: debugfs reads the ext4 inside it through nbdfuse, and the
/// damaged block is named by its file; the view is unmounted afterwards.
#[test]
fn report_names_files_inside_an_export() {
    if !tools(&["qemu-nbd", "nbdfuse", "mkfs.ext4", "debugfs"]) || !crate::service::can_mount() {
        return;
    }
    use lostwrite::nbd::client::Client;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src/app");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = crate::helpers::Rng(5);
    let mut data = vec![0u8; 200_000];
    rng.fill(&mut data);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let img = d.join("fs.raw");
    run(Command::new("truncate").args(["-s", "32M"]).arg(&img));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(d.join("src"))
        .arg(&img));
    let out = run(Command::new("debugfs")
        .args(["-c", "-R", "bmap /app/data.bin 5"])
        .arg(&img)
        .stderr(Stdio::null()));
    let fs_block: u64 = out.trim().parse().unwrap();
    let ledger = d.join("led");
    let up = Upstream::start(&img, "raw", &d.join("up.sock"), false);
    let svc = sidecar(&up, &ledger, d);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let mut old = vec![0u8; BS as usize];
    c.read(fs_block * BS, &mut old).unwrap();
    c.write(fs_block * BS, &[0x5a; BS as usize], false).unwrap();
    c.flush().unwrap();
    c.disconnect().unwrap();
    svc.stop();
    // The flushed write is lost underneath: the upstream reads the old contents again.
    let mut w = Client::connect(&lostwrite::nbd::uri::NbdUri::parse(&up.uri()).unwrap()).unwrap();
    w.write(fs_block * BS, &old, true).unwrap();
    w.disconnect().unwrap();
    let (out, _) = lw(&["report", "--json", "--files"], &ledger, &up.uri(), 1);
    let v: Value = serde_json::from_slice(&out).unwrap();
    let files: Vec<&Value> = v["affected"].as_array().unwrap().iter().collect();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["path"], "/app/data.bin", "{v}");
    assert_eq!(files[0]["kinds"][0], "reverted", "{v}");
    assert_eq!(files[0]["bytes"][0][0], 5 * BS, "{v}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains("lostwrite-view"), "{mounts}");
    up.stop();
}
