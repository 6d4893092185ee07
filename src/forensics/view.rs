//! A local file view of an NBD export, for the tools that only open files (debugfs): nbdfuse
//! mounts the export read-only in a private temporary directory for as long as the view lives.
//! SIGTERM makes nbdfuse unmount and exit.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An export mounted as a read-only file.
pub struct FuseView {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl FuseView {
    /// Mounts `uri` (of `size` bytes) with `nbdfuse -r` and waits until the file has its size.
    pub fn open(uri: &str, size: u64) -> Result<FuseView, String> {
        let dir = tempfile::Builder::new()
            .prefix("lostwrite-view")
            .tempdir()
            .map_err(|e| format!("making a directory for nbdfuse: {e}"))?;
        let file = dir.path().join("disk");
        let child = Command::new("nbdfuse")
            .arg("-r")
            .arg(&file)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("running nbdfuse (package libnbd-bin) to give debugfs a file view of the export: {e}")
            })?;
        let mut v = FuseView {
            child: Some(child),
            _dir: dir,
            file,
        };
        let t = Instant::now();
        loop {
            if std::fs::metadata(&v.file).is_ok_and(|m| m.len() == size) {
                return Ok(v);
            }
            let c = v.child.as_mut().expect("running");
            if let Ok(Some(st)) = c.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                v.child = None;
                return Err(format!(
                    "nbdfuse exited ({st}) before the export appeared (it needs /dev/fuse and the right to mount): {}",
                    err.trim()
                ));
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err("nbdfuse did not show the export within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The file to hand to debugfs.
    pub fn path(&self) -> &std::path::Path {
        &self.file
    }
}

impl Drop for FuseView {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
