//! Reloading a running `serve --config` (SIGHUP, or `lostwrite reload`), through the real binary
//! and real NBD clients: new exports open, removed ones drain and close their ledger session
//! cleanly, changed ones restart alone, and connections to the others never notice; a reload
//! that cannot be applied (a file that does not parse, a device another process holds, a device
//! moving between exports) changes nothing and says why, in its exit status, the log and the
//! metrics endpoint.

use crate::helpers::*;
use crate::service::{fio, have, run, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A host directory: images (each with a baselined ledger), a config file and its metrics port.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    cfg: PathBuf,
    sock: PathBuf,
    port: u16,
}

impl Fixture {
    fn new(images: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        for n in images {
            let img = d.join(format!("{n}.img"));
            random_image(&img, 8 << 20, n.len() as u64 + 7);
            lw_ok(bin().args(["init", "--baseline"]).arg(&img));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Fixture {
            cfg: d.join("host.toml"),
            sock: d.join("host.sock"),
            dir: d,
            _dir: dir,
            port,
        }
    }

    fn image(&self, n: &str) -> PathBuf {
        self.dir.join(format!("{n}.img"))
    }

    /// Writes the config: the host's socket and metrics, then one export per (name, extra
    /// lines), each on `NAME.img`.
    fn write(&self, exports: &[(&str, &str)]) {
        let mut t = format!(
            "socket = {:?}\nmetrics = \"127.0.0.1:{}\"\n",
            self.sock, self.port
        );
        for (n, extra) in exports {
            t += &format!(
                "\n[[export]]\nname = {n:?}\ndevice = {:?}\n{extra}",
                self.image(n)
            );
        }
        std::fs::write(&self.cfg, t).unwrap();
    }

    fn start(&self) -> Service {
        Service::start_config(&self.cfg, &self.sock)
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }

    /// `lostwrite reload --config`: exit code, stdout, stderr.
    fn reload(&self) -> (i32, String, String) {
        let o = bin()
            .args(["reload", "--config"])
            .arg(&self.cfg)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n").unwrap().1.to_string()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status.json")).unwrap()
    }

    /// The live figures of one export, or Null when it is not served.
    fn export(&self, name: &str) -> Value {
        self.status()["exports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["export"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Names the server lists (NBD_OPT_LIST).
    fn listed(&self) -> Vec<String> {
        let out = run(Command::new("nbdinfo")
            .arg("--list")
            .arg(format!("nbd+unix:///?socket={}", self.sock.display())));
        out.lines()
            .filter_map(|l| l.strip_prefix("export=\""))
            .map(|l| l.trim_end_matches(['"', ':']).to_string())
            .collect()
    }
}

/// The connection ids in transmission on an export.
fn connections(e: &Value) -> Vec<u64> {
    e["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

/// qemu-io writes a pattern to an export, reads it back, and checks it.
fn write_and_read(uri: &str, pattern: u8) {
    let p = format!("{pattern:#x}");
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P {p} 0 64k"),
        "-c",
        "flush",
        "-c",
        &format!("read -P {p} 0 64k"),
        uri,
    ]));
    assert!(
        !out.contains("fail") && !out.contains("Pattern verification"),
        "{out}"
    );
}

/// A qemu-io that stays connected (its commands come from a pipe held open) until dropped.
struct Held(Child);

