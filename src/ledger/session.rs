//! Writing: the two types through which a ledger is changed, so that misuse does not compile.
//!
//! - [`LedgerWriter`] is a ledger opened by the one writer (`LedgerWriter::open`, in open.rs:
//!   exclusive lock, torn tail truncated, table repaired and checkpointed). It owns the journal
//!   appender and offers what needs it without a session: [`LedgerWriter::begin_session`],
//!   [`LedgerWriter::rebuild_state`] (`ledger check --repair`) and retention (compact.rs).
//! - [`WriteSession`] is what `begin_session` turns a writer into: the recording API the service
//!   calls (`record_*`, `complete`, `record_fua`, `flush` and its rounds, `poison_session`,
//!   `close`). Its durability rules are docs/DESIGN.md section 3, "The durability protocol":
//!   a change is recorded (its frame is in the kernel) before the caller issues the device
//!   write; a failed device write is recorded as failed; [`WriteSession::flush`] marks durable
//!   exactly the changes that had completed when it began, after the device and the journal
//!   were both synced; [`WriteSession::record_fua`] marks one completed write durable, with its
//!   journal records synced; [`WriteSession::close`] ends the session cleanly: everything
//!   synced, a session-close record.
//!
//! Each dereferences to the one below it (`WriteSession` → `LedgerWriter` → [`Ledger`]), so a
//! session also answers everything a reader can, and a `&WriteSession` passes where a
//! `&Ledger` is asked for.

use super::checkpoint::Checkpoints;
use super::confirm::{ConfirmTimer, CONFIRM_DELAY};
use super::kept::log::Raw;
use super::kept::{Keep, KeptLog};
use super::meta;
use super::record::{Generation, Lsn, Record, SessionOpen};
use super::replay::{journal_start, Replay};
use super::state::{self, BlockState};
use super::writer::JournalWriter;
use super::{lock_mutex, Ledger, JOURNAL_DIR};
use crate::block;
use crate::clock;
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// A ledger opened by its one writer, with the journal open for appending.
pub struct LedgerWriter {
    pub(super) ledger: Ledger,
    pub(super) journal: JournalWriter,
    /// Last record time of sealed segments (they never change), for retention decisions.
    pub(super) segment_times: Mutex<BTreeMap<u64, clock::Micros>>,
    /// A compaction pass stopped at its size cap: the next one goes on with the same batch.
    pub(super) fold_pending: AtomicBool,
    /// Most journal bytes one compaction pass folds.
    pub(super) fold_pass_bytes: u64,
}

impl Deref for LedgerWriter {
    type Target = Ledger;

    fn deref(&self) -> &Ledger {
        &self.ledger
    }
}

impl LedgerWriter {
    /// The journal appender.
    pub(super) fn journal(&self) -> &JournalWriter {
        &self.journal
    }

    /// The read view of this ledger, giving up the journal (the exclusive lock stays held until
    /// the view is dropped).
    pub fn into_ledger(self) -> Ledger {
        let mut l = self.ledger;
        l.synced = None;
        l
    }

