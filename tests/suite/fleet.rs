//! A host's disks in operation, through the real binary and real NBD clients: two clients on
//! one export as a live migration has them (writes on one connection, FLUSH on the other, and
//! the ledger counting those writes durable), and `serve` restarted under a running qemu client
//! that reconnects, without a failed request or a lost write; one process per disk, restarted
//! alone; and the systemd units in docs/.

use crate::helpers::*;
use crate::service::{have, wait_timeout, Service};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const BS: u64 = 4096;

/// A qemu-io that reads its commands from a pipe, so that it keeps its connection between them;
/// its output (stdout and stderr together) arrives line by line on `lines`.
struct QemuIo {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl QemuIo {
    /// qemu-io with `args` before the image (or `--image-opts`).
    fn spawn(args: &[&str]) -> QemuIo {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec qemu-io \"$@\" 2>&1")
            .arg("qemu-io")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        QemuIo {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command and waits for the line that says it is done (containing `done`).
    fn run(&mut self, cmd: &str, done: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{cmd}").unwrap();
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("qemu-io: no answer to {cmd:?}: {e}"));
            assert!(!l.contains("failed"), "qemu-io: {cmd:?}: {l}");
            if l.contains(done) {
                return;
            }
        }
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            eprintln!("qemu-io did not exit; killed");
        }
    }
}

/// `lostwrite history --json IMAGE BLOCKS...`: per block, its generations (oldest first).
fn generations(image: &Path, blocks: &[u64]) -> HashMap<u64, Vec<Value>> {
    let mut cmd = bin();
    cmd.args(["history", "--json"]).arg(image);
    cmd.args(blocks.iter().map(|b| b.to_string()));
    let v: Value = serde_json::from_str(&lw_ok(&mut cmd)).unwrap();
    v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["block"].as_u64().unwrap(),
                b["generations"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

/// Whether the last generation of `block` is recorded durable.
fn latest_durable(h: &HashMap<u64, Vec<Value>>, block: u64) -> bool {
    h[&block].last().unwrap()["durable"] == true
}

/// A migration's moment: the source's qemu writes on its connection and stays connected; the
/// destination's qemu, on a second connection, sends FLUSH. The export advertises
/// CAN_MULTI_CONN, so that FLUSH covers the source's completed write: the ledger records it
/// durable (a kill -9 right after shows it, before the source's disconnect could flush
/// anything). A write the source makes after that FLUSH is not durable: the source's own writes
/// do not flush (writeback cache), so what made the first one durable is the other connection.
#[test]
fn a_flush_on_one_connection_makes_writes_completed_on_another_durable() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    let uri = svc.uri();
    // qemu-nbd (beside qemu-io in every qemu package) names the flags the export advertises.
    let flags = crate::service::run(
        Command::new("qemu-nbd")
            .args(["--list", "-k"])
            .arg(&svc.socket),
    );
    assert!(
        flags.contains(" multi "),
        "CAN_MULTI_CONN not advertised: {flags}"
    );
    let mut source = QemuIo::spawn(&["-f", "raw", "-t", "writeback", &uri]);
    source.run(
        &format!("write -P 0x61 {} {BS}", 10 * BS),
        &format!("at offset {}", 10 * BS),
    );
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "flush", &uri])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    source.run(
        &format!("write -P 0x62 {} {BS}", 20 * BS),
        &format!("at offset {}", 20 * BS),
    );
    // A crash while the source is still connected: nothing flushes at its disconnect.
    svc.kill9();
    drop(source);
    let h = generations(&s.image, &[10, 20]);
    assert!(
        latest_durable(&h, 10),
        "the write before the other connection's FLUSH is not durable: {h:?}"
    );
    assert!(
        !latest_durable(&h, 20),
        "the write after the FLUSH is durable: the source flushed by itself: {h:?}"
    );
    assert_eq!(h[&10].len(), 2, "{h:?}");
    verify_clean(&s.image);
}

