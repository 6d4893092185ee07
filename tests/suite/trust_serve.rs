//! Trust on a real host, on the `serve` side: nothing but a stale socket is ever removed, every
//! wait on an upstream or a client has a deadline (SIGTERM ends `serve` within a bound whatever
//! they do), the export-name contract holds, and the messages say what to do.

use crate::helpers::*;
use crate::nbd_client::*;
use crate::service::{have, wait_timeout, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BS: u32 = 4096;
const SIZE: u64 = 4 << 20;

/// Starts `lostwrite ARGS...` with its stderr in `log`.
fn spawn(args: &[&str], log: &Path) -> Child {
    Command::new(bin().get_program())
        .args(args)
        .env("LOSTWRITE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Runs `lostwrite serve ARGS...`, which must give up with exit 2 (rather than serve); returns
/// its stderr.
fn serve_refused(args: &[&str], log: &Path) -> String {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut c = spawn(&all, log);
    let st = wait_timeout(&mut c, Duration::from_secs(30));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(st.and_then(|s| s.code()), Some(2), "serve {args:?}: {text}");
    text
}

fn scratch() -> Scratch {
    let s = Scratch::new(SIZE);
    s.init(BS, true);
    s
}

#[test]
fn a_file_directory_or_link_at_the_socket_path_is_never_removed() {
    let s = scratch();
    let img = s.image.to_str().unwrap();
    let before = std::fs::read(&s.image).unwrap();
    let log = s.dir.path().join("serve.log");
    // `serve vm.img --socket vm.img` once deleted the disk image.
    let err = serve_refused(&[img, "--socket", img], &log);
    assert!(err.contains(img) && err.contains("regular file"), "{err}");
    assert_eq!(
        std::fs::read(&s.image).unwrap(),
        before,
        "the image changed"
    );
    // The default DEVICE.sock, when a file of that name is there.
    let dflt = s.dir.path().join("disk.img.sock");
    std::fs::write(&dflt, b"precious").unwrap();
    let err = serve_refused(&[img], &log);
    assert!(err.contains(dflt.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(&dflt).unwrap(), b"precious");
    // A directory.
    let dir = s.dir.path().join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"x").unwrap();
    let err = serve_refused(&[img, "--socket", dir.to_str().unwrap()], &log);
    assert!(err.contains("directory"), "{err}");
    assert!(dir.join("inside").exists());
    // A symbolic link to a file: neither the link nor its target is touched.
    let target = s.dir.path().join("target");
    std::fs::write(&target, b"target data").unwrap();
    let link = s.dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = serve_refused(&[img, "--socket", link.to_str().unwrap()], &log);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"target data");
    // The same through a config file's `socket =`.
    let cfg = s.dir.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = {:?}\n[[export]]\nname = \"d\"\ndevice = {img:?}\n",
            img
        ),
    )
    .unwrap();
    let err = serve_refused(&["--config", cfg.to_str().unwrap()], &log);
    assert!(err.contains("regular file"), "{err}");
    assert_eq!(
        std::fs::read(&s.image).unwrap(),
        before,
        "the image changed"
    );
    // Nothing was opened: no session was begun and abandoned.
    verify_clean(&s.image);
}

#[test]
fn a_live_socket_is_left_alone_a_stale_one_replaced_and_only_our_socket_removed_at_exit() {
    let s = scratch();
    let img = s.image.to_str().unwrap();
    let log = s.dir.path().join("serve.log");
    // A plain listening socket: refused, and it keeps working.
    let live = s.dir.path().join("live.sock");
    let l = UnixListener::bind(&live).unwrap();
    let err = serve_refused(&[img, "--socket", live.to_str().unwrap()], &log);
    assert!(err.contains("listening"), "{err}");
    let _c = UnixStream::connect(&live).unwrap();
    l.accept().unwrap();
    drop(l);
    // Another serve: refused, and the first one still serves.
    let first = Service::start(&s.image, &[]);
    let err = serve_refused(&[img, "--socket", first.socket.to_str().unwrap()], &log);
    assert!(err.contains("listening"), "{err}");
    let mut c = Client::connect(&first.socket, "");
    assert_eq!(c.read(0, 512).len(), 512);
    drop(c);
    first.stop();
    // A stale socket (its server gone): replaced, and serve works.
    let stale = s.dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let svc = Service::start_on(&s.image, &stale, &[]);
    let mut c = Client::connect(&stale, "");
    c.write(0, &[7u8; 4096]);
    drop(c);
    // Whatever replaced our socket while serving is not removed at shutdown.
    let other = s.dir.path().join("other");
    std::fs::write(&other, b"not a socket").unwrap();
    std::fs::rename(&other, &stale).unwrap();
    let out = svc.stop();
    assert_eq!(std::fs::read(&stale).unwrap(), b"not a socket", "{out}");
    // Our own socket is removed at shutdown.
    std::fs::remove_file(&stale).unwrap();
    let svc = Service::start_on(&s.image, &stale, &[]);
    svc.stop();
    assert!(!stale.exists());
    verify_clean(&s.image);
}

