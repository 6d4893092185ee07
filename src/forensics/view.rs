//! A local file view of an NBD export, for the tools that only open files (debugfs, xfs_db):
//! nbdfuse mounts the export read-only in a private temporary directory for as long as the view
//! lives. An overlay view shows one region of a device or export through nbdkit's offset and
//! copy-on-write filters: writes to it stay in nbdkit's overlay, never reaching the device.
//! SIGTERM makes nbdfuse unmount and exit (and nbdkit with it). Their standard error is read
//! for as long as they run, keeping only its last few KiB for an error message: nbdkit logs
//! every failed request there, and a full pipe would stall it and every reader of the view.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much of nbdfuse's and nbdkit's standard error is kept for an error message.
const TAIL: usize = 4096;

/// Reads `s` until every writer has closed it, keeping its last [`TAIL`] bytes.
fn drain(mut s: ChildStderr) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&tail);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            let mut t = kept.lock().unwrap_or_else(|e| e.into_inner());
            keep_tail(&mut t, &buf[..n]);
        }
    });
    (tail, reader)
}

/// Appends `more` to `tail`, dropping from its front all but the last [`TAIL`] bytes.
fn keep_tail(tail: &mut Vec<u8>, more: &[u8]) {
    tail.extend_from_slice(more);
    if tail.len() > TAIL {
        tail.drain(..tail.len() - TAIL);
    }
}

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
        let mut child = c
            .arg(&file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running nbdfuse (package libnbd-bin) {why}: {e}"))?;
        let (tail, reader) = drain(child.stderr.take().expect("piped"));
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
                v.child = None;
                // nbdkit may outlive nbdfuse briefly, holding the pipe: wait a little for it.
                let t = Instant::now();
                while !reader.is_finished() && t.elapsed() < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let err = tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(format!(
                    "nbdfuse exited ({st}) before the export appeared (it needs /dev/fuse and the right to mount): {}",
                    String::from_utf8_lossy(&err).trim()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chatty_helper_is_drained_and_its_last_words_kept() {
        let mut t = Vec::new();
        keep_tail(&mut t, &[b'a'; TAIL - 1]);
        keep_tail(&mut t, b"xyz");
        assert_eq!(t.len(), TAIL);
        assert!(t.ends_with(b"axyz"));
        // Far more than a pipe holds: the writer finishes only if the pipe is read.
        let mut c = Command::new("sh")
            .args(["-c", "head -c 1000000 /dev/zero >&2; echo last words >&2"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let (tail, reader) = drain(c.stderr.take().expect("piped"));
        c.wait().expect("sh exits");
        reader.join().expect("drained");
        let t = tail.lock().expect("tail");
        assert_eq!(t.len(), TAIL);
        assert!(t.ends_with(b"last words\n"));
    }
}
