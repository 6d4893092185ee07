//! Real NBD clients against `lostwrite serve`: nbdinfo, qemu-io, qemu-img, nbdcopy and fio, over
//! the unix socket and TCP. Each test ends with the service stopped cleanly and `verify` clean.

use crate::helpers::*;
use crate::service::{fio, have, run, Service};
use std::process::Command;

const BS: usize = 4096;

#[test]
fn nbdinfo_sees_size_and_flags() {
    if !have("nbdinfo") {
        return;
    }
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    let out = run(Command::new("nbdinfo").arg("--json").arg(svc.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 8 << 20);
    for (k, want) in [
        ("can_flush", true),
        ("can_fua", true),
        ("can_trim", true),
        ("can_zero", true),
        ("can_fast_zero", true),
        ("can_multi_conn", true),
        ("is_read_only", false),
    ] {
        assert_eq!(e[k], want, "{k}: {out}");
    }
    assert_eq!(e["block_size_preferred"], 4096);
    svc.stop();
}

#[test]
fn qemu_io_patterns_aligned_and_unaligned_zero_discard_flush() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(8 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    let uri = format!("nbd+unix:///?socket={}", svc.socket.display());
    let cmds = [
        "write -P 0xa1 0 64k",
        "read -P 0xa1 0 64k",
        "write -P 0xb2 1000 3000",
        "read -P 0xb2 1000 3000",
        "read -P 0xa1 0 1000",
        "read -P 0xa1 4000 61536",
        "write -P 0xc3 65535 2",
        "read -P 0xc3 65535 2",
        "write -z 131072 65536",
        "read -P 0 131072 65536",
        "write -z 200001 5000",
        "read -P 0 200001 5000",
        "discard 262144 262144",
        "read -P 0 262144 262144",
        "write -f -P 0xd4 1m 4k",
        "read -P 0xd4 1m 4k",
        "flush",
    ];
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]).arg(&uri);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = run(&mut c);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // The same in writeback mode (no FUA on every write).
    let out = run(Command::new("qemu-io")
        .args(["-f", "raw", "-t", "writeback"])
        .arg(&uri)
        .args([
            "-c",
            "write -P 0xe5 2m 1m",
            "-c",
            "read -P 0xe5 2m 1m",
            "-c",
            "flush",
        ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    svc.stop();
    verify_clean(&s.image);
}

#[test]
fn qemu_img_convert_in_and_out_is_byte_exact() {
    if !have("qemu-img") {
        return;
    }
    let s = Scratch::new(16 << 20);
    s.init(BS as u32, true);
    let src = s.dir.path().join("src.raw");
    random_image(&src, 16 << 20, 99);
    let svc = Service::start(&s.image, &[]);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(svc.uri()));
    let back = s.dir.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(svc.uri())
        .arg(&back));
    svc.stop();
    let want = std::fs::read(&src).unwrap();
    assert!(std::fs::read(&back).unwrap() == want, "read back differs");
    assert!(std::fs::read(&s.image).unwrap() == want, "image differs");
    verify_clean(&s.image);
}

#[test]
fn nbdcopy_both_directions_with_several_connections() {
    if !have("nbdcopy") {
        return;
    }
    let s = Scratch::new(32 << 20);
    s.init(BS as u32, true);
    let src = s.dir.path().join("src.raw");
    random_image(&src, 32 << 20, 1234);
    let svc = Service::start(&s.image, &[]);
    run(Command::new("nbdcopy")
        .args(["--connections=4", "--threads=4", "--requests=64", "--flush"])
        .arg(&src)
        .arg(svc.uri()));
    let back = s.dir.path().join("back.raw");
    run(Command::new("nbdcopy")
        .args(["--connections=4", "--threads=4"])
        .arg(svc.uri())
        .arg(&back));
    let log = svc.stop();
    assert!(
        log.matches("serving export").count() >= 5,
        "several connections: {log}"
    );
    let want = std::fs::read(&src).unwrap();
    assert!(std::fs::read(&back).unwrap() == want, "read back differs");
    assert!(std::fs::read(&s.image).unwrap() == want, "image differs");
    verify_clean(&s.image);
}

#[test]
fn fio_random_writes_verify_at_qd16_on_several_jobs() {
    if !have("fio") {
        return;
    }
    let s = Scratch::new(64 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    fio(
        &svc.uri(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--numjobs=4",
            "--size=16m",
            "--offset_increment=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--fsync=64",
            "--end_fsync=1",
        ],
    );
    svc.stop();
    verify_clean(&s.image);
    // The ledger recorded what fio wrote: blocks written moved past generation 0.
    let l = s.open(lostwrite::ledger::Access::Read).unwrap();
    let written = (0..l.geometry().block_count())
        .filter(|&b| l.state(b).generation() > 0)
        .count();
    assert!(written > 4000, "only {written} blocks recorded");
}

#[test]
fn tcp_listener_serves_nbdinfo_and_qemu_io() {
    if !have("nbdinfo") || !have("qemu-io") {
        return;
    }
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let sock = s.dir.path().join("unused.sock");
    let svc = Service::start_tcp(&s.image, &addr, &sock);
    let uri = format!("nbd://{addr}");
    let out = run(Command::new("nbdinfo").arg("--size").arg(&uri));
    assert_eq!(out.trim(), (4u64 << 20).to_string());
    let out = run(Command::new("qemu-io").args(["-f", "raw"]).arg(&uri).args([
        "-c",
        "write -P 0x42 0 8k",
        "-c",
        "read -P 0x42 0 8k",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    svc.stop();
    verify_clean(&s.image);
}

#[test]
fn read_only_export_with_real_clients() {
    if !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &["--read-only"]);
    let out = run(Command::new("nbdinfo").arg("--json").arg(svc.uri()));
    assert!(out.contains("\"is_read_only\": true"), "{out}");
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-r"])
        .arg(svc.uri())
        .args(["-c", "read 0 4k"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(svc.uri())
        .args(["-c", "write -P 1 0 4k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !text.contains("wrote 4096"),
        "a write went through a read-only export: {text}"
    );
    svc.stop();
    verify_clean(&s.image);
}

#[test]
fn garbage_then_nbdinfo_still_answers() {
    if !have("nbdinfo") {
        return;
    }
    use std::io::Write;
    let s = Scratch::new(4 << 20);
    s.init(BS as u32, true);
    let svc = Service::start(&s.image, &[]);
    let mut rng = Rng(5);
    for _ in 0..50 {
        let mut c = std::os::unix::net::UnixStream::connect(&svc.socket).unwrap();
        let n = (rng.next() % 300) as usize;
        let _ = c.write_all(&rng.block(n));
    }
    let out = run(Command::new("nbdinfo").arg("--size").arg(svc.uri()));
    assert_eq!(out.trim(), (4u64 << 20).to_string());
    svc.stop();
}
