//! The journal read as history: sessions (how each ended, which of its writes became durable)
//! and, for the blocks and checksums a caller asks about, every generation with its time and
//! durability. One pass over the journal serves `verify` (mismatched blocks and their found
//! checksums), `history` and `report`.

use super::fold::{self, Fold, FoldChange, FoldSession};
use super::reader::JournalEnd;
use super::record::{Generation, Lsn, Record};
use super::Ledger;
use crate::clock::Micros;
use crate::error::Result;
use std::cell::RefCell;
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
    /// Completed FLUSHes: (LSN, time); of those folded by retention, only the last.
    pub flushes: Vec<(Lsn, Micros)>,
    /// Flushes folded by retention and not listed in `flushes`.
    pub folded_flushes: u64,
    /// Every change record with LSN <= this was flushed.
    pub(super) covers: Lsn,
    /// Further durable LSN ranges (flushed out of order, or FUA).
    pub(super) ranges: Vec<(Lsn, Lsn)>,
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
            folded_flushes: 0,
            covers: 0,
            ranges: Vec::new(),
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
    /// Retention folded every record up to this LSN and time: older history keeps only each
    /// block's latest change.
    pub compacted: Option<(Lsn, Micros)>,
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

    /// Follows one record.
    pub fn see(&mut self, lsn: Lsn, time: Micros, rec: &Record) {
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
            _ => {}
        }
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

/// What one pass gathers (shared by the compacted-history and journal visitors).
#[derive(Default)]
struct Gather {
    sessions: Sessions,
    events: HashMap<u64, Vec<Event>>,
    hits: HashMap<u32, Vec<Event>>,
    baseline: Option<(Lsn, Micros)>,
    compacted: Option<(Lsn, Micros)>,
}

impl Gather {
    /// Takes in the compacted history: its sessions, the baseline if folded, and each asked-for
    /// block's latest folded change (or its baseline generation).
    fn fold(
        &mut self,
        ledger: &Ledger,
        f: &Fold,
        blocks: &HashSet<u64>,
        crcs: &HashSet<u32>,
    ) -> Result<()> {
        let zero = ledger.zero_crc();
        self.compacted = Some((f.header.through_lsn, f.header.through_time));
        self.sessions = Sessions::from_fold(f);
        let session_of = |lsn: Lsn| {
            let i = f.sessions.partition_point(|s| s.open_lsn <= lsn);
            if i == 0 {
                0
            } else {
                f.sessions[i - 1].id
            }
        };
        let mut latest: HashMap<u64, Event> = HashMap::new();
        let mut crc_writers: Vec<Event> = Vec::new();
        f.entries(&mut |fe| {
            let want_block = blocks.contains(&fe.block);
            let want_crc =
                matches!(fe.change, FoldChange::Write(c) if c != zero && crcs.contains(&c));
            if want_block || want_crc {
                let ev = Event {
                    lsn: fe.lsn,
                    time: fe.time,
                    session: session_of(fe.lsn),
                    block: fe.block,
                    generation: fe.generation,
                    change: match fe.change {
                        FoldChange::Write(crc) => Change::Write { crc },
                        FoldChange::Zero => Change::Zero,
                        FoldChange::Trim => Change::Trim,
                        FoldChange::Failed => Change::Failed,
                    },
                    durable: false,
                };
                if want_block {
                    latest.insert(fe.block, ev);
                }
                if want_crc {
                    crc_writers.push(ev);
                }
            }
            Ok(())
        })?;
        if f.header.baseline_lsn != 0 {
            let at = (f.header.baseline_lsn, f.header.baseline_time);
            self.baseline = Some(at);
            if let Some(b) = ledger.baseline() {
                for &blk in blocks.iter().filter(|&&x| x < b.block_count()) {
                    if !latest.contains_key(&blk) {
                        self.events.entry(blk).or_default().push(baseline_event(
                            at,
                            blk,
                            b.get(blk),
                        ));
                    }
                }
                baseline_hits(b, at, crcs, &mut self.hits);
            }
        }
        for (blk, ev) in latest {
            self.events.entry(blk).or_default().push(ev);
        }
        // Older writers first: a checksum remembers its latest few.
        crc_writers.sort_unstable_by_key(|e| e.lsn);
        for ev in crc_writers {
            if let Change::Write { crc } = ev.change {
                remember_hit(self.hits.entry(crc).or_default(), ev);
            }
        }
        Ok(())
    }

