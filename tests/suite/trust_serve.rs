//! Trust on a real host, on the `serve` side: nothing but a stale socket is ever removed, every
//! wait on an upstream or a client has a deadline (SIGTERM ends `serve` within a bound whatever
//! they do), the export-name contract holds, and the messages say what to do.

use crate::helpers::*;
use crate::nbd_client::*;
use crate::service::Service;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// Waits up to `d` for the child; on timeout kills it (by its PID) and returns None.
fn wait_for(c: &mut Child, d: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if t.elapsed() > d {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `lostwrite serve ARGS...`, which must give up with exit 2 (rather than serve); returns
/// its stderr.
fn serve_refused(args: &[&str], log: &Path) -> String {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut c = spawn(&all, log);
    let st = wait_for(&mut c, Duration::from_secs(30));
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
