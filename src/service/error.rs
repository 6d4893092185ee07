//! How an operation fails: [`OpError`] carries the NBD error value the client gets and a
//! sentence for the log; `from_io` and `from_ledger` turn device and ledger errors into it, with
//! the protocol's own errno mapping (`crate::nbd::errno::errno_of`).

use crate::error::Error;
use crate::nbd::errno::{self, errno_of};
use std::io;

/// A failed operation: the NBD error value for the client (from [`crate::nbd::errno`]) and a
/// sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// NBD error value.
    pub errno: u32,
    /// What happened, for the log.
    pub why: String,
}

impl OpError {
    pub(super) fn new(errno: u32, why: impl Into<String>) -> Self {
        OpError {
            errno,
            why: why.into(),
        }
    }
}

/// A device error as the client sees it: its errno, and for the log what was being done.
pub(super) fn from_io(e: &io::Error, what: &str) -> OpError {
    OpError::new(errno_of(e), format!("{what}: {e}"))
}

/// A ledger error as the client sees it.
pub(super) fn from_ledger(e: Error) -> OpError {
    // A ledger that cannot record must refuse the write rather than let data through
    // unrecorded; a full ledger disk is ENOSPC for the client, anything else EIO.
    let code = match e.raw_os_error() {
        Some(os) if errno_of(&io::Error::from_raw_os_error(os)) == errno::ENOSPC => errno::ENOSPC,
        _ => errno::EIO,
    };
    OpError::new(code, format!("ledger: {e}"))
}
