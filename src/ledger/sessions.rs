//! Sessions as the journal tells them: which session each record belongs to, how each ended
//! (closed cleanly, crashed, still running) and which of its writes became durable. One reading
//! of session-open, session-close, flush (or flush intent and its confirmation) and durable
//! records, followed by replay (open.rs, replay.rs: which session is the last and whether it is
//! open), compaction (compact.rs: what the compacted history keeps of each session) and history
//! (history.rs: durability of every event).

use super::fold::{self, Fold, FoldSession};
use super::record::{Lsn, Record};
use super::state::StateHeader;
use crate::clock::Micros;
use std::collections::BTreeMap;

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// A session-close record: every write of the session is durable.
    Clean {
        /// LSN of the close record.
        lsn: Lsn,
        /// Its time.
        time: Micros,
    },
    /// No close record, and a later session (or nothing) followed: the process or host died.
    Crashed,
    /// Still running (the ledger is held by a writer).
    Running,
}

/// One service session as the journal tells it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Session number (0 holds what `init` recorded).
    pub id: u64,
    /// LSN of its session-open record (0 for session 0).
    pub open_lsn: Lsn,
    /// Time it opened.
    pub open_time: Micros,
    /// `--journal-sync strict`.
    pub strict: bool,
    /// How it ended.
    pub end: SessionEnd,
    /// LSN of its last surviving record.
    pub last_lsn: Lsn,
    /// Time of that record.
    pub last_time: Micros,
    /// Completed FLUSHes: (LSN, time); of those folded by retention, only the last.
    pub flushes: Vec<(Lsn, Micros)>,
    /// Flushes folded by retention and not listed in `flushes`.
    pub folded_flushes: u64,
    /// Every change record with LSN <= this was flushed.
    pub(super) covers: Lsn,
    /// Further durable LSN ranges (flushed out of order, or FUA).
    pub(super) ranges: Vec<(Lsn, Lsn)>,
    /// Flush intents not yet confirmed: (LSN, covers, extra). They claim nothing until a
    /// confirmation follows; the compacted history does not keep them (a later confirmed
    /// round's watermark covers the same writes again).
    pending: Vec<Intent>,
}

/// A flush intent awaiting its confirmation: its LSN, `covers` and `extra`.
type Intent = (Lsn, Lsn, Vec<(Lsn, Lsn)>);