    /// Starts a service session: appends a session-open record (saying whether the previous
    /// session ended cleanly), syncs it, and marks the table as being changed.
    pub fn begin_session(mut self, strict: bool) -> Result<WriteSession> {
        if !strict {
            // Its FLUSHes will append intents and confirmations.
            meta::ensure_version(&self.dir, meta::NEW_RECORDS_VERSION)?;
        }
        let j = &self.journal;
        let mut h = self.header();
        // The table stops claiming a clean end before anything is appended: a clean header
        // then means no writer appended past its checkpoint, so bytes found there were written
        // by no crash of ours (docs/FORMAT.md, "Recovery"). It is still the state at its
        // checkpoint: a running one (checkpoint.rs) from here on.
        let boot = state::boot_id();
        h.clean = false;
        h.running = boot;
        self.state.write_header(&h)?;
        let id = h.last_session + 1;
        let opened = clock::now();
        let (lsn, _) = j.append(
            &[Record::SessionOpen(SessionOpen {
                session: id,
                previous_clean: self.recovery.previous_clean,
                strict,
                pid: std::process::id(),
                software: concat!("lostwrite ", env!("CARGO_PKG_VERSION")).into(),
            })],
            opened,
        )?;
        j.sync_to(lsn)?;
        h.checkpoint_lsn = lsn;
        h.checkpoint_pos = j.position();
        h.last_session = id;
        h.session_open = true;
        h.clean = false;
        h.running = boot;
        self.state.write_header(&h)?;
        *lock_mutex(&self.header) = h;
        self.ledger.own_session = Some(id);
        let writer = Arc::new(self);
        let confirm_timer = if strict {
            None
        } else {
            Some(ConfirmTimer::start(writer.clone())?)
        };
        Ok(WriteSession {
            writer,
            confirm_timer,
            id,
            strict,
            opened,
            checkpoints: Checkpoints::new(lsn, opened, boot),
            inflight: Mutex::new(Inflight {
                incomplete: BTreeMap::new(),
                completed: Vec::new(),
            }),
            flushes: Mutex::new(FlushRounds::default()),
            flushed: Condvar::new(),
            device_failure: Mutex::new(None),
        })
    }

    /// Records blocks written back by `repair --apply`, as (block, generation, crc): appended,
    /// synced, and the table checkpointed past them. The caller has written and synced the
    /// device first, so a crash leaves at worst a repaired block without its record, which
    /// holds its expected generation and verifies. The expected state does not change.
    pub fn record_repairs(&self, repairs: &[(u64, Generation, u32)]) -> Result<()> {
        if repairs.is_empty() {
            return Ok(());
        }
        meta::ensure_version(&self.dir, meta::NEW_RECORDS_VERSION)?;
        let j = &self.journal;
        let mut h = self.header();
        // As at a session's start: the table stops claiming a clean end before anything is
        // appended, so bytes a crash leaves past the checkpoint read as a torn tail of ours.
        h.clean = false;
        h.running = state::boot_id();
        self.state.write_header(&h)?;
        let records: Vec<Record> = repairs
            .iter()
            .map(|&(block, generation, crc)| Record::Repair {
                block,
                generation,
                crc,
            })
            .collect();
        let (_, last) = j.append(&records, clock::now())?;
        j.sync_to(last)?;
        h.checkpoint_lsn = last;
        h.checkpoint_pos = j.position();
        h.clean = true;
        h.running = None;
        self.checkpoint(h)
    }

    /// Rewrites the state table from the journal and checkpoints it (`ledger check --repair`).
    pub fn rebuild_state(&mut self) -> Result<()> {
        let jdir = self.dir.join(JOURNAL_DIR);
        self.state.clear();
        let fold = self.fold();
        let all = Replay {
            state: &self.state,
            baseline: self.baseline.as_ref(),
            zero_crc: self.zero_crc,
            jdir: &jdir,
            ledger_id: &self.meta.ledger_id,
            start: journal_start(fold.as_ref()),
            skim: false,
        };
        let mut sessions = all.seed(fold.as_ref())?;
        let (end, _) = all.run(all.start.lsn, (0, 0), None, &mut sessions)?;
        let mut h = self.header();
        h.checkpoint_lsn = end.next_lsn - 1;
        h.last_session = sessions.current;
        h.session_open = sessions.open();
        h.clean = true;
        h.running = None;
        self.checkpoint(h)
    }
}

/// A service session: a writer's ledger with a session begun, the only value that can record.
/// Shared by the service's threads (behind an `Arc`); [`WriteSession::close`] ends it.
pub struct WriteSession {
    /// Syncs the journal for flush rounds (none in a strict session, whose flushes are
    /// serial). Declared first: its thread is joined before the writer goes.
    confirm_timer: Option<ConfirmTimer>,
    /// Shared with the confirmation timer's thread only.
    writer: Arc<LedgerWriter>,
    id: u64,
    strict: bool,
    opened: clock::Micros,
    checkpoints: Checkpoints,
    inflight: Mutex<Inflight>,
    flushes: Mutex<FlushRounds>,
    flushed: Condvar,
    device_failure: Mutex<Option<String>>,
}