/// fio over two connections: one job writes without ever flushing, the other writes a block of
/// its own and flushes after each write; serve is killed with SIGKILL in the middle. The
/// writer's writes are durable in the ledger almost to the last (every FLUSH on the other
/// connection covered those completed before it), `verify` is clean, and a durable write
/// undone underneath afterwards is caught as reverted.
#[test]
fn fio_on_two_connections_then_kill_9_leaves_the_writes_the_other_flushed_durable() {
    if !have("fio") {
        return;
    }
    const WRITER_BLOCKS: u64 = 256;
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    let original = std::fs::read(&s.image).unwrap();
    let svc = Service::start(&s.image, &[]);
    let mut fio = Command::new("fio")
        .current_dir(s.dir.path())
        .args([
            "--ioengine=nbd",
            &format!("--uri={}", svc.uri()),
            "--verify_state_save=0",
            "--output-format=terse",
            "--time_based",
            "--runtime=30",
            "--bs=4k",
            "--name=writer",
            "--rw=randwrite",
            "--offset=0",
            &format!("--size={}", WRITER_BLOCKS * BS),
            "--rate_iops=2000",
            "--name=flusher",
            "--rw=write",
            "--offset=4m",
            "--size=4k",
            "--fsync=1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    svc.kill9();
    if wait_timeout(&mut fio, Duration::from_secs(30)).is_none() {
        eprintln!("fio did not exit after serve died; killed");
    }
    let blocks: Vec<u64> = (0..WRITER_BLOCKS).collect();
    let h = generations(&s.image, &blocks);
    let writes: Vec<&Value> = h
        .values()
        .flat_map(|g| g.iter().filter(|g| g["change"] == "write"))
        .collect();
    let durable = writes.iter().filter(|g| g["durable"] == true).count();
    assert!(writes.len() >= 500, "only {} writes recorded", writes.len());
    // The writer never flushed: only the other connection's FLUSHes made these durable. The
    // few after its last FLUSH are not.
    assert!(
        durable * 10 >= writes.len() * 9,
        "{durable} of {} writes durable",
        writes.len()
    );
    verify_clean(&s.image);
    // Undo a durable write underneath: verify must call it reverted.
    let b = *blocks
        .iter()
        .find(|&&b| h[&b].len() > 1 && latest_durable(&h, b))
        .unwrap();
    let at = (b * BS) as usize;
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(&s.image)
            .unwrap(),
        &original[at..at + BS as usize],
        b * BS,
    )
    .unwrap();
    let o = bin().arg("verify").arg(&s.image).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("reverted"), "{out}");
}

/// The upgrade procedure: `serve` is stopped (SIGTERM) and started again on the same socket and
/// ledger, several times, while a qemu client with `reconnect-delay` writes and flushes in a
/// tight loop. No request fails, every flushed write is on the disk, `verify` is clean.
#[test]
fn restarting_serve_under_a_reconnecting_qemu_fails_no_request_and_loses_no_write() {
    if !have("qemu-io") {
        return;
    }
    const BLOCKS: u64 = 256;
    const RESTARTS: usize = 10;
    let s = Scratch::new(BLOCKS * BS);
    s.init(BS as u32, true);
    let socket = s.dir.path().join("serve.sock");
    let mut svc = Service::start_on(&s.image, &socket, &[]);
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},reconnect-delay=20",
        socket.display()
    );
    let mut q = QemuIo::spawn(&["--image-opts", &opts]);
    // The feeder sends write-and-flush pairs until told to stop; the last pattern sent for a
    // block is what the disk must hold at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let mut stdin = q.stdin.take().unwrap();
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut last = HashMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (b, pat) = (i % BLOCKS, i % 255 + 1);
                writeln!(stdin, "write -P {pat} {} {BS}\nflush", b * BS).unwrap();
                last.insert(b, pat as u8);
                i += 1;
            }
            (i, last)
        })
    };
    let mut sessions = Vec::new();
    for _ in 0..RESTARTS {
        std::thread::sleep(Duration::from_millis(300));
        sessions.push(svc.stop());
        svc = Service::start_on(&s.image, &socket, &[]);
    }
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    let (sent, last) = feeder.join().unwrap();
    let status = wait_timeout(&mut q.child, Duration::from_secs(60));
    let out: Vec<String> = q.lines.try_iter().collect();
    let failed: Vec<&String> = out.iter().filter(|l| l.contains("failed")).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(status.is_some_and(|s| s.success()), "qemu-io: {status:?}");
    let wrote = out.iter().filter(|l| l.contains("wrote 4096/4096")).count();
    assert_eq!(wrote as u64, sent, "writes answered / sent");
    sessions.push(svc.stop());
    for (i, log) in sessions.iter().enumerate() {
        assert!(log.contains("closed cleanly"), "session {i}: {log}");
    }
    let image = std::fs::read(&s.image).unwrap();
    for (&b, &pat) in &last {
        let at = (b * BS) as usize;
        assert!(
            image[at..at + BS as usize].iter().all(|&x| x == pat),
            "block {b} does not hold its last flushed write ({pat:#x})"
        );
    }
    verify_clean(&s.image);
    eprintln!("{RESTARTS} restarts under {sent} write+flush pairs: none failed, none lost");
}