impl SessionInfo {
    fn new(id: u64, open_lsn: Lsn, open_time: Micros, strict: bool) -> Self {
        SessionInfo {
            id,
            open_lsn,
            open_time,
            strict,
            end: SessionEnd::Crashed,
            last_lsn: open_lsn,
            last_time: open_time,
            flushes: Vec::new(),
            folded_flushes: 0,
            covers: 0,
            ranges: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The session as the compacted history left it.
    fn from_fold(f: &FoldSession) -> Self {
        let mut s = SessionInfo::new(f.id, f.open_lsn, f.open_time, f.strict);
        if f.end == fold::end::CLEAN {
            s.end = SessionEnd::Clean {
                lsn: f.close_lsn,
                time: f.close_time,
            };
        }
        s.last_lsn = f.last_lsn;
        s.last_time = f.last_time;
        if f.last_flush_lsn != 0 {
            s.flushes.push((f.last_flush_lsn, f.last_flush_time));
        }
        s.folded_flushes = f.flushes.saturating_sub(s.flushes.len() as u64);
        s.covers = f.covers;
        s.ranges = f.ranges.clone();
        s
    }

    /// Completed FLUSHes, folded ones included.
    pub fn flush_count(&self) -> u64 {
        self.folded_flushes + self.flushes.len() as u64
    }

    /// Whether the change record at `lsn` (of this session) was made durable.
    pub fn is_durable(&self, lsn: Lsn) -> bool {
        matches!(self.end, SessionEnd::Clean { .. })
            || self.id == 0
            || lsn <= self.covers
            || self.ranges.iter().any(|&(a, b)| a <= lsn && lsn <= b)
    }

    /// True when the session ended in a crash.
    pub fn crashed(&self) -> bool {
        self.end == SessionEnd::Crashed
    }
}

/// Sessions as the records tell them: the one reading of session-open, session-close, flush and
/// durable records, which history and compaction both follow.
#[derive(Clone, Debug)]
pub struct Sessions {
    /// Sessions by number (session 0, `init`'s, always there).
    pub map: BTreeMap<u64, SessionInfo>,
    /// The session later records belong to.
    pub current: u64,
}

impl Default for Sessions {
    fn default() -> Self {
        let mut zero = SessionInfo::new(0, 0, 0, true);
        zero.end = SessionEnd::Clean { lsn: 0, time: 0 };
        Sessions {
            map: BTreeMap::from([(0, zero)]),
            current: 0,
        }
    }
}

impl Sessions {
    /// The sessions as the compacted history left them.
    pub fn from_fold(f: &Fold) -> Self {
        let mut s = Sessions::default();
        for fs in &f.sessions {
            s.map.insert(fs.id, SessionInfo::from_fold(fs));
        }
        s.current = f.header.last_session;
        s
    }

    /// The sessions as a state table's header records them at its checkpoint: the last
    /// session's number and whether it was open (what replay from the checkpoint needs; the
    /// details lie before the checkpoint). No header: none yet.
    pub fn at_checkpoint(h: Option<&StateHeader>) -> Self {
        let mut s = Sessions::default();
        if let Some(h) = h.filter(|h| h.last_session != 0) {
            let mut last = SessionInfo::new(h.last_session, 0, 0, false);
            if !h.session_open {
                last.end = SessionEnd::Clean { lsn: 0, time: 0 };
            }
            s.map.insert(h.last_session, last);
            s.current = h.last_session;
        }
        s
    }

    /// Follows one record as far as which session is current and how each ended: all replay
    /// needs (it keeps no flushes, which a long session has many of).
    pub fn see_bounds(&mut self, lsn: Lsn, time: Micros, rec: &Record) {
        match *rec {
            Record::SessionOpen(ref o) => {
                if let Some(prev) = self.map.get_mut(&self.current) {
                    if self.current != 0 && !matches!(prev.end, SessionEnd::Clean { .. }) {
                        prev.end = SessionEnd::Crashed;
                    }
                }
                self.current = o.session;
                self.map
                    .insert(o.session, SessionInfo::new(o.session, lsn, time, o.strict));
            }
            Record::SessionClose { session } => {
                if let Some(s) = self.map.get_mut(&session) {
                    s.end = SessionEnd::Clean { lsn, time };
                }
            }
            _ => {}
        }
    }

    /// Follows one record: session bounds, flushes and durable ranges, and each session's last
    /// record.
    pub fn see(&mut self, lsn: Lsn, time: Micros, rec: &Record) {
        self.see_bounds(lsn, time, rec);
        match *rec {
            Record::Flush {
                session,
                covers,
                ref extra,
            } => {
                if let Some(s) = self.map.get_mut(&session) {
                    s.covers = s.covers.max(covers);
                    s.ranges.extend_from_slice(extra);
                    s.flushes.push((lsn, time));
                }
            }
            Record::Durable { first, last } => {
                if let Some(s) = self.map.get_mut(&self.current) {
                    s.ranges.push((first, last));
                }
            }
            Record::FlushIntent {
                session,
                covers,
                ref extra,
            } => {
                if let Some(s) = self.map.get_mut(&session) {
                    s.pending.push((lsn, covers, extra.clone()));
                }
            }
            Record::FlushConfirm { session, intent } => {
                if let Some(s) = self.map.get_mut(&session) {
                    // Intents arrive in LSN order: the confirmed ones are a prefix.
                    let n = s.pending.partition_point(|p| p.0 <= intent);
                    for (_, covers, extra) in s.pending.drain(..n).collect::<Vec<_>>() {
                        s.covers = s.covers.max(covers);
                        s.ranges.extend_from_slice(&extra);
                        s.flushes.push((lsn, time));
                    }
                }
            }
            _ => {}
        }
        // A repair is written by no session: it must not stretch a crashed session's end past
        // the writes its lost journal tail could explain.
        if matches!(rec, Record::Repair { .. }) {
            return;
        }
        if let Some(s) = self.map.get_mut(&self.current) {
            s.last_lsn = lsn;
            s.last_time = time;
        }
    }

    /// A change record at `lsn` seen only as the current session's latest record (a skipped
    /// segment's summary gives no more of it).
    pub fn touch(&mut self, lsn: Lsn, time: Micros) {
        if let Some(s) = self.map.get_mut(&self.current) {
            s.last_lsn = lsn;
            s.last_time = time;
        }
    }

    /// True while the current session has no close record.
    pub fn open(&self) -> bool {
        self.current != 0
            && self
                .map
                .get(&self.current)
                .is_some_and(|s| !matches!(s.end, SessionEnd::Clean { .. }))
    }
}
