//! The library's error type: what went wrong, where (file and offset when there is one), and
//! what the operator can do about it. The binary maps these to exit statuses; the library never
//! exits or prints.

use std::io;
use std::path::{Path, PathBuf};

/// Every fallible library call returns this.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A library error. Each variant carries the path it concerns, so a message always names the
/// file, and where it helps, the offset and a hint saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call on a file failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file the call was made on.
        path: PathBuf,
        /// What we were doing ("reading block 12 at offset 49152", "fdatasync").
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A ledger file fails its own checks (bad checksum, bad magic, broken chain).
    #[error("{}: damaged at offset {offset}: {detail}", path.display())]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage within the file.
        offset: u64,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The device does not match the ledger (size, identity, block size).
    #[error("{}: {detail}", path.display())]
    DeviceMismatch {
        /// The device path or URI.
        path: PathBuf,
        /// What differs and what to do.
        detail: String,
    },
    /// There is no ledger where one was expected, or there is one where none should be.
    #[error("{}: {detail}", path.display())]
    Ledger {
        /// The ledger directory.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Another process holds the ledger.
    #[error("{}: {detail}", path.display())]
    Locked {
        /// The ledger directory.
        path: PathBuf,
        /// Who holds it and what to do.
        detail: String,
    },
    /// A bad argument or value from the user.
    #[error("{0}")]
    Usage(String),
    /// An earlier failure (for instance a failed fdatasync) made this ledger or device unusable
    /// until it is reopened; nothing further is written.
    #[error("{}: refusing further writes: {detail}", path.display())]
    Poisoned {
        /// The file whose failure poisoned the handle.
        path: PathBuf,
        /// The original failure.
        detail: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(path: impl AsRef<Path>, action: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            action: action.into(),
            source,
        }
    }

    /// Builds an [`Error::Damaged`].
    pub fn damaged(path: impl AsRef<Path>, offset: u64, detail: impl Into<String>) -> Self {
        Error::Damaged {
            path: path.as_ref().to_path_buf(),
            offset,
            detail: detail.into(),
        }
    }

    /// The errno of an underlying I/O error, if any (used to pick NBD error codes).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Adds a path and an action to `io::Result`s.
pub trait IoContext<T> {
    /// Wraps the error with the file it concerns and what we were doing.
    fn ctx(self, path: impl AsRef<Path>, action: impl Into<String>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, path: impl AsRef<Path>, action: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::io(path, action, e))
    }
}
