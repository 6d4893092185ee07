//! Running the real `lostwrite serve` as a child process, and the external tools the interop
//! tests drive. Every process a test starts is stopped by its PID when the test ends.

#![allow(dead_code)]

use crate::helpers::bin;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when `tool` is installed. Missing tools skip a test, except in CI (CI=true), where
/// `.ci/run` installs them and a missing one is a failure.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is not installed, and CI requires it (.ci/run installs it)");
        }
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// True when this process may mount filesystems and use loop devices and FUSE.
pub fn can_mount() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the ext4 tests need root and /dev/fuse, which CI provides");
        }
        eprintln!("SKIP: not root or no /dev/fuse");
    }
    ok
}

/// A running `lostwrite serve`.
pub struct Service {
    child: Option<Child>,
    /// Its unix socket.
    pub socket: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Service {
    /// Starts `lostwrite serve IMAGE ARGS...` on `IMAGE.sock` and waits until it accepts.
    pub fn start(image: &Path, args: &[&str]) -> Service {
        let socket = PathBuf::from(format!("{}.sock", image.display()));
        Self::start_on(image, &socket, args)
    }

    /// Starts it on TCP `addr`; `log_base` names the log file.
    pub fn start_tcp(image: &Path, addr: &str, log_base: &Path) -> Service {
        Self::start_tcp_with(image, addr, log_base, &[])
    }

    /// Same, with more arguments.
    pub fn start_tcp_with(image: &Path, addr: &str, log_base: &Path, extra: &[&str]) -> Service {
        let mut args = vec!["--listen", addr];
        args.extend_from_slice(extra);
        Self::spawn(image, &args, log_base, &|| {
            std::net::TcpStream::connect(addr).is_ok_and(greets)
        })
    }

    /// Same, on a given socket.
    pub fn start_on(image: &Path, socket: &Path, args: &[&str]) -> Service {
        let mut all = vec!["--socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        Self::spawn(image, &all, socket, &|| {
            std::os::unix::net::UnixStream::connect(socket).is_ok_and(greets)
        })
    }

    /// Starts `lostwrite serve --config CONFIG`, which listens on `socket`.
    pub fn start_config(config: &Path, socket: &Path) -> Service {
        let args = ["--config", config.to_str().unwrap()];
        Self::spawn_args(&args, socket, &|| {
            std::os::unix::net::UnixStream::connect(socket).is_ok_and(greets)
        })
    }

    fn spawn(image: &Path, args: &[&str], base: &Path, up: &dyn Fn() -> bool) -> Service {
        let mut all = vec![image.to_str().unwrap()];
        all.extend_from_slice(args);
        Self::spawn_args(&all, base, up)
    }

    fn spawn_args(args: &[&str], base: &Path, up: &dyn Fn() -> bool) -> Service {
        let log = PathBuf::from(format!("{}.serve.log", base.display()));
        let logf = std::fs::File::create(&log).unwrap();
        let exe = bin().get_program().to_owned();
        let child = Command::new(exe)
            .arg("serve")
            .args(args)
            .env("LOSTWRITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut s = Service {
            child: Some(child),
            socket: base.to_path_buf(),
            log,
        };
        let t = Instant::now();
        while !up() {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited with {st}: {}", s.log_text());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "serve did not start: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// The NBD URI of the default export.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// PID of the service.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait; asserts a clean exit and returns the log.
    pub fn stop(mut self) -> String {
        let mut c = self.child.take().unwrap();
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
        let st = wait_timeout(&mut c, Duration::from_secs(60));
        let log = self.log_text();
        assert!(
            st.is_some_and(|s| s.success()),
            "serve did not exit cleanly ({st:?}): {log}"
        );
        log
    }

    /// SIGTERM and wait; returns the exit code and the log.
    pub fn stop_status(mut self) -> (Option<i32>, String) {
        let mut c = self.child.take().unwrap();
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
        let st = wait_timeout(&mut c, Duration::from_secs(60));
        (st.and_then(|s| s.code()), self.log_text())
    }

    /// SIGKILL (a crash) and wait.
    pub fn kill9(mut self) {
        let mut c = self.child.take().unwrap();
        kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL).unwrap();
        let _ = c.wait();
    }
}

/// True once the server has sent the NBD greeting: serve binds its sockets before it opens
/// its exports and starts its threads, so a connect alone only says the socket is bound.
fn greets<S: std::io::Read + SocketTimeout>(mut s: S) -> bool {
    s.timeout(Duration::from_secs(1));
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
}

/// Read timeouts on either kind of stream.
trait SocketTimeout {
    fn timeout(&self, d: Duration);
}

impl SocketTimeout for std::net::TcpStream {
    fn timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
    }
}

impl SocketTimeout for std::os::unix::net::UnixStream {
    fn timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
    }
}

/// Waits up to `d` for the child; past that it is killed (by its PID) and the answer is None.
pub fn wait_timeout(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
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

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Runs a command, asserting success; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// fio with the nbd engine against `uri`, with extra arguments.
pub fn fio(uri: &str, args: &[&str]) -> String {
    let mut c = Command::new("fio");
    // fio writes verify state files into its working directory unless told not to.
    c.current_dir(std::env::temp_dir())
        .arg("--verify_state_save=0")
        .arg("--name=lostwrite-test")
        .arg("--ioengine=nbd")
        .arg(format!("--uri={uri}"))
        .arg("--output-format=terse")
        .arg("--minimal")
        .args(args);
    run(&mut c)
}