impl Held {
    fn connect(uri: &str) -> Held {
        Held(
            Command::new("qemu-io")
                .args(["-f", "raw", uri])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        if crate::service::wait_timeout(&mut self.0, Duration::from_secs(10)).is_none() {
            eprintln!("qemu-io did not exit; killed");
        }
    }
}

/// The last session of an export's ledger, as `lostwrite status` describes it.
fn last_session(image: &Path) -> String {
    let v: Value =
        serde_json::from_str(&lw_ok(bin().args(["status", "--json"]).arg(image))).unwrap();
    assert_eq!(v["sessions_crashed"], 0, "{v}");
    v["last_session"].as_str().unwrap_or("").to_string()
}

fn hup(svc: &Service) {
    kill(Pid::from_raw(svc.pid() as i32), Signal::SIGHUP).unwrap();
}

/// The test: a reload under fio on another export. fio's connection to "a" lives
/// through it (the same connection, closed only after the reload, and fio ends with no error);
/// the new export "c" serves; the removed export "b" drains and its ledger session closes
/// cleanly; verify is clean on every image afterwards.
#[test]
fn a_reload_under_fio_opens_and_closes_exports_and_the_other_connection_never_notices() {
    if !have("fio") || !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let f = Fixture::new(&["a", "b", "c"]);
    f.write(&[("a", ""), ("b", "")]);
    let svc = f.start();
    write_and_read(&f.uri("b"), 0x5b);
    let held_b = Held::connect(&f.uri("b"));
    wait_for("qemu-io on b", || f.export("b")["clients"] == 1);
    let uri = f.uri("a");
    let before = std::thread::scope(|sc| {
        let job = sc.spawn(|| {
            fio(
                &uri,
                &[
                    "--rw=randrw",
                    "--bs=4k",
                    "--iodepth=8",
                    "--size=100%",
                    "--time_based",
                    "--runtime=8",
                    "--end_fsync=1",
                ],
            )
        });
        // fio's nbd engine first connects only to learn the size: wait for the connection
        // that does I/O.
        wait_for("fio's I/O on a", || {
            let e = f.export("a");
            e["clients"] == 1 && e["connections"][0]["requests"].as_u64() > Some(0)
        });
        let before = connections(&f.export("a"));
        f.write(&[("a", ""), ("c", "")]);
        let (code, out, err) = f.reload();
        assert_eq!(code, 0, "{out}{err}");
        for line in [
            "opened     c",
            "closed     b",
            "restarted  none",
            "unchanged  a",
        ] {
            assert!(out.contains(line), "{line:?} in: {out}");
        }
        let after = connections(&f.export("a"));
        assert_eq!(before, after, "a's connections changed under the reload");
        assert_eq!(f.listed(), ["a", "c"]);
        assert_eq!(f.export("b"), Value::Null);
        write_and_read(&f.uri("c"), 0x5c);
        let terse = job.join().unwrap();
        assert!(!terse.is_empty());
        before
    });
    assert_eq!(f.export("a")["errors"], 0);
    drop(held_b);
    let log = svc.stop();
    // The log is complete once serve has exited: fio's connection closed after the reload.
    let applied = log.find("reload of ").expect("a reload line");
    for id in before {
        let closed = log
            .find(&format!("connection {id} closed after"))
            .unwrap_or_else(|| panic!("connection {id} never closed: {log}"));
        assert!(
            closed > applied,
            "connection {id} closed before the reload: {log}"
        );
    }
    let b_closed = log
        .find("export \"b\" closed cleanly")
        .expect("b closed cleanly");
    assert!(b_closed < log.find("signal 15").unwrap(), "{log}");
    assert!(
        log.contains("export \"b\": removed or changed by a reload; 1 connection(s) drained"),
        "{log}"
    );
    assert!(last_session(&f.image("b")).contains("closed cleanly"));
    lw_ok(bin().args(["ledger", "check"]).arg(f.image("b")));
    for n in ["a", "b", "c"] {
        verify_clean(&f.image(n));
    }
}

/// A changed export (any setting) restarts alone: its client is disconnected and it opens a new
/// session, while the connection to the unchanged export stays. Asked for by SIGHUP.
#[test]
fn sighup_restarts_a_changed_export_alone() {
    if !have("qemu-io") {
        return;
    }
    let f = Fixture::new(&["a", "c"]);
    f.write(&[("a", ""), ("c", "")]);
    let svc = f.start();
    let _held_a = Held::connect(&f.uri("a"));
    let _held_c = Held::connect(&f.uri("c"));
    wait_for("both clients", || {
        f.export("a")["clients"] == 1 && f.export("c")["clients"] == 1
    });
    let a_before = connections(&f.export("a"));
    let c_session = f.export("c")["session"].as_u64().unwrap();
    f.write(&[("a", ""), ("c", "on_mismatch = \"error\"\n")]);
    hup(&svc);
    wait_for("the reload", || f.status()["reloads"]["applied"] == 1);
    let st = f.status();
    assert_eq!(st["reloads"]["last"]["applied"], true, "{st}");
    assert_eq!(connections(&f.export("a")), a_before);
    let c = f.export("c");
    assert_eq!(c["clients"], 0, "{c}");
    assert_eq!(c["session"].as_u64(), Some(c_session + 1), "{c}");
    write_and_read(&f.uri("c"), 0x3c);
    // The log is written behind the service's back: wait for the line.
    wait_for("the reload's log line", || {
        svc.log_text().contains("restarted c; 1 unchanged")
    });
    assert!(!svc.log_text().contains("export \"a\" closed"));
    drop((_held_a, _held_c));
    svc.stop();
    verify_clean(&f.image("a"));
    verify_clean(&f.image("c"));
}

/// A file that does not parse changes nothing: `reload` says so and exits 2 without asking the
/// server; SIGHUP is refused by the server, which says why in its log, `/status.json` and
/// `/metrics`; a file the server refuses (an unknown key) is refused through `reload` with the
/// server's reason. Every export still serves.
#[test]
fn a_config_that_does_not_parse_changes_nothing() {
    if !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let f = Fixture::new(&["a", "b"]);
    f.write(&[("a", ""), ("b", "")]);
    let svc = f.start();
    let good = std::fs::read_to_string(&f.cfg).unwrap();
    std::fs::write(
        &f.cfg,
        good.replace("[[export]]\nname = \"b\"", "[[export\nname = \"b\""),
    )
    .unwrap();
    let (code, out, err) = f.reload();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    hup(&svc);
    wait_for("the refusal", || f.status()["reloads"]["refused"] == 1);
    let st = f.status();
    let reason = st["reloads"]["last"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("host.toml") && reason.contains("TOML"),
        "{reason}"
    );
    let m = f.get("/metrics");
    assert!(
        m.contains("lostwrite_reloads_total{outcome=\"refused\"} 1"),
        "{m}"
    );
    assert!(m.contains("lostwrite_last_reload_applied 0"), "{m}");
    wait_for("the refusal's log line", || {
        svc.log_text().contains("refused, nothing changed")
    });
    // Parses as TOML, but the server refuses it; it names the key.
    f.write(&[("b", "speed = 3\n")]);
    let (code, out, err) = f.reload();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("refused, nothing changed") && err.contains("speed"),
        "{err}"
    );
    assert_eq!(f.listed(), ["a", "b"]);
    write_and_read(&f.uri("a"), 0x1a);
    write_and_read(&f.uri("b"), 0x1b);
    assert_eq!(f.status()["reloads"]["refused"], 2);
    // `status --config` tells an operator the same in its human form.
    std::fs::write(&f.cfg, &good).unwrap();
    let o = bin()
        .arg("status")
        .arg("--config")
        .arg(&f.cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("reloads  0 applied, 2 refused; the last at")
            && text.contains("refused: ")
            && text.contains("speed"),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    svc.stop();
    verify_clean(&f.image("a"));
    verify_clean(&f.image("b"));
}

/// A config naming a device another process holds (here another `serve`) changes nothing: not
/// even the other new export's ledger gets a session, and the removed export keeps serving. A
/// device that moves from one export to another in one reload is refused too.
#[test]
fn a_config_naming_a_device_held_elsewhere_changes_nothing() {
    if !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let f = Fixture::new(&["a", "b", "c"]);
    f.write(&[("a", "")]);
    let svc = f.start();
    let other = Service::start(&f.image("c"), &[]);
    f.write(&[("b", ""), ("c", "")]);
    let (code, out, err) = f.reload();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("refused, nothing changed") && err.contains("c.img"),
        "{err}"
    );
    assert!(
        err.contains(&other.pid().to_string()),
        "the holder is named: {err}"
    );
    assert_eq!(f.listed(), ["a"]);
    write_and_read(&f.uri("a"), 0x2a);
    let v: Value =
        serde_json::from_str(&lw_ok(bin().args(["status", "--json"]).arg(f.image("b")))).unwrap();
    assert_eq!(v["sessions"], 0, "b's ledger was opened: {v}");
    // a's device, given up by a and taken by "moved", in one reload.
    let t = std::fs::read_to_string(&f.cfg).unwrap();
    let moved = format!(
        "socket = {:?}\nmetrics = \"127.0.0.1:{}\"\n\n[[export]]\nname = \"moved\"\ndevice = {:?}\n",
        f.sock,
        f.port,
        f.image("a")
    );
    assert!(t.contains("c.img"));
    std::fs::write(&f.cfg, moved).unwrap();
    let (code, out, err) = f.reload();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("gives up in the same reload"), "{err}");
    assert_eq!(f.listed(), ["a"]);
    assert_eq!(f.status()["reloads"]["refused"], 2);
    other.stop();
    svc.stop();
    for n in ["a", "b", "c"] {
        verify_clean(&f.image(n));
    }
}

