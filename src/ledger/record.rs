//! Journal records: what the ledger says happened, one record per block per change plus the
//! session and durability markers that let the verifier tell a lost update from an allowed loss.
//! Byte layouts are in docs/FORMAT.md ("Records").

use serde::{Deserialize, Serialize};

/// Log sequence number: every record has one, consecutive from 1 across the whole journal.
pub type Lsn = u64;

/// Per-block generation counter (30 bits; see [`crate::ledger::state`]).
pub type Generation = u32;

/// The start of a service session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    /// Session number, 1 for the first `serve` session.
    pub session: u64,
    /// Whether the previous session ended with a session-close record.
    pub previous_clean: bool,
    /// `--journal-sync strict`: every record was durable before its device write was issued.
    pub strict: bool,
    /// Process id of the service, for the operator.
    pub pid: u32,
    /// Software that wrote the session ("lostwrite 0.1.0").
    pub software: String,
}

/// One journal record. The enum's variant index is its tag on disk: never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A service session began.
    SessionOpen(SessionOpen),
    /// A session ended cleanly: device and journal were synced, every write of it is durable.
    SessionClose {
        /// The session that ended.
        session: u64,
    },
    /// `init --baseline` recorded generation 0 of blocks `0..blocks` in the baseline file.
    Baseline {
        /// Number of blocks baselined.
        blocks: u64,
    },
    /// A write of a whole block's new contents (checksum of the full block).
    Write {
        /// Block number.
        block: u64,
        /// The block's new generation.
        generation: Generation,
        /// CRC-32 of the block's full new contents.
        crc: u32,
    },
    /// The block now reads back as zeroes (WRITE_ZEROES, or a trim that zeroes).
    Zero {
        /// Block number.
        block: u64,
        /// The block's new generation.
        generation: Generation,
    },
    /// The block was discarded; its contents are undefined and it is untracked until written.
    Trim {
        /// Block number.
        block: u64,
        /// The generation this trim consumed.
        generation: Generation,
    },
    /// The device write of this generation failed: contents unknown until the next write.
    Failed {
        /// Block number.
        block: u64,
        /// The generation whose write failed.
        generation: Generation,
    },
    /// A FLUSH completed: every change record of this session with LSN <= `covers`, and every
    /// LSN in the `extra` ranges, had completed before the flush began and is now durable.
    Flush {
        /// The session of the flush.
        session: u64,
        /// Completed-watermark: all change records up to here had completed.
        covers: Lsn,
        /// Inclusive LSN ranges that had completed out of order above the watermark.
        extra: Vec<(Lsn, Lsn)>,
    },
    /// A FUA write completed: its records, LSNs `first..=last`, are durable.
    Durable {
        /// First LSN of the write's records.
        first: Lsn,
        /// Last LSN of the write's records.
        last: Lsn,
    },
    /// A flush round began: once confirmed ([`Record::FlushConfirm`]) it says what a
    /// [`Record::Flush`] with the same fields says. Unconfirmed it claims nothing: the journal
    /// synced it alongside the device's sync, which may not have finished.
    FlushIntent {
        /// The session of the flush.
        session: u64,
        /// Completed-watermark: all change records up to here had completed.
        covers: Lsn,
        /// Inclusive LSN ranges that had completed out of order above the watermark.
        extra: Vec<(Lsn, Lsn)>,
    },
    /// The device sync of a flush round succeeded after its intent was synced: every intent of
    /// `session` at or below LSN `intent` now holds.
    FlushConfirm {
        /// The session of the flush.
        session: u64,
        /// LSN of the intent confirmed (and of any earlier unconfirmed one of the session).
        intent: Lsn,
    },
    /// `lostwrite repair --apply` wrote this block's expected generation back (the device write
    /// synced first). Not a change: the block's expected state stays what it was.
    Repair {
        /// Block number.
        block: u64,
        /// The generation written back (the block's expected one).
        generation: Generation,
        /// CRC-32 of the contents written, which equals that generation's.
        crc: u32,
    },
}

impl Record {
    /// The block a change record is about (a repair is not a change: see [`Record::repaired`]).
    pub fn block(&self) -> Option<u64> {
        match *self {
            Record::Write { block, .. }
            | Record::Zero { block, .. }
            | Record::Trim { block, .. }
            | Record::Failed { block, .. } => Some(block),
            _ => None,
        }
    }

    /// Short name used by `ledger dump`.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::SessionOpen(_) => "session-open",
            Record::SessionClose { .. } => "session-close",
            Record::Baseline { .. } => "baseline",
            Record::Write { .. } => "write",
            Record::Zero { .. } => "zero",
            Record::Trim { .. } => "trim",
            Record::Failed { .. } => "failed",
            Record::Flush { .. } => "flush",
            Record::Durable { .. } => "durable",
            Record::FlushIntent { .. } => "flush-intent",
            Record::FlushConfirm { .. } => "flush-confirm",
            Record::Repair { .. } => "repair",
        }
    }

    /// The block a repair record wrote back.
    pub fn repaired(&self) -> Option<u64> {
        match *self {
            Record::Repair { block, .. } => Some(block),
            _ => None,
        }
    }
}