/// A config file listening on `socket` with one export of `image` and the extra `lines`.
fn one_export_config(s: &Scratch, socket: &Path, lines: &str) -> std::path::PathBuf {
    let cfg = s.dir.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = {:?}\n[[export]]\ndevice = {:?}\n{lines}",
            socket.to_str().unwrap(),
            s.image.to_str().unwrap()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn a_config_export_needs_a_name_and_names_over_4096_bytes_are_refused() {
    let s = scratch();
    let log = s.dir.path().join("serve.log");
    let sock = s.dir.path().join("nbd.sock");
    let cfg = one_export_config(&s, &sock, "");
    let err = serve_refused(&["--config", cfg.to_str().unwrap()], &log);
    assert!(
        err.contains(cfg.to_str().unwrap())
            && err.contains("number 1")
            && err.contains(s.image.to_str().unwrap())
            && err.contains("no name"),
        "{err}"
    );
    let cfg = one_export_config(&s, &sock, "name = \"\"\n");
    let err = serve_refused(&["--config", cfg.to_str().unwrap()], &log);
    assert!(err.contains("no name"), "{err}");
    let long = "n".repeat(4097);
    let cfg = one_export_config(&s, &sock, &format!("name = \"{long}\"\n"));
    let err = serve_refused(&["--config", cfg.to_str().unwrap()], &log);
    assert!(err.contains("4097 bytes") && err.contains("4096"), "{err}");
    let img = s.image.to_str().unwrap();
    let err = serve_refused(&[img, "--export", &long], &log);
    assert!(err.contains("--export") && err.contains("4096"), "{err}");
    assert!(!sock.exists());
    // 4096 bytes is still a name.
    let ok = "n".repeat(4096);
    let svc = Service::start(&s.image, &["--export", &ok]);
    let mut c = Client::connect(&svc.socket, &ok);
    assert_eq!(c.read(0, 512).len(), 512);
    drop(c);
    svc.stop();
    verify_clean(&s.image);
}

#[test]
fn a_client_asking_for_a_name_over_4096_bytes_gets_err_too_big() {
    use lostwrite::nbd::proto::{info, opt, rep};
    let s = scratch();
    let svc = Service::start(&s.image, &[]);
    let long = "x".repeat(5000);
    let mut c = greet(&svc.socket);
    for o in [opt::INFO, opt::GO] {
        send_option(&mut c, o, &go_data(&long, &[]));
        assert_eq!(option_reply(&mut c).1, rep::ERR_TOO_BIG, "option {o}");
    }
    // Negotiation goes on.
    send_option(&mut c, opt::GO, &go_data("", &[info::BLOCK_SIZE]));
    let mut cl = Client::finish_go(c);
    assert_eq!(cl.read(0, 512).len(), 512);
    drop(cl);
    // EXPORT_NAME has no error reply: the connection is closed.
    let mut c = greet(&svc.socket);
    send_option(&mut c, opt::EXPORT_NAME, long.as_bytes());
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut c, &mut b).unwrap_or(0), 0);
    let log = svc.stop();
    assert!(log.contains("5000 bytes"), "{log}");
}