/// A client still negotiating (greeted, no export chosen yet) holds no export: removing one
/// under it closes that export's session cleanly, and the client can still pick another.
#[test]
fn a_client_still_negotiating_does_not_keep_a_removed_export_open() {
    use std::os::unix::net::UnixStream;
    let f = Fixture::new(&["a", "b"]);
    f.write(&[("a", ""), ("b", "")]);
    let svc = f.start();
    let mut c = UnixStream::connect(&f.sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    // FIXED_NEWSTYLE | NO_ZEROES, then nothing: negotiation is open.
    c.write_all(&3u32.to_be_bytes()).unwrap();
    f.write(&[("a", "")]);
    let (code, out, err) = f.reload();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("closed     b"), "{out}");
    wait_for("b's closing line", || {
        svc.log_text().contains("export \"b\" closed cleanly")
    });
    // The negotiating client goes on: NBD_OPT_EXPORT_NAME "a" enters transmission.
    let mut opt = Vec::new();
    opt.extend_from_slice(&0x49484156454F5054u64.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.push(b'a');
    c.write_all(&opt).unwrap();
    let mut reply = [0u8; 10];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 8 << 20);
    drop(c);
    svc.stop();
    assert!(last_session(&f.image("b")).contains("closed cleanly"));
}

/// A changed export that keeps its device can only reopen after its old self closed; when its
/// new settings then fail (here a block size its ledger does not have), its old settings are
/// reopened, it serves again, and `reload` says so with exit 2.
#[test]
fn a_changed_export_whose_new_settings_fail_reopens_with_its_old_ones() {
    if !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let f = Fixture::new(&["a", "c"]);
    f.write(&[("a", ""), ("c", "")]);
    let svc = f.start();
    f.write(&[("a", ""), ("c", "block_size = 8192\n")]);
    let (code, out, err) = f.reload();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("reload applied, except: export \"c\" could not reopen with its new settings")
            && err.contains("8192")
            && err.contains("its old settings were reopened"),
        "{err}"
    );
    assert_eq!(f.listed(), ["a", "c"]);
    write_and_read(&f.uri("c"), 0x4c);
    let st = f.status();
    assert_eq!(st["reloads"]["applied"], 1, "{st}");
    assert!(st["reloads"]["last"]["reason"]
        .as_str()
        .unwrap()
        .contains("old settings"));
    svc.stop();
    assert!(last_session(&f.image("c")).contains("closed cleanly"));
    verify_clean(&f.image("c"));
}
