//! Why a request gets an error reply, and the one place the NBD error value of that reply is
//! chosen. A [`Failure`] is a request refused by the server before it reached the export
//! ([`Refusal`]: a command or flags it does not serve, a payload over the limit), an
//! operation the export failed ([`OpError`], which says what failed in the service's own
//! terms), a request read while the server stops, or one whose execution panicked.
//! [`Failure::errno`] turns each into the value the client is answered with, using the
//! protocol's own mapping of host I/O errors (`nbd::errno::errno_of`); its `Display` is the
//! sentence for the log.
//!
//! Why the server maps and not the service: the value is the protocol's (a WRITE beyond the end
//! is ENOSPC and a READ beyond it EINVAL because the NBD specification says so), and the server
//! is the layer that speaks the protocol. So every import points down — the server uses the
//! service's error and the protocol's values, the service imports nothing from the protocol —
//! and no other module of the crate picks an NBD error value.

use crate::error::Error;
use crate::nbd::errno::{self, errno_of};
use crate::nbd::proto::cmd_name;
use crate::service::OpError;
use std::io;

/// A request the server refuses before it reaches the export (answered EINVAL).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A command this server does not serve.
    #[error("unsupported command {} ({kind})", cmd_name(*.kind))]
    Command {
        /// The command type.
        kind: u16,
    },
    /// Flags not valid for the command.
    #[error("flags {flags:#x} not valid for {}", cmd_name(*.kind))]
    Flags {
        /// The command type.
        kind: u16,
        /// The flags it may not carry.
        flags: u16,
    },
    /// A READ or WRITE longer than the largest payload served.
    #[error("{} of {length} bytes exceeds the 32 MiB limit", cmd_name(*.kind))]
    TooLarge {
        /// The command type.
        kind: u16,
        /// The length asked for.
        length: u32,
    },
}

/// Why a request is answered with an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The server refused it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The export's operation failed.
    #[error(transparent)]
    Op(#[from] OpError),
    /// Read while the server stops: it is not executed.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Its execution panicked (a bug; the panic is logged where it is caught).
    #[error("the operation panicked")]
    Panicked,
}

impl Failure {
    /// The NBD error value the client is answered with.
    pub fn errno(&self) -> u32 {
        match self {
            Failure::Refused(_) => errno::EINVAL,
            Failure::ShuttingDown => errno::ESHUTDOWN,
            Failure::Panicked => errno::EIO,
            Failure::Op(e) => match e {
                OpError::Device { error, .. } => errno_of(error),
                OpError::Ledger(e) => ledger_errno(e),
                // A FLUSH writes no data of its own that could fail to fit: whatever failed
                // (the device's fdatasync, the journal's append or sync), writes the client
                // made before it may not be durable, which is EIO.
                OpError::Flush(_) => errno::EIO,
                OpError::ReadOnly => errno::EPERM,
                // The specification's values: data that would not fit is ENOSPC; reading,
                // caching or trimming past the end is an invalid request.
                OpError::OutOfRange { writing: true, .. } => errno::ENOSPC,
                OpError::OutOfRange { writing: false, .. } => errno::EINVAL,
                OpError::Stale { .. } => errno::EIO,
                OpError::FastZeroUnsupported => errno::ENOTSUP,
            },
        }
    }

    /// Whether the log should warn: the device or the ledger failed (EIO, ENOSPC), rather
    /// than a request being refused.
    pub fn warns(&self) -> bool {
        matches!(self.errno(), errno::EIO | errno::ENOSPC)
    }
}

/// A ledger error as the client sees it.
fn ledger_errno(e: &Error) -> u32 {
    // A ledger that cannot record must refuse the write rather than let data through
    // unrecorded; a full ledger disk is ENOSPC for the client, anything else EIO.
    match e.raw_os_error() {
        Some(os) if errno_of(&io::Error::from_raw_os_error(os)) == errno::ENOSPC => errno::ENOSPC,
        _ => errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ledger_io(os: i32) -> Arc<Error> {
        Arc::new(Error::io(
            "/ledger",
            "appending",
            io::Error::from_raw_os_error(os),
        ))
    }

    #[test]
    fn each_failure_gets_the_value_it_always_had() {
        let op = |e: OpError| Failure::Op(e).errno();
        let device = |os| OpError::Device {
            doing: "writing".into(),
            error: Arc::new(io::Error::from_raw_os_error(os)),
        };
        assert_eq!(op(device(nix::libc::EDQUOT)), errno::ENOSPC);
        assert_eq!(op(device(nix::libc::EBADF)), errno::EIO);
        assert_eq!(
            op(OpError::Ledger(ledger_io(nix::libc::ENOSPC))),
            errno::ENOSPC
        );
        assert_eq!(
            op(OpError::Ledger(ledger_io(nix::libc::EFBIG))),
            errno::ENOSPC
        );
        assert_eq!(op(OpError::Ledger(ledger_io(nix::libc::EROFS))), errno::EIO);
        let usage = Arc::new(Error::Usage("no session".into()));
        assert_eq!(op(OpError::Ledger(usage.clone())), errno::EIO);
        assert_eq!(op(OpError::Flush(ledger_io(nix::libc::ENOSPC))), errno::EIO);
        assert_eq!(op(OpError::Flush(usage)), errno::EIO);
        assert_eq!(op(OpError::ReadOnly), errno::EPERM);
        let range = |writing| OpError::OutOfRange {
            offset: 0,
            len: 1,
            size: 0,
            writing,
        };
        assert_eq!(op(range(true)), errno::ENOSPC);
        assert_eq!(op(range(false)), errno::EINVAL);
        assert_eq!(op(OpError::Stale { block: 1 }), errno::EIO);
        assert_eq!(op(OpError::FastZeroUnsupported), errno::ENOTSUP);
        assert_eq!(
            Failure::from(Refusal::Command { kind: 99 }).errno(),
            errno::EINVAL
        );
        assert_eq!(Failure::ShuttingDown.errno(), errno::ESHUTDOWN);
        assert_eq!(Failure::Panicked.errno(), errno::EIO);
    }

    #[test]
    fn log_sentences_are_unchanged() {
        let s = |f: Failure| f.to_string();
        assert_eq!(
            s(Refusal::Flags { kind: 0, flags: 4 }.into()),
            "flags 0x4 not valid for READ"
        );
        assert_eq!(
            s(Refusal::TooLarge { kind: 1, length: 7 }.into()),
            "WRITE of 7 bytes exceeds the 32 MiB limit"
        );
        assert_eq!(
            s(OpError::OutOfRange {
                offset: 4096,
                len: 512,
                size: 4096,
                writing: true
            }
            .into()),
            "request at offset 4096 length 512 goes beyond the export's 4096 bytes"
        );
        assert_eq!(
            s(OpError::Ledger(Arc::new(Error::Usage("x".into()))).into()),
            "ledger: x"
        );
    }
}
