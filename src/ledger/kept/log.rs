//! Appending to the data log (`serve --keep-data`): [`KeptLog`], the one appender of a data
//! directory. The write path hands blocks over ([`KeptLog::hand_over`], a copy into a bounded
//! queue); the appender thread compresses and hashes them ([`Prepared::new`]) and appends a
//! batch with one positioned write; [`KeptLog::sync`] runs inside the journal's group commit
//! (writer.rs), so at every FLUSH, FUA and clean close the data log is durable in the same round
//! as the records. Segments roll at an eighth of a byte window (1 MiB ..= 64 MiB) or a quarter
//! of an age window; [`KeptLog::prune`] deletes sealed segments the window no longer keeps.
//!
//! The data log never stops the service: a write, sync or segment that fails stops keeping
//! (logged, and said by [`KeptLog::stats`]), and the journal goes on being the truth.

use super::format::{self, Prepared, SegmentHeader, HEADER_LEN};
use super::Keep;
use crate::clock::{self, Micros};
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

struct Appender {
    file: Arc<File>,
    path: PathBuf,
    number: u64,
    offset: u64,
    /// Bytes of the current segment known durable.
    synced: u64,
    first_time: Option<Micros>,
    buf: Vec<u8>,
}

/// A sealed segment: synced, never appended to again.
#[derive(Clone, Copy, Debug)]
struct Sealed {
    bytes: u64,
    /// Its last entry's time (the file's modification time for one found at open).
    last_time: Micros,
}

/// What [`KeptLog::stats`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptStats {
    /// The data directory.
    pub dir: PathBuf,
    /// The window kept.
    pub keep: Keep,
    /// Segment files.
    pub segments: u64,
    /// Bytes of them.
    pub bytes: u64,
    /// Entries appended by this process.
    pub appended: u64,
    /// Block bytes those entries hold (before compression).
    pub raw_bytes: u64,
    /// Time of the oldest segment's last entry, if any segment is sealed.
    pub oldest: Option<Micros>,
    /// Why keeping stopped, if it did.
    pub stopped: Option<String>,
}

/// What one [`KeptLog::prune`] deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pruned {
    /// First and last segment deleted.
    pub segments: (u64, u64),
    /// Bytes freed.
    pub freed: u64,
}

/// The appender of one data directory.
pub struct KeptLog {
    dir: PathBuf,
    ledger_id: [u8; 16],
    block_size: u32,
    keep: Keep,
    segment_bytes: u64,
    app: Mutex<Appender>,
    sealed: Mutex<BTreeMap<u64, Sealed>>,
    stopped: Mutex<Option<String>>,
    appended: AtomicU64,
    raw_bytes: AtomicU64,
    /// Blocks handed over by the write path, waiting for the appender thread.
    queue: Mutex<Queue>,
    /// The appender thread waits here for blocks.
    more: Condvar,
    /// Writers wait here while too many bytes wait.
    room: Condvar,
    /// A sync waits here for the appender to have appended what was handed over before it.
    drained: Condvar,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// One block's contents handed over by the write path, not yet compressed.
#[derive(Debug)]
pub struct Raw {
    /// The block.
    pub block: u64,
    /// Its new generation.
    pub generation: u32,
    /// The CRC-32 its Write record holds.
    pub crc: u32,
    /// The Write record's LSN.
    pub lsn: u64,
    /// Its contents.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Raw>,
    bytes: u64,
    /// Blocks handed over, and appended (or dropped once keeping stopped), since the start.
    sent: u64,
    done: u64,
    closed: bool,
    running: bool,
}

/// Most bytes of block contents waiting for the appender: a writer faster than compression
/// waits (bounded memory), it is not dropped.
const MAX_QUEUED: u64 = 32 << 20;
/// Most blocks the appender takes in one batch (one positioned write).
const BATCH: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn create_segment(dir: &Path, id: &[u8; 16], bs: u32, number: u64) -> Result<(File, PathBuf)> {
    let path = format::segment_path(dir, number);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(&path, "creating data-log segment")?;
    let h = SegmentHeader {
        ledger_id: *id,
        number,
        block_size: bs,
        created: clock::now(),
    };
    file.write_all_at(&h.encode(), 0)
        .ctx(&path, "writing data-log segment header")?;
    file.sync_data()
        .ctx(&path, "fdatasync of new data-log segment")?;
    super::super::writer::sync_dir(dir)?;
    Ok((file, path))
}

pub(super) fn mtime(path: &Path) -> Micros {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as Micros)
}

