//! Appending to the journal, and group commit.
//!
//! `append` encodes one frame and hands it to the kernel with a positioned write before it
//! returns, so a record is never missing after a kill -9 once its caller goes on to touch the
//! device. `sync_to` makes the journal durable up to an LSN; concurrent callers elect one leader
//! that runs a single fdatasync for everyone waiting (raft-engine's write barrier, with a
//! Mutex/Condvar). A failed fdatasync poisons the writer: the page cache may have dropped the
//! dirty pages, so nothing written since the last good sync can be claimed durable again, and
//! every later call fails until the ledger is reopened.

use super::frame;
use super::kept::KeptLog;
use super::reader::JOURNAL_VERSION;
use super::record::{Lsn, Record};
use super::segment::{self, SegmentHeader};
use super::summary;
use crate::clock::Micros;
use crate::error::{Error, IoContext, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Where the journal ends, as the writer resumes it.
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    /// Last segment number.
    pub segment: u64,
    /// Valid bytes in it (the file is truncated to this).
    pub offset: u64,
    /// CRC-32 of those bytes.
    pub content_crc: u32,
    /// The next LSN.
    pub next_lsn: Lsn,
}

struct Appender {
    file: Arc<File>,
    path: PathBuf,
    segment: u64,
    offset: u64,
    hasher: crc32fast::Hasher,
    next_lsn: Lsn,
    buf: Vec<u8>,
    /// Time of the segment's first frame (for a resumed segment: when it was resumed).
    first_time: Option<Micros>,
}

struct SyncState {
    synced: Lsn,
    leader: bool,
    failed: Option<String>,
}

/// The journal's single appender, shared by every thread of the service.
pub struct JournalWriter {
    dir: PathBuf,
    ledger_id: [u8; 16],
    segment_bytes: u64,
    app: Mutex<Appender>,
    sync: Mutex<SyncState>,
    /// Shared with the ledger's read view (`Ledger::journal_synced`).
    synced_hint: Arc<AtomicU64>,
    cv: Condvar,
    /// Segments started so far, for whoever waits to compact sealed ones.
    rolls: Mutex<u64>,
    rolled: Condvar,
    /// Threads writing summaries of sealed segments (joined when the writer goes).
    summarisers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The data log (`--keep-data`), synced by every sync leader in the same round.
    kept: OnceLock<Arc<KeptLog>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; carrying on is safe.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Syncs a directory so a new file's name is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(dir, "fsync of directory")
}

