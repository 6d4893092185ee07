//! The journal read as history: sessions (how each ended, which of its writes became durable)
//! and, for the blocks and checksums a caller asks about, every generation with its time and
//! durability. One pass over the journal serves `verify` (mismatched blocks and their found
//! checksums), `history` and `report`.

use super::reader::JournalEnd;
use super::record::{Generation, Lsn, Record};
use super::Ledger;
use crate::clock::Micros;
use crate::error::Result;
use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Completed FLUSHes: (LSN, time).
    pub flushes: Vec<(Lsn, Micros)>,
    covers: Lsn,
    ranges: Vec<(Lsn, Lsn)>,
}

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
            covers: 0,
            ranges: Vec::new(),
        }
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

/// What a change did to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Generation 0 from the baseline scan.
    Baseline {
        /// Checksum found by the scan.
        crc: u32,
    },
    /// New contents.
    Write {
        /// Checksum of the new contents.
        crc: u32,
    },
    /// Zeroed.
    Zero,
    /// Discarded: contents undefined, untracked until written.
    Trim,
    /// The write of this generation failed: contents unknown.
    Failed,
}

impl Change {
    /// Name used in output.
    pub fn name(self) -> &'static str {
        match self {
            Change::Baseline { .. } => "baseline",
            Change::Write { .. } => "write",
            Change::Zero => "zero",
            Change::Trim => "trim",
            Change::Failed => "failed",
        }
    }
}

/// One generation of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// LSN of the record (the baseline record's LSN for generation 0).
    pub lsn: Lsn,
    /// Commit time.
    pub time: Micros,
    /// Session that recorded it.
    pub session: u64,
    /// Block.
    pub block: u64,
    /// Generation.
    pub generation: Generation,
    /// What happened.
    pub change: Change,
    /// Whether it was made durable (resolved after the whole journal was read).
    pub durable: bool,
}

impl Event {
    /// The checksum the block holds after this event, when it is known.
    pub fn crc(&self, zero_crc: u32) -> Option<u32> {
        match self.change {
            Change::Baseline { crc } | Change::Write { crc } => Some(crc),
            Change::Zero => Some(zero_crc),
            Change::Trim | Change::Failed => None,
        }
    }
}

/// Most candidate blocks remembered per checksum when looking for misdirected writes.
const HITS_PER_CRC: usize = 4;

/// The result of one pass.
pub struct History {
    /// Sessions by number.
    pub sessions: BTreeMap<u64, SessionInfo>,
    /// Events of the asked-for blocks, in LSN order.
    pub events: HashMap<u64, Vec<Event>>,
    /// For each asked-for checksum, the latest events (of distinct blocks) that wrote it.
    pub crc_hits: HashMap<u32, Vec<Event>>,
    /// LSN and time of the baseline, if one was taken.
    pub baseline: Option<(Lsn, Micros)>,
    /// Where the journal ended.
    pub end: JournalEnd,
}

impl History {
    /// The session a record belongs to.
    pub fn session(&self, id: u64) -> Option<&SessionInfo> {
        self.sessions.get(&id)
    }

    /// Sessions that crashed without `--journal-sync strict`: their journal tails may have lost
    /// records of writes that reached the device.
    pub fn lossy_crashes(&self) -> impl Iterator<Item = &SessionInfo> {
        self.sessions.values().filter(|s| s.crashed() && !s.strict)
    }
}

fn remember_hit(hits: &mut Vec<Event>, e: Event) {
    hits.retain(|h| h.block != e.block);
    hits.push(e);
    if hits.len() > HITS_PER_CRC {
        hits.remove(0);
    }
}

