//! How an operation fails: [`OpError`] says what failed, in the service's own terms (the
//! device's I/O and what was being done, the ledger, a read-only export, a range beyond the
//! end, a stale block, a fast zeroing that cannot be fast), and its `Display` is the sentence
//! for the log.
//!
//! It carries no NBD error value. The value a client is answered with is the protocol's
//! business, chosen in one place by the layer that speaks it (`crate::server::failure`, with
//! `crate::nbd::errno::errno_of` for device errors): the service, below the server, imports
//! nothing from the protocol, and each variant holds what that choice needs (the io::Error,
//! the ledger's error, whether a range was being written).

use crate::error::Error;
use std::io;
use std::sync::Arc;

/// A failed operation: what failed; its `Display` is the sentence for the log. (Clone, so that
/// one failure of a batch can answer every write of it: the errors are shared, not copied.)
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    /// The device's I/O failed: what was being done ("writing 4096 bytes at offset 0"), and
    /// the device's error.
    #[error("{doing}: {error}")]
    Device {
        /// What was being done, for the log.
        doing: String,
        /// The device's error.
        error: Arc<io::Error>,
    },
    /// The ledger could not record a change (or its outcome, or a FUA's durability): the
    /// change is refused rather than let through unrecorded.
    #[error("ledger: {0}")]
    Ledger(Arc<Error>),
    /// A FLUSH failed: the device's fdatasync or the journal's append or sync (the ledger's
    /// error says which; a failed device sync also poisons the session).
    #[error("ledger: {0}")]
    Flush(Arc<Error>),
    /// A change to a read-only export.
    #[error("write to a read-only export")]
    ReadOnly,
    /// A request reaching past the end of the export.
    #[error("request at offset {offset} length {len} goes beyond the export's {size} bytes")]
    OutOfRange {
        /// Byte offset asked for.
        offset: u64,
        /// Byte length asked for.
        len: u64,
        /// The export's size in bytes.
        size: u64,
        /// Whether it would have written data (WRITE, WRITE_ZEROES) that does not fit, rather
        /// than read, cached or trimmed.
        writing: bool,
    },
    /// A read found a stale block and `--on-mismatch error` refuses to serve it.
    #[error("block {block} is stale; refusing to serve it (--on-mismatch error)")]
    Stale {
        /// The stale block.
        block: u64,
    },
    /// FAST_ZERO where zeroing cannot be fast (the device said so, or a first attempt failed).
    #[error("fast zeroing is not supported here")]
    FastZeroUnsupported,
}

impl OpError {
    /// A device error, with what was being done.
    pub(super) fn device(e: io::Error, doing: impl Into<String>) -> OpError {
        OpError::Device {
            doing: doing.into(),
            error: Arc::new(e),
        }
    }

    /// A ledger error while recording.
    pub(super) fn ledger(e: Error) -> OpError {
        OpError::Ledger(Arc::new(e))
    }
}
