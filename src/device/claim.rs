//! One owner per device: whoever writes a device (`serve`) or makes its ledger (`init`) claims
//! it, so that a second `serve` with another ledger cannot write beside the first and leave
//! both ledgers wrong. A block device is opened with O_EXCL (the kernel's own exclusive claim,
//! which a mounted filesystem also holds); a regular file gets an OFD lock over the whole file
//! (`F_OFD_SETLK`: tied to the open file, not the process, so it is not lost when another
//! descriptor of the same file closes). Both end when the process does, however it ends.
//! Readers (`verify`) take no claim.

use crate::error::{Error, IoContext, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A held claim; dropping it releases it.
pub struct Claim {
    _file: File,
}

impl Claim {
    /// Claims the device at `path`, already open as `file` (for a file, the lock goes on that
    /// open file: a write lock when it is open for writing, a read lock otherwise, which still
    /// keeps writers out).
    pub fn take(path: &Path, file: &File, is_block: bool) -> Result<Claim> {
        if is_block {
            return match OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_EXCL)
                .open(path)
            {
                Ok(f) => Ok(Claim { _file: f }),
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    let rdev = file.metadata().map(|m| m.rdev()).unwrap_or(0);
                    Err(refused(path, &block_holders(rdev)))
                }
                Err(e) => Err(Error::io(path, "claiming the block device (O_EXCL)", e)),
            };
        }
        let file = file.try_clone().ctx(path, "claiming the device")?;
        let writable = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)
            .map(|fl| fl & nix::libc::O_ACCMODE != nix::libc::O_RDONLY)
            .unwrap_or(false);
        let lock = nix::libc::flock {
            l_type: if writable {
                nix::libc::F_WRLCK
            } else {
                nix::libc::F_RDLCK
            } as _,
            l_whence: nix::libc::SEEK_SET as _,
            l_start: 0,
            // Zero: the whole file, however it grows.
            l_len: 0,
            l_pid: 0,
        };
        match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => Ok(Claim { _file: file }),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                let m = file.metadata().ctx(path, "stat")?;
                Err(refused(path, &file_holders(m.dev(), m.ino())))
            }
            Err(e @ (nix::errno::Errno::ENOLCK | nix::errno::Errno::EOPNOTSUPP)) => Err(Error::io(
                path,
                "claiming the device (OFD lock): its filesystem keeps no locks (NFS without a lock manager?), so lostwrite cannot make sure it is the device's only writer; put the image on a filesystem with locking, or enable locking on the mount",
                std::io::Error::from_raw_os_error(e as i32),
            )),
            Err(e) => Err(Error::io(
                path,
                "claiming the device (OFD lock)",
                std::io::Error::from_raw_os_error(e as i32),
            )),
        }
    }
}

/// Who holds the claim on the device at `path` (as the refusal names them: "process PID
/// (NAME)", a mount, a stacked device), best effort; empty when nobody can be named.
pub fn holders(path: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => block_holders(m.rdev()),
        Ok(m) => file_holders(m.dev(), m.ino()),
        Err(_) => Vec::new(),
    }
}

fn refused(path: &Path, holders: &[String]) -> Error {
    let who = if holders.is_empty() {
        "another process".to_string()
    } else {
        holders.join(", ")
    };
    Error::Usage(format!(
        "{}: the device is claimed by {who}; one process at a time may serve a device or make its ledger (two writers with two ledgers leave both wrong). Stop the other one first, or serve this device through it",
        path.display()
    ))
}

/// "process PID (NAME)".
fn process(pid: &str) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(c) => format!("process {pid} ({})", c.trim()),
        Err(_) => format!("process {pid}"),
    }
}

/// Every (pid, fd number) of a process (this one too, when `me`) whose descriptor satisfies
/// `matches` (the descriptor's target stat). Best effort: processes this one may not inspect
/// are skipped.
fn open_by(me: bool, matches: impl Fn(&std::fs::Metadata) -> bool) -> Vec<(String, String)> {
    let this = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || (!me && pid == this) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::metadata(fd.path()).is_ok_and(|m| matches(&m)) {
                out.push((pid.clone(), fd.file_name().to_string_lossy().to_string()));
            }
        }
    }
    out
}

/// Who holds the OFD lock on the file (dev, ino): /proc/locks shows no process for an OFD
/// lock, but the holder's fdinfo lists it.
fn file_holders(dev: u64, ino: u64) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let this = std::process::id().to_string();
    for (pid, fd) in open_by(true, |m| m.dev() == dev && m.ino() == ino) {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let who = if pid == this {
            "this process itself (is the device named twice?)".to_string()
        } else {
            process(&pid)
        };
        if info.lines().any(|l| l.contains("OFDLCK")) && !out.contains(&who) {
            out.push(who);
        }
    }
    out
}

/// What may hold the block device (rdev) exclusively: a mount, a stacked device, or one of
/// the processes that have it open (the kernel does not say which of them claimed it).
fn block_holders(rdev: u64) -> Vec<String> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let id = format!("{major}:{minor}");
    let mut out = Vec::new();
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        for l in mounts.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() > 4 && f[2] == id {
                out.push(format!("the filesystem mounted at {}", f[4]));
            }
        }
    }
    if let Ok(h) = std::fs::read_dir(format!("/sys/dev/block/{id}/holders")) {
        for e in h.flatten() {
            out.push(format!("the device {}", e.file_name().to_string_lossy()));
        }
    }
    let mut procs: Vec<String> = Vec::new();
    // This process has it open too (to claim it), so it is left out.
    for (pid, _) in open_by(false, |m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_block_device() && m.rdev() == rdev
    }) {
        let who = process(&pid);
        if !procs.contains(&who) {
            procs.push(who);
        }
    }
    if !procs.is_empty() {
        out.push(format!("one of: {}", procs.join(", ")));
    }
    out
}