impl Deref for WriteSession {
    type Target = LedgerWriter;

    fn deref(&self) -> &LedgerWriter {
        &self.writer
    }
}

impl WriteSession {
    /// The session number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether every change is durable before its reply (`--journal-sync strict`).
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// When the session began (its session-open record's time).
    pub fn opened(&self) -> clock::Micros {
        self.opened
    }

    /// LSN of the last record appended: once the journal is synced through it, every claim
    /// made so far (a flush's confirmation included) is durable.
    pub fn last_lsn(&self) -> Lsn {
        self.journal().next_lsn() - 1
    }

    /// The session's running checkpoints (checkpoint.rs).
    pub(super) fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// Starts keeping the contents of written blocks in the data log at `dir` (`serve
    /// --keep-data`), its syncs joined to the journal's group commit. Returns what opening it
    /// did (a torn tail cut) for the operator.
    pub fn keep_data(&mut self, dir: &Path, keep: Keep) -> Result<Vec<String>> {
        let (log, warnings) = KeptLog::open(dir, self.meta.ledger_id, self.meta.block_size, keep)?;
        let log = Arc::new(log);
        log.start()?;
        self.writer.journal.attach_kept(log);
        Ok(warnings)
    }

    /// The data log, when the session keeps data.
    pub fn kept(&self) -> Option<&Arc<KeptLog>> {
        self.journal().kept()
    }

    /// Keeps the contents of a recorded change: `data` holds the blocks of `t` back to back
    /// (each block's bytes on the device), `new` what was recorded for each. Call after the
    /// records are appended and before the device write completes ([`WriteSession::complete`]),
    /// so that the sync round that makes the write durable makes its entry durable too. Blocks
    /// recorded as zeroes are not kept (their contents are known).
    pub fn keep(&self, t: &Ticket, new: &[NewContents], data: &[u8]) {
        self.keep_many(&[(t, new, data)]);
    }

    /// [`WriteSession::keep`] for several changes, with one append.
    pub fn keep_many(&self, items: &[(&Ticket, &[NewContents], &[u8])]) {
        let Some(k) = self.kept().filter(|k| k.keeping()) else {
            return;
        };
        let geo = self.geometry;
        let mut raws = Vec::new();
        for &(t, new, data) in items {
            let base = geo.offset(t.first_block);
            for (i, nc) in new.iter().enumerate() {
                let NewContents::Crc(crc) = *nc else { continue };
                let b = t.first_block + i as u64;
                let at = (geo.offset(b) - base) as usize;
                let Some(bytes) = data.get(at..at + geo.bytes_in(b)) else {
                    continue;
                };
                let Some(&g) = t.generations.get(i) else {
                    continue;
                };
                raws.push(Raw {
                    block: b,
                    generation: g,
                    crc,
                    lsn: t.first + i as u64,
                    data: bytes.to_vec(),
                });
            }
        }
        // Compressed and hashed on the data log's own thread, off the write path.
        k.hand_over(raws);
    }

    /// Refuses to record once the device failed to make data durable.
    fn refuse_if_poisoned(&self) -> Result<()> {
        match lock_mutex(&self.device_failure).as_ref() {
            Some(why) => Err(Error::Poisoned {
                path: PathBuf::from(&self.meta.identity.path),
                detail: why.clone(),
            }),
            None => Ok(()),
        }
    }

    fn record_changes(
        &self,
        first_block: u64,
        count: u64,
        make: impl Fn(u64, Generation) -> (Record, BlockState),
    ) -> Result<Ticket> {
        let mut t = self.record_ranges(&[(first_block, count)], |_, b, g| make(b, g))?;
        Ok(t.pop().expect("one range, one ticket"))
    }