#[test]
fn tcp_on_a_non_loopback_address_without_tls_warns() {
    let s = scratch();
    let free = |host: &str| {
        let l = std::net::TcpListener::bind((host, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let base = s.dir.path().join("any");
    let svc = Service::start_tcp(&s.image, &format!("0.0.0.0:{}", free("0.0.0.0")), &base);
    let log = svc.stop();
    assert!(
        log.contains("not a loopback address and TLS is off") && log.contains("--tls-cert"),
        "{log}"
    );
    let base = s.dir.path().join("lo");
    let svc = Service::start_tcp(&s.image, &format!("127.0.0.1:{}", free("127.0.0.1")), &base);
    let log = svc.stop();
    assert!(!log.contains("not a loopback address"), "{log}");
}

/// Clears the immutable flag again however the test ends.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

#[test]
fn an_image_that_cannot_be_opened_for_writing_suggests_read_only() {
    let s = Scratch::new(SIZE);
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(&s.image)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !ok {
        eprintln!("SKIP: chattr +i failed here (needs root and a file system with the flag)");
        return;
    }
    let _guard = Immutable(&s.image);
    let log = s.dir.path().join("serve.log");
    let err = serve_refused(&[s.image.to_str().unwrap()], &log);
    assert!(
        err.contains(s.image.to_str().unwrap()) && err.contains("--read-only"),
        "{err}"
    );
}

#[test]
fn log_lines_of_an_unnamed_export_carry_no_empty_export_field() {
    let s = scratch();
    let svc = Service::start(&s.image, &[]);
    // Revert block 3 under the service: the next read through it is stale.
    s.poke(3, &vec![0xabu8; BS as usize]);
    let mut c = Client::connect(&svc.socket, "");
    c.read(3 * BS as u64, BS);
    drop(c);
    let log = svc.stop();
    let line = log
        .lines()
        .find(|l| l.contains("does not hold generation"))
        .unwrap_or_else(|| panic!("no stale read logged: {log}"));
    assert!(!line.contains("export="), "{line}");
}

/// An "upstream" that accepts connections on a unix socket and never writes a byte: the
/// listening socket is made here, and the accepted connections are held until dropped.
struct Silent {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    fn start(path: &Path) -> Silent {
        use std::sync::atomic::Ordering;
        let l = UnixListener::bind(path).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st, ac) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        held.push(c);
                        ac.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Silent {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A ledger made through a working upstream (a `serve` of another image) on `socket`, which is
/// then stopped and its socket left free. Returns the URI and the ledger.
fn ledger_for_upstream(s: &Scratch, socket: &Path) -> (String, std::path::PathBuf) {
    let up_img = s.dir.path().join("up.img");
    random_image(&up_img, SIZE, 7);
    let up = Service::start_on(&up_img, socket, &[]);
    let uri = up.uri();
    let ledger = s.dir.path().join("front.ledger");
    lw_ok(bin().args(["init", "--ledger", ledger.to_str().unwrap(), &uri]));
    up.stop();
    assert!(!socket.exists());
    (uri, ledger)
}

#[test]
fn verify_against_an_upstream_that_never_greets_ends_with_exit_2_and_says_why() {
    let s = Scratch::new(SIZE);
    let sock = s.dir.path().join("up.sock");
    let (uri, ledger) = ledger_for_upstream(&s, &sock);
    let silent = Silent::start(&sock);
    let t = Instant::now();
    let o = bin()
        .args(["verify", "--upstream-timeout", "2s", "--ledger"])
        .arg(&ledger)
        .arg(&uri)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "after {took:?}: {err}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(silent.accepted() >= 1);
    assert!(
        err.contains(sock.to_str().unwrap())
            && err.contains("greeting")
            && err.contains("no answer within 2s")
            && err.contains("--upstream-timeout"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_serve_in_front_of_an_upstream_that_never_greets() {
    let s = Scratch::new(SIZE);
    let sock = s.dir.path().join("up.sock");
    let (uri, ledger) = ledger_for_upstream(&s, &sock);
    let silent = Silent::start(&sock);
    let front = s.dir.path().join("front.sock");
    let log = s.dir.path().join("front.log");
    // The default upstream timeout (30 s): the signal, not the timeout, must end the wait.
    let mut c = spawn(
        &[
            "serve",
            "--ledger",
            ledger.to_str().unwrap(),
            "--socket",
            front.to_str().unwrap(),
            &uri,
        ],
        &log,
    );
    let t = Instant::now();
    while silent.accepted() == 0 || !front.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "serve never connected upstream"
        );
        assert!(c.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
    let t = Instant::now();
    let st = wait_timeout(&mut c, Duration::from_secs(60));
    let took = t.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        st.is_some(),
        "SIGTERM did not stop serve within 60 s: {text}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}: {text}");
    assert_eq!(st.unwrap().code(), Some(0), "{text}");
    assert!(!front.exists(), "the socket was left behind");
}

#[test]
fn sigterm_stops_serve_within_the_documented_bound_when_a_client_never_reads_replies() {
    use lostwrite::nbd::proto::{cmd, Request};
    let s = scratch();
    let svc = Service::start(&s.image, &[]);
    let c = Client::connect(&svc.socket, "");
    let mut w = c.s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(90))).unwrap();
    // Far more replies than the socket buffers hold: the service blocks writing them.
    let writer = std::thread::spawn(move || {
        for i in 0..4096u64 {
            let r = Request {
                flags: 0,
                kind: cmd::READ,
                cookie: i,
                offset: (i % 4) << 20,
                length: 1 << 20,
            };
            if w.write_all(&r.encode()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (code, log) = svc.stop_status();
    let took = t.elapsed();
    eprintln!("SIGTERM with a client that never reads: serve stopped in {took:?}");
    assert_eq!(code, Some(0), "after {took:?}: {log}");
    // docs/OPERATIONS.md promises 30 s.
    assert!(took < Duration::from_secs(30), "{took:?}: {log}");
    assert!(log.contains("disconnecting it"), "{log}");
    drop(c);
    writer.join().unwrap();
    verify_clean(&s.image);
}

/// nbdkit serving 4 MiB of memory whose reads never finish, on `socket`; killed by PID when
/// dropped.
struct StuckReads(Child);

impl StuckReads {
    fn start(socket: &Path) -> StuckReads {
        Self::delayed(socket, "delay-read=3600")
    }

    /// nbdkit's memory plugin behind its delay filter (`delay` as the filter takes it).
    fn delayed(socket: &Path, delay: &str) -> StuckReads {
        let c = Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(socket)
            .args(["--filter=delay", "memory", "4M", delay])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while UnixStream::connect(socket).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "nbdkit did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        StuckReads(c)
    }
}

impl Drop for StuckReads {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[test]
fn an_upstream_request_without_reply_fails_after_the_timeout_and_sigterm_still_stops_serve() {
    use lostwrite::nbd::proto::cmd;
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.sock");
    let _nbdkit = StuckReads::start(&up);
    let uri = format!("nbd+unix:///?socket={}", up.display());
    let ledger = dir.path().join("l");
    let front = dir.path().join("front.sock");
    let l = ledger.to_str().unwrap();
    // With a 2 s upstream timeout: the read fails (EIO), and so does what follows on the
    // connection, whose outcome is unknown.
    let svc = Service::start_on(
        Path::new(&uri),
        &front,
        &["--ledger", l, "--upstream-timeout", "2s"],
    );
    let mut c = Client::connect(&front, "");
    let t = Instant::now();
    let (e, _) = c.call(cmd::READ, 0, 0, 4096, &[]);
    assert_ne!(e, 0);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    drop(c);
    let (code, log) = svc.stop_status();
    assert!(log.contains("no answer within 2s"), "{log}");
    assert!(code.is_some(), "{log}");
    // With the default timeout (30 s), SIGTERM while a read waits on the upstream still ends
    // serve within the documented 30 s.
    let svc = Service::start_on(Path::new(&uri), &front, &["--ledger", l]);
    let mut c = Client::connect(&front, "");
    c.send(cmd::READ, 0, 1, 0, 4096, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let (code, log) = svc.stop_status();
    let took = t.elapsed();
    eprintln!("SIGTERM with a read stuck upstream: serve stopped in {took:?}");
    assert!(
        code.is_some() && took < Duration::from_secs(30),
        "{took:?}: {log}"
    );
    assert!(!front.exists());
}

#[test]
fn a_healthy_upstream_that_takes_longer_than_the_timeout_to_zero_is_waited_for() {
    use lostwrite::nbd::proto::cmd;
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.sock");
    // A slow disk: every zeroing takes 3 s, longer than the 2 s timeout. Like a FLUSH, which
    // gets the same allowance (four times the timeout), it is slow work, not a dead server.
    let _nbdkit = StuckReads::delayed(&up, "delay-zero=3");
    let uri = format!("nbd+unix:///?socket={}", up.display());
    let ledger = dir.path().join("l");
    let front = dir.path().join("front.sock");
    let l = ledger.to_str().unwrap();
    let svc = Service::start_on(
        Path::new(&uri),
        &front,
        &["--ledger", l, "--upstream-timeout", "2s"],
    );
    let mut c = Client::connect(&front, "");
    let (e, _) = c.call(cmd::WRITE, 0, 0, 8192, &[7u8; 8192]);
    assert_eq!(e, 0);
    let t = Instant::now();
    let (e, _) = c.call(cmd::WRITE_ZEROES, 0, 4096, 4096, &[]);
    assert_eq!(
        e,
        0,
        "a slow zeroing is not a dead upstream ({:?})",
        t.elapsed()
    );
    assert!(t.elapsed() >= Duration::from_secs(3));
    let (e, _) = c.call(cmd::FLUSH, 0, 0, 0, &[]);
    assert_eq!(e, 0);
    drop(c);
    let (code, log) = svc.stop_status();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("no answer within"), "{log}");
    let o = bin()
        .args(["verify", "--ledger", l, "--upstream-timeout", "10s"])
        .arg(&uri)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