/// The segment numbers in `dir`, in order.
pub fn segment_numbers(dir: &Path) -> Result<Vec<u64>> {
    let mut n: Vec<u64> = std::fs::read_dir(dir)
        .ctx(dir, "listing the data directory")?
        .filter_map(|e| e.ok())
        .filter_map(|e| format::segment_number(&e.file_name().to_string_lossy()))
        .collect();
    n.sort_unstable();
    Ok(n)
}

impl KeptLog {
    /// Opens (creating it if needed) the data directory `dir` for appending: a torn tail of the
    /// last segment is truncated, a damaged last segment is left for `ledger check` and a new
    /// one begun. Returns what it did worth telling the operator.
    pub fn open(
        dir: &Path,
        ledger_id: [u8; 16],
        block_size: u32,
        keep: Keep,
    ) -> Result<(KeptLog, Vec<String>)> {
        std::fs::create_dir_all(dir).ctx(dir, "creating the data directory")?;
        let numbers = segment_numbers(dir)?;
        let mut warnings = Vec::new();
        let mut sealed = BTreeMap::new();
        for &n in numbers.iter().rev().skip(1) {
            let p = format::segment_path(dir, n);
            let bytes = std::fs::metadata(&p).map_or(0, |m| m.len());
            sealed.insert(
                n,
                Sealed {
                    bytes,
                    last_time: mtime(&p),
                },
            );
        }
        let mut resume = None;
        if let Some(&last) = numbers.last() {
            let path = format::segment_path(dir, last);
            let s = format::scan_segment(&path, &ledger_id, block_size)?;
            let blank = s.len < HEADER_LEN as u64 && s.header.is_none();
            match (&s.header_error, s.torn_at()) {
                (Some(_), _) if blank => {
                    // Created just before a crash, its header never written: nothing in it.
                    std::fs::remove_file(&path).ctx(&path, "removing an empty data-log segment")?;
                    warnings.push(format!(
                        "data log: removed {} ({} bytes, its header never written: left by a crash)",
                        path.display(),
                        s.len
                    ));
                }
                (Some(e), _) => {
                    if matches!(e, Error::Damaged { detail, .. } if detail.contains("another ledger"))
                    {
                        return Err(Error::Usage(format!(
                            "{e}; give --keep-data-dir a directory of its own for this ledger"
                        )));
                    }
                    warnings.push(format!(
                        "data log: {e}; left as it is (`lostwrite ledger check` names it), new entries go to a new segment"
                    ));
                    sealed.insert(
                        last,
                        Sealed {
                            bytes: s.len,
                            last_time: mtime(&path),
                        },
                    );
                }
                (None, Some(at)) => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .ctx(&path, "opening data-log segment")?;
                    f.set_len(at)
                        .ctx(&path, "truncating a torn data-log tail")?;
                    f.sync_data().ctx(&path, "fdatasync after truncating")?;
                    warnings.push(format!(
                        "data log: cut a torn tail of {} bytes at offset {at} of {} (never synced: left by a crash)",
                        s.len - at,
                        path.display()
                    ));
                    resume = Some((last, path, at, s.first_time));
                }
                (None, None) if !s.bad.is_empty() => {
                    let r = &s.bad[0];
                    warnings.push(format!(
                        "data log: {} is damaged at offset {} ({}), though a later entry says it was synced; left as it is (`lostwrite ledger check` names it), new entries go to a new segment",
                        path.display(),
                        r.offset,
                        r.why
                    ));
                    sealed.insert(
                        last,
                        Sealed {
                            bytes: s.len,
                            last_time: mtime(&path),
                        },
                    );
                }
                (None, None) => resume = Some((last, path, s.len, s.first_time)),
            }
        }
        let (number, path, offset, first_time, file) = match resume {
            Some((n, path, offset, first)) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .ctx(&path, "opening data-log segment for appending")?;
                (n, path, offset, first, file)
            }
            None => {
                let n = numbers.last().map_or(1, |l| l + 1);
                let (file, path) = create_segment(dir, &ledger_id, block_size, n)?;
                (n, path, HEADER_LEN as u64, None, file)
            }
        };
        let segment_bytes = match keep {
            Keep::Bytes(b) => (b / 8).clamp(1 << 20, 64 << 20),
            Keep::Age(_) => 64 << 20,
        };
        Ok((
            KeptLog {
                dir: dir.to_path_buf(),
                ledger_id,
                block_size,
                keep,
                segment_bytes,
                app: Mutex::new(Appender {
                    file: Arc::new(file),
                    path,
                    number,
                    offset,
                    synced: offset,
                    first_time,
                    buf: Vec::with_capacity(64 << 10),
                }),
                sealed: Mutex::new(sealed),
                stopped: Mutex::new(None),
                appended: AtomicU64::new(0),
                raw_bytes: AtomicU64::new(0),
                queue: Mutex::new(Queue::default()),
                more: Condvar::new(),
                room: Condvar::new(),
                drained: Condvar::new(),
                worker: Mutex::new(None),
            },
            warnings,
        ))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ledger's block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Whether entries are still appended.
    pub fn keeping(&self) -> bool {
        lock(&self.stopped).is_none()
    }

    fn stop(&self, why: String) {
        let mut s = lock(&self.stopped);
        if s.is_none() {
            tracing::error!("data log stopped: no more written blocks are kept: {why}");
            *s = Some(why);
        }
    }

    /// Starts the appender thread: from now on [`KeptLog::hand_over`] queues blocks for it, and
    /// compression and hashing leave the write path. It holds the log only while it works, and
    /// ends at [`KeptLog::close`] (or when the log is dropped).
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let weak = Arc::downgrade(self);
        let t = std::thread::Builder::new()
            .name("lw-keep".into())
            .spawn(move || appender(weak))
            .map_err(|e| Error::io(&self.dir, "starting the data log's appender thread", e))?;
        lock(&self.queue).running = true;
        *lock(&self.worker) = Some(t);
        Ok(())
    }

    /// Hands blocks to the appender thread (appends them here when there is none). Returns
    /// once they are queued: a sync that begins after this returns waits for them.
    pub fn hand_over(&self, raws: Vec<Raw>) {
        if raws.is_empty() || !self.keeping() {
            return;
        }
        let mut q = lock(&self.queue);
        if !q.running || q.closed {
            drop(q);
            let prepared: Vec<Prepared> = raws.iter().map(Raw::prepare).collect();
            return self.append(&prepared);
        }
        while q.bytes > MAX_QUEUED && !q.closed {
            q = self.room.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.sent += raws.len() as u64;
        q.bytes += raws.iter().map(|r| r.data.len() as u64).sum::<u64>();
        q.items.extend(raws);
        drop(q);
        self.more.notify_one();
    }

    /// One turn of the appender: waits up to `wait` for blocks, appends a batch. False once
    /// closed and empty.
    fn work(&self, wait: Duration) -> bool {
        let mut q = lock(&self.queue);
        if q.items.is_empty() && !q.closed {
            q = self
                .more
                .wait_timeout(q, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if q.items.is_empty() {
            return !q.closed;
        }
        let n = q.items.len().min(BATCH);
        let batch: Vec<Raw> = q.items.drain(..n).collect();
        q.bytes -= batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
        drop(q);
        self.room.notify_all();
        let prepared: Vec<Prepared> = batch.iter().map(Raw::prepare).collect();
        self.append(&prepared);
        lock(&self.queue).done += n as u64;
        self.drained.notify_all();
        true
    }

    /// Waits until every block handed over before this call has been appended.
    fn drain(&self) {
        let mut q = lock(&self.queue);
        let target = q.sent;
        while q.done < target && q.running {
            q = self.drained.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Appends entries with one positioned write. A failure stops keeping (logged); it never
    /// fails the write whose contents they are.
    pub fn append(&self, items: &[Prepared]) {
        if items.is_empty() || !self.keeping() {
            return;
        }
        let mut a = lock(&self.app);
        let now = clock::now();
        let aged = match self.keep {
            Keep::Age(d) => a
                .first_time
                .is_some_and(|t| now - t >= (d / 4).as_micros() as Micros),
            Keep::Bytes(_) => false,
        };
        if a.offset >= self.segment_bytes || aged {
            if let Err(e) = self.rollover(&mut a) {
                drop(a);
                self.stop(e.to_string());
                return;
            }
        }
        let mut buf = std::mem::take(&mut a.buf);
        buf.clear();
        for p in items {
            p.encode(&mut buf, &self.ledger_id, now, a.synced);
        }
        if let Err(e) = a.file.write_all_at(&buf, a.offset) {
            let _ = a.file.set_len(a.offset);
            let msg = format!(
                "{}: appending {} bytes at offset {}: {e}",
                a.path.display(),
                buf.len(),
                a.offset
            );
            a.buf = buf;
            drop(a);
            self.stop(msg);
            return;
        }
        a.offset += buf.len() as u64;
        a.first_time.get_or_insert(now);
        a.buf = buf;
        drop(a);
        let raw: u64 = items.iter().map(|p| p.raw_len as u64).sum();
        self.appended
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        self.raw_bytes.fetch_add(raw, Ordering::Relaxed);
    }

    fn rollover(&self, a: &mut Appender) -> Result<()> {
        a.file
            .sync_data()
            .ctx(&a.path, "fdatasync before starting a new data-log segment")?;
        let (file, path) =
            create_segment(&self.dir, &self.ledger_id, self.block_size, a.number + 1)?;
        lock(&self.sealed).insert(
            a.number,
            Sealed {
                bytes: a.offset,
                last_time: clock::now(),
            },
        );
        a.file = Arc::new(file);
        a.path = path;
        a.number += 1;
        a.offset = HEADER_LEN as u64;
        a.synced = a.offset;
        a.first_time = None;
        Ok(())
    }

    /// Makes every entry appended so far durable (one fdatasync; the journal's sync leader
    /// calls it in the same round as its own). A failure stops keeping.
    pub fn sync(&self) {
        self.drain();
        if !self.keeping() {
            return;
        }
        let (file, path, number, offset) = {
            let a = lock(&self.app);
            if a.synced >= a.offset {
                return;
            }
            (a.file.clone(), a.path.clone(), a.number, a.offset)
        };
        match file.sync_data() {
            Ok(()) => {
                let mut a = lock(&self.app);
                if a.number == number {
                    a.synced = a.synced.max(offset);
                }
            }
            Err(e) => self.stop(format!("{}: fdatasync failed: {e}", path.display())),
        }
    }

    /// At a clean close: syncs, then appends a mark saying every byte before it is durable
    /// (so a reader calls later damage damage, not a crash's tail), synced too.
    pub fn close(&self) {
        self.sync();
        lock(&self.queue).closed = true;
        self.more.notify_all();
        self.room.notify_all();
        if let Some(t) = lock(&self.worker).take() {
            let _ = t.join();
        }
        lock(&self.queue).running = false;
        self.drained.notify_all();
        self.append(&[Prepared::mark()]);
        self.sync();
    }

    /// Deletes sealed segments the window no longer keeps (with an age window, first sealing a
    /// current segment that is a quarter of it old). Returns what it deleted, if anything.
    pub fn prune(&self, now: Micros) -> Result<Option<Pruned>> {
        if let Keep::Age(d) = self.keep {
            let mut a = lock(&self.app);
            if a.first_time
                .is_some_and(|t| now - t >= (d / 4).as_micros() as Micros)
            {
                self.rollover(&mut a)?;
            }
        }
        let current = lock(&self.app).offset;
        let mut sealed = lock(&self.sealed);
        let mut doomed = Vec::new();
        match self.keep {
            Keep::Age(d) => {
                let horizon = now - d.as_micros().min(i64::MAX as u128) as Micros;
                doomed.extend(
                    sealed
                        .iter()
                        .filter(|(_, s)| s.last_time < horizon)
                        .map(|(&n, _)| n),
                );
            }
            Keep::Bytes(limit) => {
                let mut total: u64 = current + sealed.values().map(|s| s.bytes).sum::<u64>();
                for (&n, s) in sealed.iter() {
                    if total <= limit {
                        break;
                    }
                    doomed.push(n);
                    total -= s.bytes;
                }
            }
        }
        let mut freed = 0;
        for &n in &doomed {
            let p = format::segment_path(&self.dir, n);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, "deleting a data-log segment", e)),
            }
            freed += sealed.remove(&n).map_or(0, |s| s.bytes);
        }
        Ok(match (doomed.first(), doomed.last()) {
            (Some(&a), Some(&b)) => Some(Pruned {
                segments: (a, b),
                freed,
            }),
            _ => None,
        })
    }

    /// Its size, window and state.
    pub fn stats(&self) -> KeptStats {
        let current = lock(&self.app).offset;
        let sealed = lock(&self.sealed);
        KeptStats {
            dir: self.dir.clone(),
            keep: self.keep,
            segments: sealed.len() as u64 + 1,
            bytes: current + sealed.values().map(|s| s.bytes).sum::<u64>(),
            appended: self.appended.load(Ordering::Relaxed),
            raw_bytes: self.raw_bytes.load(Ordering::Relaxed),
            oldest: sealed.values().next().map(|s| s.last_time),
            stopped: lock(&self.stopped).clone(),
        }
    }
}

impl Raw {
    fn prepare(&self) -> Prepared {
        Prepared::new(self.block, self.generation, self.crc, self.lsn, &self.data)
    }
}

/// The appender thread: a batch at a time while the log lives and is not closed.
fn appender(log: Weak<KeptLog>) {
    loop {
        let Some(k) = log.upgrade() else { return };
        if !k.work(Duration::from_millis(500)) {
            return;
        }
    }
}