    /// Takes in one journal record.
    fn record(
        &mut self,
        ledger: &Ledger,
        e: &super::reader::Entry<'_>,
        blocks: &HashSet<u64>,
        crcs: &HashSet<u32>,
    ) {
        let zero = ledger.zero_crc();
        self.sessions.see(e.lsn, e.time, e.record);
        let change = match *e.record {
            Record::Baseline { blocks: n } => {
                let at = (e.lsn, e.time);
                self.baseline = Some(at);
                if let Some(b) = ledger.baseline() {
                    for &blk in blocks.iter().filter(|&&b| b < n) {
                        self.events.entry(blk).or_default().push(baseline_event(
                            at,
                            blk,
                            b.get(blk),
                        ));
                    }
                    baseline_hits(b, at, crcs, &mut self.hits);
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
            Record::SessionOpen(_)
            | Record::SessionClose { .. }
            | Record::Flush { .. }
            | Record::Durable { .. } => None,
        };
        if let Some((block, generation, change)) = change {
            let ev = Event {
                lsn: e.lsn,
                time: e.time,
                session: self.sessions.current,
                block,
                generation,
                change,
                durable: false,
            };
            if blocks.contains(&block) {
                self.events.entry(block).or_default().push(ev);
            }
            if let Change::Write { crc } = change {
                if crc != zero && crcs.contains(&crc) {
                    remember_hit(self.hits.entry(crc).or_default(), ev);
                }
            }
        }
    }
}

/// Reads the whole history once (the compacted part, then the journal), gathering sessions, the
/// events of `blocks`, and the latest writers of each checksum in `crcs` (baseline included).
pub fn collect(ledger: &Ledger, blocks: &HashSet<u64>, crcs: &HashSet<u32>) -> Result<History> {
    let gather = RefCell::new(Gather::default());
    let end = ledger.scan_history(
        &mut |f| match f {
            Some(f) => gather.borrow_mut().fold(ledger, f, blocks, crcs),
            None => Ok(()),
        },
        1,
        &mut |e| {
            gather.borrow_mut().record(ledger, &e, blocks, crcs);
            Ok(())
        },
    )?;
    let Gather {
        sessions,
        mut events,
        mut hits,
        baseline,
        compacted,
    } = gather.into_inner();
    let (mut sessions, current) = (sessions.map, sessions.current);
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
        compacted,
        end,
    })
}

/// Generation 0 of `block` as the baseline scan at `at` (LSN, time) recorded it; the baseline is
/// session 0's and durable.
fn baseline_event(at: (Lsn, Micros), block: u64, crc: u32) -> Event {
    Event {
        lsn: at.0,
        time: at.1,
        session: 0,
        block,
        generation: 0,
        change: Change::Baseline { crc },
        durable: true,
    }
}

/// Remembers the baselined blocks whose generation 0 had a checksum in `crcs`.
fn baseline_hits(
    b: &super::baseline::Baseline,
    at: (Lsn, Micros),
    crcs: &HashSet<u32>,
    hits: &mut HashMap<u32, Vec<Event>>,
) {
    if crcs.is_empty() {
        return;
    }
    for blk in 0..b.block_count() {
        let c = b.get(blk);
        if crcs.contains(&c) {
            remember_hit(hits.entry(c).or_default(), baseline_event(at, blk, c));
        }
    }
}
