//! Continuous operation: online detection with `--on-mismatch error` kept in the findings log,
//! Prometheus metrics, the alert hook, the background scrubber (classification, no false
//! findings under a write load, resuming after a restart), and many exports in one process.

use crate::helpers::*;
use crate::service::{fio, have, run, Service};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BS: u64 = 4096;

/// `GET path` from the metrics endpoint of a service (found in its log); (status, body).
fn http_get(svc: &Service, path: &str) -> (u32, String) {
    // The log line naming the address may come after the socket is ready: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let addr = loop {
        let log = svc.log_text();
        if let Some(a) = log
            .split("metrics on http://")
            .nth(1)
            .and_then(|r| r.split_once('/'))
        {
            break a.0.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics address in the log: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The value of one series in a metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn findings_log(ledger: &Path) -> Vec<Value> {
    std::fs::read_to_string(ledger.join("findings.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn qemu_io(uri: &str, cmds: &[&str]) -> std::process::Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    c.arg(uri).output().unwrap()
}

/// The issue's first check: a block written and flushed through the sidecar is changed in the
/// backing file underneath; a read of it fails, the metric counts it, the finding is in the
/// log and reaches the hook. Writing the block again and reading it clears the finding.
#[test]
fn a_block_changed_underneath_fails_its_read_and_is_logged_counted_and_alerted() {
    if !have("qemu-io") {
        return;
    }
    let s = Scratch::new(8 << 20);
    s.init(4096, true);
    let hook_out = s.dir.path().join("hook.json");
    let hook = format!("cat > {}", hook_out.display());
    let svc = Service::start(
        &s.image,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--on-mismatch",
            "error",
            "--on-finding",
            &hook,
            "--on-finding-interval",
            "1s",
        ],
    );
    let uri = svc.uri();
    let o = qemu_io(&uri, &["write -P 0x61 8192 4096", "flush"]);
    assert!(o.status.success(), "{o:?}");
    s.poke(2, &[0x62; 4096]);
    let o = qemu_io(&uri, &["read -P 0x61 8192 4096"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("Input/output error"), "{out}");
    wait_for("the finding in the log", || {
        !findings_log(&s.ledger).is_empty()
    });
    // The detector counts a finding just after its log line is synced.
    wait_for("the finding counted", || {
        metric(
            &http_get(&svc, "/metrics").1,
            r#"lostwrite_findings_total{export="",kind="corrupt"}"#,
        ) == Some(1.0)
    });
    let (code, m) = http_get(&svc, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(&m, r#"lostwrite_read_mismatches_total{export=""}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"lostwrite_findings_total{export="",kind="corrupt"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"lostwrite_findings_open{export=""}"#),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("lostwrite_flush_duration_seconds_bucket"), "{m}");
    let log = findings_log(&s.ledger);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (
            &log[0]["event"],
            &log[0]["source"],
            &log[0]["block"],
            &log[0]["kind"]
        ),
        (
            &"found".into(),
            &"read".into(),
            &2.into(),
            &"corrupt".into()
        ),
        "{log:?}"
    );
    wait_for("the hook", || {
        hook_out.exists() && std::fs::metadata(&hook_out).unwrap().len() > 0
    });
    std::thread::sleep(Duration::from_millis(100));
    let alert: Value = serde_json::from_slice(&std::fs::read(&hook_out).unwrap()).unwrap();
    assert_eq!(alert["findings"][0]["block"], 2, "{alert}");
    assert_eq!(alert["findings"][0]["kind"], "corrupt", "{alert}");
    assert_eq!(http_get(&svc, "/healthz").0, 200);

    // Written again, the block reads back right: the verification passes and clears it.
    let o = qemu_io(&uri, &["write -P 0x63 8192 4096", "read -P 0x63 8192 4096"]);
    assert!(o.status.success(), "{o:?}");
    let log = findings_log(&s.ledger);
    assert_eq!(log.last().unwrap()["event"], "cleared", "{log:?}");
    let (_, m) = http_get(&svc, "/metrics");
    assert_eq!(
        metric(&m, r#"lostwrite_findings_open{export=""}"#),
        Some(0.0),
        "{m}"
    );
    svc.stop();
    verify_clean(&s.image);
}

/// The scrubber finds a block reverted underneath within one pass and classifies it as
/// `verify` does; `verify` passing afterwards (once the block is put right) clears it.
#[test]
fn the_scrubber_finds_a_reverted_block_and_classifies_it_like_verify() {
    let s = Scratch::new(8 << 20);
    s.init(4096, true);
    let old = s.read_block(100, BS as usize);
    let svc = Service::start(
        &s.image,
        &[
            "--scrub-rate",
            "64",
            "--scrub-interval",
            "0s",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let mut c = lostwrite::nbd::client::Client::connect_unix(&svc.socket, "").unwrap();
    c.write(100 * BS, &[0x5a; BS as usize], false).unwrap();
    c.flush().unwrap();
    s.poke(100, &old);
    wait_for("a scrub finding", || !findings_log(&s.ledger).is_empty());
    let f = &findings_log(&s.ledger)[0];
    assert_eq!(
        (&f["source"], &f["block"]),
        (&"scrub".into(), &100.into()),
        "{f}"
    );
    assert_eq!(
        (&f["kind"], &f["found_generation"]),
        (&"reverted".into(), &0.into()),
        "{f}"
    );
    // The block may be found in the first pass (a scrubber that started late on a loaded
    // machine reaches block 100 after the poke), before the pass has counted all its blocks:
    // passes run back to back, so wait for the count rather than read it once.
    wait_for("a whole pass counted", || {
        metric(
            &http_get(&svc, "/metrics").1,
            r#"lostwrite_scrub_blocks_total{export=""}"#,
        )
        .is_some_and(|n| n >= 2048.0)
    });
    let (_, m) = http_get(&svc, "/metrics");
    assert!(
        metric(&m, r#"lostwrite_scrub_blocks_total{export=""}"#).unwrap() >= 2048.0,
        "{m}"
    );
    c.disconnect().unwrap();
    svc.stop();
    // verify says the same.
    let o = bin()
        .args(["verify", "--json"])
        .arg(&s.image)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let vf = &v["findings"][0];
    for k in ["block", "kind", "expected_generation", "found_generation"] {
        assert_eq!(vf[k], f[k], "{k}: verify {vf} scrub {f}");
    }
    // Put right, verified: the finding is cleared.
    s.poke(100, &[0x5a; BS as usize]);
    verify_clean(&s.image);
    assert_eq!(findings_log(&s.ledger).last().unwrap()["event"], "cleared");
    assert_eq!(findings_log(&s.ledger).last().unwrap()["source"], "verify");
}

/// Scrub passes back to back under a random-write load: no write in flight (or completed
/// during a scrub read) may become a finding.
#[test]
fn the_scrubber_makes_no_false_finding_under_a_write_load() {
    if !have("fio") {
        return;
    }
    // A small device scrubbed as fast as it goes: every write overlaps some scrub read.
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let svc = Service::start(
        &s.image,
        &[
            "--scrub-rate",
            "4096",
            "--scrub-interval",
            "0s",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    fio(
        &svc.uri(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=100%",
            "--time_based",
            "--runtime=4",
            "--fsync=32",
        ],
    );
    let (_, m) = http_get(&svc, "/metrics");
    let passes = metric(&m, r#"lostwrite_scrub_passes_total{export=""}"#).unwrap();
    assert!(
        passes >= 100.0,
        "the scrubber should have run while fio did: {m}"
    );
    assert_eq!(
        metric(&m, r#"lostwrite_read_mismatches_total{export=""}"#),
        Some(0.0)
    );
    let log = svc.stop();
    assert!(
        findings_log(&s.ledger).is_empty(),
        "{:?}\n{log}",
        findings_log(&s.ledger)
    );
    verify_clean(&s.image);
}

/// Reads racing writes to the same few blocks: online detection must never call a block
/// stale because a write was recorded but not yet on the device.
#[test]
fn reads_racing_writes_are_never_called_stale() {
    if !have("fio") {
        return;
    }
    let s = Scratch::new(256 << 10);
    s.init(4096, true);
    let svc = Service::start(&s.image, &["--metrics", "127.0.0.1:0"]);
    fio(
        &svc.uri(),
        &[
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=16",
            "--numjobs=2",
            "--size=100%",
            "--time_based",
            "--runtime=3",
        ],
    );
    let (_, m) = http_get(&svc, "/metrics");
    assert!(
        metric(&m, r#"lostwrite_reads_total{export=""}"#).unwrap() > 1000.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"lostwrite_read_mismatches_total{export=""}"#),
        Some(0.0),
        "{m}"
    );
    svc.stop();
    assert!(
        findings_log(&s.ledger).is_empty(),
        "{:?}",
        findings_log(&s.ledger)
    );
}

/// Stopped mid-pass, the scrubber saves where it stood; restarted, it goes on from there.
#[test]
fn the_scrubber_resumes_where_it_stopped() {
    let s = Scratch::new(16 << 20);
    s.init(4096, true);
    let svc = Service::start(&s.image, &["--scrub-rate", "4"]);
    std::thread::sleep(Duration::from_millis(1500));
    svc.stop();
    let st: Value =
        serde_json::from_slice(&std::fs::read(s.ledger.join("scrub.json")).unwrap()).unwrap();
    let at = st["next_block"].as_u64().unwrap();
    assert!(at > 0 && at < 4096, "{st}");
    let svc = Service::start(&s.image, &["--scrub-rate", "4"]);
    wait_for("the resume message", || {
        svc.log_text().contains("scrub resumes")
    });
    let log = svc.stop();
    assert!(log.contains(&format!("at block {at}")), "{log}");
}

/// Two exports in one process, each used by its own fio at once; `nbdinfo --list` shows both;
/// the metrics carry each export's label; an export whose device is missing is reported by
/// /healthz and does not stop the others.
#[test]
fn two_exports_in_one_process_with_a_third_missing() {
    if !have("fio") || !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs: Vec<PathBuf> = ["a.img", "b.img"].iter().map(|n| d.join(n)).collect();
    for (i, img) in imgs.iter().enumerate() {
        random_image(img, 8 << 20, 40 + i as u64);
        lw_ok(bin().args(["init", "--baseline"]).arg(img));
    }
    let sock = d.join("host.sock");
    let cfg = d.join("host.toml");
    // A fixed port (found free just now), so that `status --config` can read the metrics too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &cfg,
        format!(
            "socket = {sock:?}\nmetrics = \"127.0.0.1:{port}\"\n\n\
             [[export]]\nname = \"alpha\"\ndevice = {:?}\non_mismatch = \"error\"\n\n\
             [[export]]\nname = \"beta\"\ndevice = {:?}\n\n\
             [[export]]\nname = \"gone\"\ndevice = {:?}\n",
            imgs[0],
            imgs[1],
            d.join("missing.img")
        ),
    )
    .unwrap();
    let svc = Service::start_config(&cfg, &sock);
    let list = run(Command::new("nbdinfo")
        .arg("--list")
        .arg(format!("nbd+unix:///?socket={}", sock.display())));
    assert!(
        list.contains("export=\"alpha\"") && list.contains("export=\"beta\""),
        "{list}"
    );
    assert!(!list.contains("gone"), "{list}");
    std::thread::scope(|sc| {
        for name in ["alpha", "beta"] {
            let uri = format!("nbd+unix:///{name}?socket={}", sock.display());
            sc.spawn(move || {
                fio(
                    &uri,
                    &[
                        "--rw=randwrite",
                        "--bs=4k",
                        "--iodepth=8",
                        "--size=100%",
                        "--time_based",
                        "--runtime=2",
                        "--end_fsync=1",
                    ],
                )
            });
        }
    });
    let (_, m) = http_get(&svc, "/metrics");
    for name in ["alpha", "beta"] {
        let w = metric(&m, &format!("lostwrite_writes_total{{export=\"{name}\"}}")).unwrap();
        assert!(w > 100.0, "{name}: {m}");
    }
    let (code, body) = http_get(&svc, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("gone") && body.contains("missing.img"),
        "{body}"
    );
    // status --config: every export, live, the missing one as an error (exit 2).
    let o = bin()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    let st = st.as_array().unwrap();
    assert_eq!(st.len(), 3, "{st:?}");
    for (i, name) in ["alpha", "beta"].iter().enumerate() {
        assert_eq!(st[i]["export"], *name);
        assert_eq!(st[i]["service_running"], true, "{:?}", st[i]);
        assert_eq!(st[i]["clients"], 0.0, "{:?}", st[i]);
        assert!(st[i]["last_flush"].is_string(), "{:?}", st[i]);
        assert_eq!(st[i]["findings_open"], 0);
    }
    assert!(
        st[2]["error"].as_str().unwrap().contains("missing.img"),
        "{:?}",
        st[2]
    );
    let log = svc.stop();
    assert!(log.contains("export \"alpha\" closed cleanly"), "{log}");
    assert!(log.contains("export \"beta\" closed cleanly"), "{log}");
    for img in &imgs {
        verify_clean(img);
    }
}

/// `status --config` takes a running service's live figures from its `/status.json` route:
/// with one client connected it says `clients 1`, and `/metrics` still has the same figure.
#[test]
fn status_of_a_config_shows_the_client_connected_now() {
    use lostwrite::nbd::client::Client;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("a.img");
    random_image(&img, 4 << 20, 7);
    lw_ok(bin().args(["init", "--baseline"]).arg(&img));
    let sock = d.join("host.sock");
    let cfg = d.join("host.toml");
    // A fixed port (found free just now): `status` finds the service through the config file.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &cfg,
        format!(
            "socket = {sock:?}\nmetrics = \"127.0.0.1:{port}\"\n\n\
             [[export]]\nname = \"alpha\"\ndevice = {img:?}\n"
        ),
    )
    .unwrap();
    let svc = Service::start_config(&cfg, &sock);
    let _c = Client::connect_unix(&sock, "alpha").unwrap();
    // The server counts a client once its handshake is over, a moment after the client's.
    wait_for("the client to be counted", || {
        let (code, body) = http_get(&svc, "/status.json");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        code == 200 && v["exports"][0]["clients"] == 1
    });
    let (_, body) = http_get(&svc, "/status.json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["exports"][0]["export"], "alpha", "{body}");
    assert!(v["exports"][0]["session"].is_u64(), "{body}");
    let (_, m) = http_get(&svc, "/metrics");
    assert_eq!(
        metric(&m, "lostwrite_clients{export=\"alpha\"}"),
        Some(1.0),
        "{m}"
    );
    let out = lw_ok(bin().args(["status", "--config"]).arg(&cfg));
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["clients", "1"])),
        "{out}"
    );
    let o = bin()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st[0]["export"], "alpha", "{st}");
    assert_eq!(st[0]["clients"], 1, "{st}");
    drop(_c);
    let log = svc.stop();
    assert!(log.contains("export \"alpha\" closed cleanly"), "{log}");
}

/// `status --config` of a running service lists each export's connections (on the right
/// export, with their peers), its session, its last FLUSH and its findings, and an export that
/// could not be opened as not served; a client that leaves is gone from the list.
#[test]
fn status_of_a_config_lists_each_exports_clients_session_and_last_flush() {
    use lostwrite::nbd::client::Client;
    use lostwrite::nbd::uri::NbdUri;
    let started = jiff::Timestamp::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let imgs: Vec<PathBuf> = ["a.img", "b.img"].iter().map(|n| d.join(n)).collect();
    for (i, img) in imgs.iter().enumerate() {
        random_image(img, 4 << 20, 60 + i as u64);
        lw_ok(bin().args(["init", "--baseline"]).arg(img));
    }
    let sock = d.join("host.sock");
    let cfg = d.join("host.toml");
    // Fixed ports (found free just now): `status` finds the service through the config file.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, nbd_port) = (free(), free());
    std::fs::write(
        &cfg,
        format!(
            "socket = {sock:?}\nlisten = \"127.0.0.1:{nbd_port}\"\nmetrics = \"127.0.0.1:{port}\"\n\n\
             [[export]]\nname = \"alpha\"\ndevice = {:?}\n\n\
             [[export]]\nname = \"beta\"\ndevice = {:?}\njournal_sync = \"strict\"\n\n\
             [[export]]\nname = \"gone\"\ndevice = {:?}\n",
            imgs[0],
            imgs[1],
            d.join("missing.img")
        ),
    )
    .unwrap();
    let svc = Service::start_config(&cfg, &sock);
    // One client on alpha over the unix socket, one on beta over TCP.
    let mut a = Client::connect_unix(&sock, "alpha").unwrap();
    let b = Client::connect(&NbdUri::parse(&format!("nbd://127.0.0.1:{nbd_port}/beta")).unwrap())
        .unwrap();
    a.write(0, &vec![7u8; BS as usize], false).unwrap();
    a.flush().unwrap();
    let status = || -> Value {
        let o = bin()
            .args(["status", "--json", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        // Exit 2: the missing export's ledger cannot be read.
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // The server lists a client once its handshake is over, a moment after the client's.
    wait_for("both clients to be listed", || {
        let st = status();
        st[0]["clients"] == 1 && st[1]["clients"] == 1
    });
    let st = status();
    let (alpha, beta, gone) = (&st[0], &st[1], &st[2]);
    assert_eq!(alpha["export"], "alpha", "{st}");
    assert_eq!(beta["export"], "beta", "{st}");
    let conns = |e: &Value| e["live"]["connections"].as_array().unwrap().clone();
    let (ca, cb) = (conns(alpha), conns(beta));
    assert_eq!((ca.len(), cb.len()), (1, 1), "{st}");
    assert_eq!(ca[0]["peer"], "unix socket", "{st}");
    assert!(
        cb[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{st}"
    );
    assert_ne!(ca[0]["id"], cb[0]["id"], "{st}");
    // Two requests so far on alpha (the WRITE and the FLUSH), none on beta.
    assert_eq!(ca[0]["requests"], 2, "{st}");
    assert_eq!(ca[0]["written_bytes"], BS, "{st}");
    assert_eq!(cb[0]["requests"], 0, "{st}");
    let time = |v: &Value| -> jiff::Timestamp { v.as_str().unwrap().parse().unwrap() };
    assert!(time(&ca[0]["connected"]) >= started, "{st}");
    // Sessions: each its own, opened during this test, strict only where configured.
    for (e, strict) in [(alpha, false), (beta, true)] {
        let live = &e["live"];
        assert!(live["session"].as_u64().unwrap() >= 1, "{st}");
        assert!(time(&live["session_opened"]) >= started, "{st}");
        assert_eq!(live["session_strict"], strict, "{st}");
        assert_eq!(e["findings_open"], 0, "{st}");
        assert_eq!(live["findings_open"], 0, "{st}");
        assert_eq!(e["stale_reads_unclassified"], 0, "{st}");
        assert_eq!(live["stale_reads_unclassified"], 0, "{st}");
        assert!(e["not_served"].is_null(), "{st}");
    }
    // The last FLUSH: on alpha, after the test started, with how long it took; none on beta.
    assert!(time(&alpha["live"]["last_flush"]) >= started, "{st}");
    assert!(
        alpha["live"]["last_flush_seconds"].as_f64().unwrap() >= 0.0,
        "{st}"
    );
    assert!(beta["live"]["last_flush"].is_null(), "{st}");
    // The export that could not be opened is listed as not served, with the reason.
    assert_eq!(gone["export"], "gone", "{st}");
    assert!(
        gone["not_served"].as_str().unwrap().contains("missing.img"),
        "{st}"
    );
    // The same in text.
    let o = bin()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("connection ") && text.contains("from unix socket"),
        "{text}"
    );
    assert!(text.contains("NOT SERVED"), "{text}");
    assert!(text.contains("strict (every change durable"), "{text}");
    assert!(text.contains("(took "), "{text}");
    // A client that leaves is gone from the list; the other stays.
    b.disconnect().unwrap();
    wait_for("beta's client to leave the list", || {
        let st = status();
        st[1]["live"]["connections"]
            .as_array()
            .is_some_and(|c| c.is_empty())
            && st[0]["live"]["connections"].as_array().map(Vec::len) == Some(1)
    });
    drop(a);
    let log = svc.stop();
    assert!(log.contains("export \"alpha\" closed cleanly"), "{log}");
    assert!(log.contains("export \"beta\" closed cleanly"), "{log}");
    for img in &imgs {
        verify_clean(img);
    }
}

/// A config file with mistakes is refused before anything is served, naming the mistake.
#[test]
fn bad_config_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (text, why) in [
        ("socket = \"/tmp/x.sock\"\n", "no [[export]]"),
        ("[[export]]\ndevice = \"/x\"\n", "where to listen"),
        ("socket = \"/s\"\n[[export]]\nname = \"a\"\ndevice = \"/x\"\nspeed = 3\n", "speed"),
        (
            "socket = \"/s\"\n[[export]]\nname = \"a\"\ndevice = \"/x\"\n[[export]]\nname = \"a\"\ndevice = \"/y\"\n",
            "used twice",
        ),
        ("socket = \"/s\"\n[[export]]\ndevice = \"/x\"\nscrub_rate = 1\nscrub_interval = \"soon\"\n", "soon"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let o = bin().args(["serve", "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(why), "{text}: {err}");
    }
}

/// Type=notify: `serve` tells systemd READY=1 once it accepts connections and STOPPING=1 on
/// SIGTERM.
#[test]
fn serve_notifies_systemd_when_ready_and_when_stopping() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let notify = s.dir.path().join("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sock = s.dir.path().join("n.sock");
    let mut child = Command::new(bin().get_program())
        .arg("serve")
        .arg(&s.image)
        .arg("--socket")
        .arg(&sock)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let n = rx.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// `--log-json`: every log line of the service is a JSON object with a level and a message
/// (structured fields such as `export` included), for journald or a log shipper.
#[test]
fn serve_logs_json_lines_when_asked() {
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let svc = Service::start(
        &s.image,
        &["--log-json", "--scrub-rate", "64", "--scrub-interval", "1h"],
    );
    wait_for("a scrub pass", || {
        svc.log_text().contains("scrub pass 1 done")
    });
    let log = svc.stop();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 4, "{log}");
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["message"].is_string()));
    let pass = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("scrub pass 1 done"))
        .unwrap();
    // The unnamed export carries no (empty) export field.
    assert!(pass.get("export").is_none(), "{pass}");
}

/// A start that fails after the ledger could have been opened (here: the metrics port is
/// taken) opens no session: nothing is left behind that would count as a crash.
#[test]
fn a_failed_start_leaves_no_crashed_session_behind() {
    let s = Scratch::new(1 << 20);
    s.init(4096, true);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sock = s.dir.path().join("x.sock");
    let o = bin()
        .arg("serve")
        .arg(&s.image)
        .arg("--socket")
        .arg(&sock)
        .args(["--metrics", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics") && err.contains(&addr), "{err}");
    assert!(!sock.exists(), "the socket is removed again");
    let st: Value =
        serde_json::from_str(&lw_ok(bin().args(["status", "--json"]).arg(&s.image))).unwrap();
    assert_eq!(
        (st["sessions"].as_u64(), st["sessions_crashed"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}

/// A whole device restored from an old copy behind the sidecar: every block read is stale.
/// Every one is classified and kept, in a few log lines rather than one per block.
#[test]
fn a_device_restored_underneath_is_recorded_in_full_and_logged_in_brief() {
    use lostwrite::nbd::client::Client;
    let s = Scratch::new(4 << 20);
    s.init(4096, true);
    let old = std::fs::read(&s.image).unwrap();
    let svc = Service::start(&s.image, &["--metrics", "127.0.0.1:0"]);
    let mut c = Client::connect_unix(&svc.socket, "").unwrap();
    let mut rng = Rng(77);
    let mut new = vec![0u8; 4 << 20];
    rng.fill(&mut new);
    for (i, chunk) in new.chunks(256 << 10).enumerate() {
        c.write(i as u64 * (256 << 10), chunk, false).unwrap();
    }
    c.flush().unwrap();
    std::fs::write(&s.image, &old).unwrap();
    let mut buf = vec![0u8; 256 << 10];
    for i in 0..16u64 {
        c.read(i * (256 << 10), &mut buf).unwrap();
    }
    wait_for("1024 findings", || {
        let (_, m) = http_get(&svc, "/metrics");
        metric(&m, r#"lostwrite_findings_total{export="",kind="reverted"}"#) == Some(1024.0)
    });
    c.disconnect().unwrap();
    let log = svc.stop();
    let found = findings_log(&s.ledger)
        .iter()
        .filter(|e| e["event"] == "found" && e["kind"] == "reverted")
        .count();
    assert_eq!(found, 1024);
    let warn_lines = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warn_lines < 300,
        "{warn_lines} warning lines for one incident"
    );
    assert!(log.contains("more new findings in this batch"), "{log}");
}