/// Reads the whole journal once, gathering sessions, the events of `blocks`, and the latest
/// writers of each checksum in `crcs` (baseline included).
pub fn collect(ledger: &Ledger, blocks: &HashSet<u64>, crcs: &HashSet<u32>) -> Result<History> {
    let zero = ledger.zero_crc();
    let mut sessions: BTreeMap<u64, SessionInfo> = BTreeMap::new();
    sessions.insert(0, {
        let mut s = SessionInfo::new(0, 0, 0, true);
        s.end = SessionEnd::Clean { lsn: 0, time: 0 };
        s
    });
    let mut current = 0u64;
    let mut events: HashMap<u64, Vec<Event>> = HashMap::new();
    let mut hits: HashMap<u32, Vec<Event>> = HashMap::new();
    let mut baseline = None;
    let end = ledger.scan_journal(1, &mut |e| {
        let rec = e.record;
        let change = match *rec {
            Record::SessionOpen(ref o) => {
                if let Some(prev) = sessions.get_mut(&current) {
                    if current != 0 && !matches!(prev.end, SessionEnd::Clean { .. }) {
                        prev.end = SessionEnd::Crashed;
                    }
                }
                current = o.session;
                sessions.insert(
                    o.session,
                    SessionInfo::new(o.session, e.lsn, e.time, o.strict),
                );
                None
            }
            Record::SessionClose { session } => {
                if let Some(s) = sessions.get_mut(&session) {
                    s.end = SessionEnd::Clean {
                        lsn: e.lsn,
                        time: e.time,
                    };
                }
                None
            }
            Record::Flush {
                session,
                covers,
                ref extra,
            } => {
                if let Some(s) = sessions.get_mut(&session) {
                    s.covers = s.covers.max(covers);
                    s.ranges.extend_from_slice(extra);
                    s.flushes.push((e.lsn, e.time));
                }
                None
            }
            Record::Durable { first, last } => {
                if let Some(s) = sessions.get_mut(&current) {
                    s.ranges.push((first, last));
                }
                None
            }
            Record::Baseline { blocks: n } => {
                baseline = Some((e.lsn, e.time));
                if let Some(b) = ledger.baseline() {
                    for &blk in blocks.iter().filter(|&&b| b < n) {
                        events.entry(blk).or_default().push(Event {
                            lsn: e.lsn,
                            time: e.time,
                            session: current,
                            block: blk,
                            generation: 0,
                            change: Change::Baseline { crc: b.get(blk) },
                            durable: true,
                        });
                    }
                    if !crcs.is_empty() {
                        for blk in 0..n.min(b.block_count()) {
                            let c = b.get(blk);
                            if crcs.contains(&c) {
                                remember_hit(
                                    hits.entry(c).or_default(),
                                    Event {
                                        lsn: e.lsn,
                                        time: e.time,
                                        session: current,
                                        block: blk,
                                        generation: 0,
                                        change: Change::Baseline { crc: c },
                                        durable: true,
                                    },
                                );
                            }
                        }
                    }
                }
                None
            }
            Record::Write {
                block,
                generation,
                crc,
            } => Some((block, generation, Change::Write { crc })),
            Record::Zero { block, generation } => Some((block, generation, Change::Zero)),
            Record::Trim { block, generation } => Some((block, generation, Change::Trim)),
            Record::Failed { block, generation } => Some((block, generation, Change::Failed)),
        };
        if let Some(s) = sessions.get_mut(&current) {
            s.last_lsn = e.lsn;
            s.last_time = e.time;
        }
        if let Some((block, generation, change)) = change {
            let ev = Event {
                lsn: e.lsn,
                time: e.time,
                session: current,
                block,
                generation,
                change,
                durable: false,
            };
            if blocks.contains(&block) {
                events.entry(block).or_default().push(ev);
            }
            if let Change::Write { crc } = change {
                if crc != zero && crcs.contains(&crc) {
                    remember_hit(hits.entry(crc).or_default(), ev);
                }
            }
        }
        Ok(())
    })?;
    if let Some(last) = sessions.get_mut(&current) {
        if current != 0 && !matches!(last.end, SessionEnd::Clean { .. }) {
            // Running: read alongside the service, or by the service itself (online
            // detection), whose own session is not a crash.
            last.end = if ledger.is_live_view() || ledger.session_id() == Some(current) {
                SessionEnd::Running
            } else {
                SessionEnd::Crashed
            };
        }
    }
    let resolve = |ev: &mut Event| {
        if !ev.durable {
            ev.durable = sessions
                .get(&ev.session)
                .is_some_and(|s| s.is_durable(ev.lsn));
        }
    };
    for list in events.values_mut() {
        list.iter_mut().for_each(resolve);
    }
    for list in hits.values_mut() {
        list.iter_mut().for_each(resolve);
    }
    Ok(History {
        sessions,
        events,
        crc_hits: hits,
        baseline,
        end,
    })
}
