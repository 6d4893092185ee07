//! The ledger lock: one writer (serve, init, repair) at a time, and no reader that needs a
//! consistent view (verify, check) while a writer runs. flock(2) on `<ledger>/lock`, released by
//! the kernel when the process dies, so a kill -9 never leaves a stale lock.

use crate::error::{Error, IoContext, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// File name of the lock inside the ledger directory.
pub const LOCK_FILE: &str = "lock";

/// A held ledger lock; dropping it releases the lock.
pub struct LedgerLock {
    _flock: Flock<File>,
}

fn holder(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join(LOCK_FILE)) {
        Ok(s) if !s.trim().is_empty() => format!("process {}", s.trim()),
        _ => "another process".into(),
    }
}

/// Takes the lock exclusively (a writer) or shared (a reader), without waiting.
pub fn acquire(dir: &Path, exclusive: bool) -> Result<LedgerLock> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(&path, "opening ledger lock")?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    match Flock::lock(file, arg) {
        Ok(mut f) => {
            if exclusive {
                f.set_len(0).ctx(&path, "writing ledger lock")?;
                writeln!(&mut *f, "{}", std::process::id()).ctx(&path, "writing ledger lock")?;
            }
            Ok(LedgerLock { _flock: f })
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::Locked {
            path: dir.to_path_buf(),
            detail: if exclusive {
                format!(
                    "the ledger is in use by {} (a running `lostwrite serve`, or a verify); only one process may write a ledger: stop the other one first",
                    holder(dir)
                )
            } else {
                format!(
                    "the ledger is being written by {} (a running `lostwrite serve`); a verify now would race its writes. Stop the service (SIGTERM) first, or run `lostwrite status` for its live view",
                    holder(dir)
                )
            },
        }),
        Err((_, e)) => Err(Error::io(&path, "locking ledger", e.into())),
    }
}
