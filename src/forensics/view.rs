//! A local file view of an NBD export, for the tools that only open files (debugfs, xfs_db):
//! nbdfuse mounts the export read-only in a private temporary directory for as long as the view
//! lives. An overlay view shows one region of a device or export through nbdkit's offset and
//! copy-on-write filters: writes to it stay in nbdkit's overlay, never reaching the device.
//! SIGTERM makes nbdfuse unmount and exit (and nbdkit with it).

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
        let mut c = Command::new("nbdfuse");
        c.arg("-r");
        Self::mount(
            c,
            &[uri.to_string()],
            size,
            "to give debugfs a file view of the export",
        )
    }

    /// A writable view of bytes `offset..offset + len` of `source` (a device path or an NBD
    /// URI), whose writes go to a copy-on-write overlay and never to `source`.
    pub fn overlay(source: &str, offset: u64, len: u64) -> Result<FuseView, String> {
        let plugin = if crate::nbd::uri::is_uri(source) {
            ["nbd".to_string(), format!("uri={source}")]
        } else {
            ["file".to_string(), format!("file={source}")]
        };
        let mut args: Vec<String> = ["[", "nbdkit", "--exit-with-parent"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--filter=cow".into(), "--filter=offset".into()]);
        args.extend(plugin);
        args.extend([
            format!("offset={offset}"),
            format!("range={len}"),
            "]".into(),
        ]);
        Self::mount(
            Command::new("nbdfuse"),
            &args,
            len,
            "with nbdkit (package nbdkit) to give xfs_db a copy-on-write view of the filesystem",
        )
    }

    /// Runs `nbdfuse` (`c`, with its options) on a new file with `args` after it, and waits
    /// until the file has `size` bytes.
    fn mount(mut c: Command, args: &[String], size: u64, why: &str) -> Result<FuseView, String> {
        let dir = tempfile::Builder::new()
            .prefix("lostwrite-view")
            .tempdir()
            .map_err(|e| format!("making a directory for nbdfuse: {e}"))?;
        let file = dir.path().join("disk");
        let child = c
            .arg(&file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running nbdfuse (package libnbd-bin) {why}: {e}"))?;
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

    /// The file to hand to debugfs or xfs_db.
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