/// Creates segment `number` with its header, durable (file and directory entry).
pub fn create_segment(
    dir: &Path,
    ledger_id: &[u8; 16],
    number: u64,
    first_lsn: Lsn,
    prev_crc: u32,
    prev_len: u64,
) -> Result<(File, PathBuf, crc32fast::Hasher)> {
    let path = segment::path(dir, number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(&path, "creating journal segment")?;
    let header = SegmentHeader {
        version: JOURNAL_VERSION,
        ledger_id: *ledger_id,
        number,
        first_lsn,
        prev_crc,
        prev_len,
    }
    .encode();
    file.write_all_at(&header, 0)
        .ctx(&path, "writing segment header")?;
    file.sync_data().ctx(&path, "fdatasync of new segment")?;
    sync_dir(dir)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    Ok((file, path, hasher))
}

impl JournalWriter {
    /// Resumes appending at the end described by `resume`; the caller has truncated any torn
    /// tail and everything up to `resume.next_lsn - 1` is on disk (`synced` says how much of it
    /// is known durable).
    pub fn resume(
        dir: &Path,
        ledger_id: [u8; 16],
        resume: Resume,
        synced: Lsn,
        segment_bytes: u64,
    ) -> Result<JournalWriter> {
        let path = segment::path(dir, resume.segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx(&path, "opening journal segment for appending")?;
        Ok(JournalWriter {
            dir: dir.to_path_buf(),
            ledger_id,
            segment_bytes: segment_bytes.max(segment::HEADER_LEN as u64 + 1),
            app: Mutex::new(Appender {
                file: Arc::new(file),
                path,
                segment: resume.segment,
                offset: resume.offset,
                hasher: crc32fast::Hasher::new_with_initial_len(resume.content_crc, resume.offset),
                next_lsn: resume.next_lsn,
                buf: Vec::with_capacity(64 << 10),
                first_time: (resume.offset > segment::HEADER_LEN as u64).then(crate::clock::now),
            }),
            sync: Mutex::new(SyncState {
                synced,
                leader: false,
                failed: None,
            }),
            synced_hint: Arc::new(AtomicU64::new(synced)),
            cv: Condvar::new(),
            rolls: Mutex::new(0),
            rolled: Condvar::new(),
            summarisers: Mutex::new(Vec::new()),
            kept: OnceLock::new(),
        })
    }

    /// Appends `records` as one frame (one commit group, one time) and returns the LSN range
    /// they got. When this returns Ok the frame is in the kernel; on Err nothing was appended.
    pub fn append(&self, records: &[Record], time: Micros) -> Result<(Lsn, Lsn)> {
        assert!(!records.is_empty());
        self.check_poison()?;
        let mut a = lock(&self.app);
        if a.offset >= self.segment_bytes {
            self.rollover(&mut a)?;
        }
        let first = a.next_lsn;
        let synced = self.synced_hint.load(Ordering::Acquire);
        let mut buf = std::mem::take(&mut a.buf);
        buf.clear();
        for (i, chunk) in records.chunks(frame::MAX_RECORDS).enumerate() {
            let lsn = first + (i * frame::MAX_RECORDS) as u64;
            frame::encode(&mut buf, &self.ledger_id, lsn, time, synced, chunk);
        }
        let result = a.file.write_all_at(&buf, a.offset);
        if let Err(e) = result {
            // Take back whatever part of the frame landed so the journal stays whole, before
            // anyone else may append at this offset.
            let (path, offset) = (a.path.clone(), a.offset);
            if let Err(te) = a.file.set_len(offset) {
                self.poison(format!(
                    "appending failed ({e}) and truncating back to offset {offset} failed too ({te})"
                ));
            }
            a.buf = buf;
            drop(a);
            return Err(Error::io(
                &path,
                format!("appending a journal frame at offset {offset}"),
                e,
            ));
        }
        a.hasher.update(&buf);
        a.first_time.get_or_insert(time);
        a.offset += buf.len() as u64;
        a.next_lsn += records.len() as u64;
        a.buf = buf;
        Ok((first, first + records.len() as u64 - 1))
    }

    fn rollover(&self, a: &mut Appender) -> Result<()> {
        a.file.sync_data().map_err(|e| {
            self.poison(format!("fdatasync of {} failed: {e}", a.path.display()));
            Error::io(&a.path, "fdatasync before starting a new segment", e)
        })?;
        let prev_crc = a.hasher.clone().finalize();
        let (file, path, hasher) = create_segment(
            &self.dir,
            &self.ledger_id,
            a.segment + 1,
            a.next_lsn,
            prev_crc,
            a.offset,
        )?;
        a.file = Arc::new(file);
        a.path = path;
        a.segment += 1;
        a.offset = segment::HEADER_LEN as u64;
        a.hasher = hasher;
        a.first_time = None;
        self.summarise(vec![a.segment - 1]);
        *lock(&self.rolls) += 1;
        self.rolled.notify_all();
        Ok(())
    }

    /// Writes the summaries of sealed segments `numbers` in the background (derived data: a
    /// failure only means a later reader reads those segments in full).
    pub fn summarise(&self, numbers: Vec<u64>) {
        if numbers.is_empty() {
            return;
        }
        let (dir, id) = (self.dir.clone(), self.ledger_id);
        let mut threads = lock(&self.summarisers);
        threads.retain(|t| !t.is_finished());
        let t = std::thread::Builder::new()
            .name("lw-summary".into())
            .spawn(move || {
                for n in numbers {
                    if let Err(e) = summary::build(&dir, &id, n) {
                        tracing::debug!("no summary of journal segment {n}: {e}");
                    }
                }
            });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => tracing::debug!("no thread to summarise journal segments: {e}"),
        }
    }

    /// Seals the current segment (synced) and starts the next, so retention can fold it.
    /// Nothing happens when the current segment holds no frame; returns whether it rolled.
    pub fn seal(&self) -> Result<bool> {
        self.check_poison()?;
        let mut a = lock(&self.app);
        if a.offset <= segment::HEADER_LEN as u64 {
            return Ok(false);
        }
        self.rollover(&mut a)?;
        Ok(true)
    }

    /// Time of the current segment's first frame, if it has one.
    pub fn segment_started(&self) -> Option<Micros> {
        lock(&self.app).first_time
    }

    /// Segments started so far by this writer.
    pub fn rolls(&self) -> u64 {
        *lock(&self.rolls)
    }

    /// Waits until a segment is started after the `seen`-th, or `timeout`; returns the count.
    pub fn wait_roll(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let g = lock(&self.rolls);
        let (g, _) = self
            .rolled
            .wait_timeout_while(g, timeout, |n| *n <= seen)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> Lsn {
        lock(&self.app).next_lsn
    }

    /// The last LSN appended and where the journal ends after it: (segment, offset), read
    /// together.
    pub fn end(&self) -> (Lsn, (u64, u64)) {
        let a = lock(&self.app);
        (a.next_lsn - 1, (a.segment, a.offset))
    }

    /// The journal is durable through this LSN.
    pub fn synced(&self) -> Lsn {
        self.synced_hint.load(Ordering::Acquire)
    }

    /// A shared handle on [`JournalWriter::synced`], so the ledger's read view can answer it
    /// without holding the writer.
    pub fn synced_handle(&self) -> Arc<AtomicU64> {
        self.synced_hint.clone()
    }

    /// Where the journal currently ends: (segment, offset).
    pub fn position(&self) -> (u64, u64) {
        let a = lock(&self.app);
        (a.segment, a.offset)
    }

    /// Makes the journal durable through `lsn`, sharing one fdatasync among all waiters.
    pub fn sync_to(&self, lsn: Lsn) -> Result<()> {
        let mut s = lock(&self.sync);
        loop {
            if let Some(f) = &s.failed {
                return Err(Error::Poisoned {
                    path: self.dir.clone(),
                    detail: f.clone(),
                });
            }
            if s.synced >= lsn {
                return Ok(());
            }
            if !s.leader {
                s.leader = true;
                drop(s);
                let (file, path, target) = {
                    let a = lock(&self.app);
                    (a.file.clone(), a.path.clone(), a.next_lsn - 1)
                };
                // Entries are appended before their write completes, so any FLUSH or FUA record
                // this round makes durable comes after their entries: one round, both durable.
                if let Some(k) = self.kept.get() {
                    k.sync();
                }
                let r = file.sync_data();
                s = lock(&self.sync);
                s.leader = false;
                match r {
                    Ok(()) => {
                        s.synced = s.synced.max(target);
                        self.synced_hint.store(s.synced, Ordering::Release);
                    }
                    Err(e) => {
                        s.failed = Some(format!("fdatasync of {} failed: {e}", path.display()));
                    }
                }
                self.cv.notify_all();
                continue;
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Joins the data log to the group commit: from now on every sync round syncs it too.
    pub fn attach_kept(&self, k: Arc<KeptLog>) {
        let _ = self.kept.set(k);
    }

    /// The data log, if one is attached.
    pub fn kept(&self) -> Option<&Arc<KeptLog>> {
        self.kept.get()
    }

    /// Makes everything appended so far durable.
    pub fn sync_all(&self) -> Result<()> {
        let last = self.next_lsn() - 1;
        self.sync_to(last)
    }

    fn poison(&self, why: String) {
        let mut s = lock(&self.sync);
        if s.failed.is_none() {
            tracing::error!("journal writer poisoned: {why}");
            s.failed = Some(why);
        }
        self.cv.notify_all();
    }

    fn check_poison(&self) -> Result<()> {
        match &lock(&self.sync).failed {
            Some(f) => Err(Error::Poisoned {
                path: self.dir.clone(),
                detail: f.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        for t in lock(&self.summarisers).drain(..) {
            let _ = t.join();
        }
    }
}
