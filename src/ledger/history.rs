//! The journal read as history: sessions (how each ended, which of its writes became durable)
//! and, for the blocks and checksums a caller asks about, every generation with its time and
//! durability. One pass over the journal serves `verify` (mismatched blocks and their found
//! checksums), `history` and `report`.

use super::fold::{Fold, FoldChange};
use super::reader::JournalEnd;
use super::record::{Generation, Lsn, Record};
pub use super::sessions::{SessionEnd, SessionInfo, Sessions};
use super::summary::{Seen, Summary};
use super::Ledger;
use crate::clock::Micros;
use crate::error::Result;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// A repair of one block: its expected generation written back by `lostwrite repair --apply`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repaired {
    /// LSN of the repair record.
    pub lsn: Lsn,
    /// When it was recorded.
    pub time: Micros,
    /// The generation written back.
    pub generation: Generation,
    /// Its checksum.
    pub crc: u32,
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
    /// Repairs of the asked-for blocks recorded in the retained journal, in LSN order (retention
    /// keeps no repairs: they change no expected state).
    pub repairs: HashMap<u64, Vec<Repaired>>,
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

/// What one pass gathers (shared by the compacted-history and journal visitors).
#[derive(Default)]
struct Gather {
    sessions: Sessions,
    events: HashMap<u64, Vec<Event>>,
    hits: HashMap<u32, Vec<Event>>,
    baseline: Option<(Lsn, Micros)>,
    compacted: Option<(Lsn, Micros)>,
    repairs: HashMap<u64, Vec<Repaired>>,
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
            Record::Repair {
                block,
                generation,
                crc,
            } => {
                if blocks.contains(&block) {
                    self.repairs.entry(block).or_default().push(Repaired {
                        lsn: e.lsn,
                        time: e.time,
                        generation,
                        crc,
                    });
                }
                None
            }
            Record::SessionOpen(_)
            | Record::SessionClose { .. }
            | Record::Flush { .. }
            | Record::Durable { .. }
            | Record::FlushIntent { .. }
            | Record::FlushConfirm { .. } => None,
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
    // Checksums are not in the summaries: asked about, every segment is read.
    let wants = |s: &Summary| !crcs.is_empty() || blocks.iter().any(|&b| s.may_hold(b));
    // Checksums asked about need every write record decoded.
    let filter = BlockFilter::new(blocks);
    let want_block = |b: u64| filter.contains(b);
    let of_blocks: Option<&dyn Fn(u64) -> bool> = crcs.is_empty().then_some(&want_block);
    let end = ledger.scan_history_skimming(
        &mut |f| match f {
            Some(f) => gather.borrow_mut().fold(ledger, f, blocks, crcs),
            None => Ok(()),
        },
        &wants,
        of_blocks,
        &mut |seen| {
            match seen {
                Seen::Record(e) => gather.borrow_mut().record(ledger, &e, blocks, crcs),
                Seen::Touch(lsn, time) => gather.borrow_mut().sessions.touch(lsn, time),
            }
            Ok(())
        },
    )?;
    let Gather {
        sessions,
        mut events,
        mut hits,
        baseline,
        compacted,
        repairs,
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
        repairs,
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

/// The asked-for blocks as the journal walk tests every change record against them: a bit per
/// hash bucket first (one load rejects almost every other block), then the set.
struct BlockFilter<'a> {
    bits: Vec<u64>,
    set: &'a HashSet<u64>,
}

impl<'a> BlockFilter<'a> {
    /// Buckets: 2^16, about 65 per block for a thousand blocks.
    const SHIFT: u32 = 48;

    fn bucket(block: u64) -> usize {
        (block.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> Self::SHIFT) as usize
    }

    fn new(set: &'a HashSet<u64>) -> Self {
        let mut bits = vec![0u64; (1 << (64 - Self::SHIFT)) / 64];
        for &b in set {
            let i = Self::bucket(b);
            bits[i / 64] |= 1 << (i % 64);
        }
        BlockFilter { bits, set }
    }

    fn contains(&self, block: u64) -> bool {
        let i = Self::bucket(block);
        self.bits[i / 64] & (1 << (i % 64)) != 0 && self.set.contains(&block)
    }
}