    /// Records changes of several block ranges (first block, count) with one journal append,
    /// one ticket per range; `make(i, block, generation)` gives the record and new state of a
    /// block of range `i`. The ranges must not overlap.
    fn record_ranges(
        &self,
        ranges: &[(u64, u64)],
        make: impl Fn(usize, u64, Generation) -> (Record, BlockState),
    ) -> Result<Vec<Ticket>> {
        self.refuse_if_poisoned()?;
        let j = self.journal();
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for &(first, count) in ranges {
            let end = first
                .checked_add(count)
                .filter(|&e| e <= self.geometry.block_count() && count > 0)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "blocks {first}..+{count} are not within the device's {} blocks",
                        self.geometry.block_count()
                    ))
                })?;
            spans.push((first, end));
        }
        if spans.len() > 1 {
            spans.sort_unstable();
            if spans.windows(2).any(|w| w[1].0 < w[0].1) {
                return Err(Error::Usage(
                    "changes recorded together must not overlap".into(),
                ));
            }
        }
        let mut records = Vec::with_capacity(ranges.iter().map(|r| r.1 as usize).sum());
        let mut tickets = Vec::with_capacity(ranges.len());
        for (i, &(first, count)) in ranges.iter().enumerate() {
            let mut generations = Vec::with_capacity(count as usize);
            for b in first..first + count {
                let g = self.state.get(b).next_generation();
                records.push(make(i, b, g).0);
                generations.push(g);
            }
            tickets.push(Ticket {
                first: 0,
                last: 0,
                first_block: first,
                generations,
            });
        }
        // Shared until the entries are in the table: a running checkpoint never claims a record
        // that is appended but not yet applied.
        let applying = self.checkpoints.applying();
        let last = {
            let mut inf = lock_mutex(&self.inflight);
            let (mut lsn, last) = j.append(&records, clock::now())?;
            for t in &mut tickets {
                t.first = lsn;
                t.last = lsn + t.generations.len() as u64 - 1;
                lsn = t.last + 1;
                inf.incomplete.insert(t.first, t.last);
            }
            last
        };
        for (i, t) in tickets.iter().enumerate() {
            for (b, &g) in (t.first_block..).zip(&t.generations) {
                self.state.set(b, make(i, b, g).1);
            }
        }
        drop(applying);
        self.checkpoint_if_due(last);
        if self.strict {
            j.sync_to(last)?;
        }
        Ok(tickets)
    }

    /// Records that blocks `first_block..` are being written with contents whose checksums are
    /// `crcs`. Call before issuing the device write; the records are in the kernel (and with
    /// `--journal-sync strict`, durable) when this returns.
    pub fn record_write(&self, first_block: u64, crcs: &[u32]) -> Result<Ticket> {
        let new: Vec<NewContents> = crcs.iter().map(|&c| NewContents::Crc(c)).collect();
        self.record_contents(first_block, &new)
    }

    /// Records a change of blocks `first_block..` where each block either gets contents with
    /// a checksum or becomes zeroes (a write-zeroes whose edges are partial blocks).
    pub fn record_contents(&self, first_block: u64, new: &[NewContents]) -> Result<Ticket> {
        self.record_changes(first_block, new.len() as u64, |b, g| {
            self.contents_change(b, g, new[(b - first_block) as usize])
        })
    }

    /// The record and the new state of block `b` getting generation `g` with contents `nc`.
    fn contents_change(&self, b: u64, g: Generation, nc: NewContents) -> (Record, BlockState) {
        match nc {
            NewContents::Crc(crc) => (
                Record::Write {
                    block: b,
                    generation: g,
                    crc,
                },
                BlockState::Tracked { generation: g, crc },
            ),
            NewContents::Zero => (
                Record::Zero {
                    block: b,
                    generation: g,
                },
                BlockState::Tracked {
                    generation: g,
                    crc: self.zero_crc,
                },
            ),
        }
    }

    /// Records several changes as [`WriteSession::record_contents`] would one after the other, but
    /// with one journal append (one write(2) for all of them): what a connection's pipelined
    /// WRITEs cost. The ranges must not overlap. Every record is in the kernel when this returns,
    /// before the caller issues any of the device writes.
    pub fn record_contents_many(&self, items: &[(u64, &[NewContents])]) -> Result<Vec<Ticket>> {
        let ranges: Vec<(u64, u64)> = items
            .iter()
            .map(|&(first, new)| (first, new.len() as u64))
            .collect();
        self.record_ranges(&ranges, |i, b, g| {
            let (first, new) = items[i];
            self.contents_change(b, g, new[(b - first) as usize])
        })
    }

    /// Like [`WriteSession::record_write`], checksumming `data` (whole blocks) itself.
    pub fn record_write_data(&self, first_block: u64, data: &[u8]) -> Result<Ticket> {
        let bs = self.meta.block_size as usize;
        if data.len() % bs != 0 {
            return Err(Error::Usage(format!(
                "{} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let crcs: Vec<u32> = data.chunks_exact(bs).map(block::checksum).collect();
        self.record_write(first_block, &crcs)
    }

    /// Records that blocks are being zeroed (they will read back as zeroes).
    pub fn record_zero(&self, first_block: u64, count: u64) -> Result<Ticket> {
        self.record_contents(first_block, &vec![NewContents::Zero; count as usize])
    }

    /// Records that blocks were discarded with undefined contents: untracked until written.
    pub fn record_trim(&self, first_block: u64, count: u64) -> Result<Ticket> {
        self.record_changes(first_block, count, |b, g| {
            (
                Record::Trim {
                    block: b,
                    generation: g,
                },
                BlockState::Untracked { generation: g },
            )
        })
    }

    /// Reports how the device I/O of a ticket ended. A failure is recorded (the blocks' contents
    /// become unknown until their next write); the ticket then counts as completed for flushes.
    pub fn complete(&self, t: &Ticket, ok: bool) -> Result<()> {
        let j = self.journal();
        // A failure record changes the table: held as a recorder holds it (before `inflight`,
        // in the same order).
        let applying = (!ok).then(|| self.checkpoints.applying());
        let mut inf = lock_mutex(&self.inflight);
        let mut result = Ok(());
        if !ok {
            let records: Vec<Record> = t
                .generations
                .iter()
                .enumerate()
                .map(|(i, &g)| Record::Failed {
                    block: t.first_block + i as u64,
                    generation: g,
                })
                .collect();
            if let Err(e) = j.append(&records, clock::now()) {
                // The journal still says these writes happened. The session must not close
                // cleanly (which would make them durable): it will count as crashed, and its
                // unflushed writes as allowed losses.
                self.poison_session(format!(
                    "a failed device write could not be recorded as failed: {e}"
                ));
                result = Err(e);
            }
            for (i, &g) in t.generations.iter().enumerate() {
                self.state.set(
                    t.first_block + i as u64,
                    BlockState::Unknown { generation: g },
                );
            }
        }
        inf.incomplete.remove(&t.first);
        inf.completed.push((t.first, t.last));
        drop(inf);
        drop(applying);
        result
    }

    /// Marks a completed FUA write durable: appends a durable record and syncs the journal
    /// through it (group commit). Call after [`WriteSession::complete`] and after the device write,
    /// made with FUA, returned.
    pub fn record_fua(&self, t: &Ticket) -> Result<()> {
        self.refuse_if_poisoned()?;
        let j = self.journal();
        let (lsn, _) = j.append(
            &[Record::Durable {
                first: t.first,
                last: t.last,
            }],
            clock::now(),
        )?;
        j.sync_to(lsn)
    }

    /// A FLUSH: every change completed before this call becomes durable. `device_flush` syncs
    /// the device. A failed device flush poisons the session: later writes are refused, and the
    /// session will not close cleanly (its unflushed writes stay non-durable).
    ///
    /// With `--journal-sync strict` the device is synced first, then a flush record is
    /// appended and the journal synced through it. Otherwise a flush intent is appended and the
    /// journal is synced through it while the device syncs; once both are done a confirmation
    /// is appended, which the next round's sync (or the confirmation timer, within
    /// [`CONFIRM_DELAY`]) makes durable. docs/DESIGN.md, "The durability protocol", says why
    /// no crash can turn this into a false claim.
    ///
    /// Concurrent calls share rounds (see `FlushRounds`): a call may return after another
    /// caller's `device_flush` ran, so every caller must pass a flush of the same device.
    pub fn flush(&self, device_flush: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        self.refuse_if_poisoned()?;
        let mut g = lock_mutex(&self.flushes);
        // The first round to begin after this call covers it.
        let need = g.started + 1;
        while g.running && g.done < need {
            g = self.flushed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        if g.done >= need {
            return match g.failed.iter().find(|(r, _)| *r == need) {
                Some((_, why)) => Err(Error::Poisoned {
                    path: self.dir.clone(),
                    detail: why.clone(),
                }),
                None => Ok(()),
            };
        }
        g.running = true;
        g.started += 1;
        let round = g.started;
        drop(g);
        let r = self.flush_round(device_flush);
        let mut g = lock_mutex(&self.flushes);
        g.running = false;
        g.done = round;
        if let Err(e) = &r {
            g.failed.push((round, e.to_string()));
        }
        self.flushed.notify_all();
        r
    }

    /// One flush round: what has completed becomes durable.
    fn flush_round(&self, device_flush: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        // Rounds run one at a time: a round that finds nothing new to record must not reply
        // before the round that took the completed writes has synced its record; and after a
        // failed device sync, a later "successful" one proves nothing (the kernel reports a
        // writeback error once), so the failure is checked again here.
        self.refuse_if_poisoned()?;
        let j = self.journal();
        let (covers, extra, changed) = {
            let mut inf = lock_mutex(&self.inflight);
            let covers = match inf.incomplete.first_key_value() {
                Some((&first, _)) => first - 1,
                None => j.next_lsn() - 1,
            };
            // Nothing completed since the last flush: nothing new becomes durable.
            let changed = !inf.completed.is_empty();
            let mut extra: Vec<(Lsn, Lsn)> = inf
                .completed
                .drain(..)
                .filter(|&(first, _)| first > covers)
                .collect();
            extra.sort_unstable();
            let mut extra = merge_ranges(extra);
            // Bounded, so the record fits a frame; writes left out are only not marked durable
            // by this flush (the next one covers them).
            extra.truncate(MAX_FLUSH_RANGES);
            (covers, extra, changed)
        };
        let Some(timer) = &self.confirm_timer else {
            // Strict: the flush record is appended only after the device sync, and is durable
            // before the reply, as every record of a strict session is.
            self.device_flush(device_flush)?;
            return if changed {
                let (lsn, _) = j.append(
                    &[Record::Flush {
                        session: self.id,
                        covers,
                        extra,
                    }],
                    clock::now(),
                )?;
                j.sync_to(lsn)
            } else {
                j.sync_all()
            };
        };
        if !changed {
            // Nothing to claim; the journal sync still carries an earlier round's confirmation.
            timer.sync_now(j.next_lsn() - 1);
            self.device_flush(device_flush)?;
            return j.sync_all();
        }
        let (intent, _) = j.append(
            &[Record::FlushIntent {
                session: self.id,
                covers,
                extra,
            }],
            clock::now(),
        )?;
        // The timer thread syncs the journal through the intent while this thread syncs the
        // device; `sync_to` below then finds it done, or joins that sync as a waiter.
        timer.sync_now(intent);
        self.device_flush(device_flush)?;
        j.sync_to(intent)?;
        // Only now, with the device synced, may the intent become a claim.
        let (confirm, _) = j.append(
            &[Record::FlushConfirm {
                session: self.id,
                intent,
            }],
            clock::now(),
        )?;
        timer.sync_by(confirm, Instant::now() + CONFIRM_DELAY);
        Ok(())
    }

    /// Runs the device's sync, poisoning the session when it fails.
    fn device_flush(&self, device_flush: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        device_flush().map_err(|e| {
            self.poison_session(format!("device flush (fdatasync) failed: {e}"));
            Error::io(&self.meta.identity.path, "fdatasync of device", e)
        })
    }

    /// Why the session refuses writes (the device failed to make data durable), if it does.
    pub fn session_failure(&self) -> Option<String> {
        lock_mutex(&self.device_failure).clone()
    }

    /// Records that the device failed to make data durable (a failed fdatasync outside
    /// [`WriteSession::flush`], e.g. for a FUA zeroing): later writes are refused and the
    /// session will not close cleanly.
    pub fn poison_session(&self, why: String) {
        let mut f = lock_mutex(&self.device_failure);
        if f.is_none() {
            tracing::error!("session poisoned: {why}");
            *f = Some(why);
        }
    }

    /// Ends the session cleanly: the device is flushed with `device_flush`, a session-close
    /// record is synced, and the state table is checkpointed. If the session was poisoned by a
    /// device failure it is left unclosed, so it counts as crashed.
    pub fn close(self, device_flush: impl FnOnce() -> std::io::Result<()>) -> Result<()> {
        let j = self.journal();
        if let Some(k) = self.kept() {
            k.close();
        }
        let failed = lock_mutex(&self.device_failure).clone();
        let mut h = self.header();
        if failed.is_none() {
            device_flush().ctx(&self.meta.identity.path, "fdatasync of device at shutdown")?;
            let (lsn, _) = j.append(&[Record::SessionClose { session: self.id }], clock::now())?;
            j.sync_to(lsn)?;
            h.checkpoint_lsn = lsn;
            h.session_open = false;
            h.clean = true;
        } else {
            j.sync_all()?;
            h.checkpoint_lsn = j.next_lsn() - 1;
            h.clean = true;
        }
        h.checkpoint_pos = j.position();
        h.running = None;
        self.writer.checkpoint(h)
    }
}

/// What a block will hold after a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewContents {
    /// Contents with this checksum.
    Crc(u32),
    /// Zeroes.
    Zero,
}

/// A recorded change whose device I/O is under way; hand it back to [`WriteSession::complete`].
#[derive(Debug, Clone)]
pub struct Ticket {
    /// LSN of the first record.
    pub first: Lsn,
    /// LSN of the last record.
    pub last: Lsn,
    /// First block changed.
    pub first_block: u64,
    /// The generation given to each block, in block order.
    pub generations: Vec<Generation>,
}

struct Inflight {
    incomplete: BTreeMap<Lsn, Lsn>,
    completed: Vec<(Lsn, Lsn)>,
}

/// Flushes run in rounds, one at a time: a FLUSH that arrives while a round runs waits for the
/// next round, which begins after it arrived and so covers it; every FLUSH waiting then shares
/// that one round (one device sync, one journal record) instead of running its own in turn.
#[derive(Default)]
struct FlushRounds {
    started: u64,
    done: u64,
    running: bool,
    /// Rounds that failed, and why (the session is poisoned after any of them).
    failed: Vec<(u64, String)>,
}

/// Most out-of-order completed ranges one flush record lists.
const MAX_FLUSH_RANGES: usize = 4096;

pub(super) fn merge_ranges(sorted: Vec<(Lsn, Lsn)>) -> Vec<(Lsn, Lsn)> {
    let mut out: Vec<(Lsn, Lsn)> = Vec::with_capacity(sorted.len());
    for (a, b) in sorted {
        match out.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge_ranges(vec![(1, 2), (3, 5), (7, 7), (8, 9), (20, 21)]),
            vec![(1, 5), (7, 9), (20, 21)]
        );
    }
}