/// The systemd units in docs/ (one process for the host's disks, and the template for one
/// process per disk) pass `systemd-analyze verify` without a complaint, with their
/// `/usr/local/bin/lostwrite` standing for the binary built here.
#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = bin().get_program().to_str().unwrap().to_string();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    // The template is checked as an instance of itself, as systemd would start it.
    let mut units = Vec::new();
    for (from, to) in [
        ("lostwrite.service", "lostwrite.service"),
        ("lostwrite@.service", "lostwrite@web1.service"),
    ] {
        let text = std::fs::read_to_string(docs.join(from)).unwrap();
        assert!(
            text.contains("/usr/local/bin/lostwrite serve --config"),
            "{from}"
        );
        let path = dir.path().join(to);
        std::fs::write(&path, text.replace("/usr/local/bin/lostwrite", &exe)).unwrap();
        units.push(path);
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let complaints: Vec<&str> = err.lines().filter(|l| l.contains("lostwrite")).collect();
    assert!(
        o.status.success() && complaints.is_empty(),
        "{}: {err}",
        o.status
    );
}

/// One process per disk, as `lostwrite@.service` runs them: each disk with its own config file
/// and socket. Restarting one disk's process twice leaves fio on the other disk without an
/// error, and both ledgers verify clean.
#[test]
fn restarting_one_disks_process_leaves_another_disks_client_untouched() {
    if !have("fio") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let image = dir.path().join(format!("{name}.img"));
        if !image.exists() {
            random_image(&image, 8 << 20, name.len() as u64);
            lw_ok(bin().args(["init", "--baseline"]).arg(&image));
        }
        let socket = dir.path().join(format!("{name}.sock"));
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!("socket = {socket:?}\n\n[[export]]\nname = {name:?}\ndevice = {image:?}\n"),
        )
        .unwrap();
        (Service::start_config(&cfg, &socket), image)
    };
    let (mut web1, image1) = start("web1");
    let (db1, image2) = start("db1");
    let uri = format!("nbd+unix:///db1?socket={}", db1.socket.display());
    let load = std::thread::spawn(move || {
        crate::service::fio(
            &uri,
            &[
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=8",
                "--fsync=16",
                "--size=100%",
                "--time_based",
                "--runtime=3",
            ],
        )
    });
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(800));
        assert!(web1.stop().contains("closed cleanly"));
        web1 = start("web1").0;
    }
    load.join().unwrap();
    let log = db1.stop();
    assert!(
        log.contains("closed cleanly") && log.contains(" 0 errors"),
        "{log}"
    );
    web1.stop();
    verify_clean(&image1);
    verify_clean(&image2);
}
