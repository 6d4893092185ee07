//! The data log: what `serve --keep-data` keeps of written blocks, so a lost write can be given
//! back (docs/FORMAT.md, "Data log"). It lives in `data/` in the ledger directory, or wherever
//! `data` (then a symbolic link, made by [`place`] for `--keep-data-dir`) points: segments
//! `NNNNNNNNNNNN.dat` of entries, each one block's contents (LZ4-compressed) with its block,
//! generation, CRC-32 and LSN, under a BLAKE3 hash seeded with the ledger id.
//!
//! The journal never points at the data log, and no record depends on it: a write is recorded
//! before its entry is appended, so a crash can leave a record without an entry, never the other
//! way round that matters, because a reader takes an entry only for a (block, generation,
//! CRC-32) the ledger's own records name, and only when its hash and its contents' CRC-32 check
//! ([`KeptData::find`]). format.rs holds the bytes, log.rs the appender ([`KeptLog`]); this file
//! the reader and the check.

pub mod format;
pub mod log;

use super::meta::Meta;
use super::META_FILE;
use crate::clock::Micros;
use crate::error::{Error, IoContext, Result};
use format::{EntryHead, Parsed, ENTRY_HEADER};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use log::{KeptLog, KeptStats, Pruned};

/// The data log's name in the ledger directory (a directory, or a link to one).
pub const DATA_DIR: &str = "data";

/// How much of the written data to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Blocks written within this long.
    Age(Duration),
    /// The newest blocks, within about this many bytes of data log.
    Bytes(u64),
}

/// Where a ledger's data log is: `DIR/data`, following a link.
pub fn data_dir(ledger_dir: &Path) -> PathBuf {
    ledger_dir.join(DATA_DIR)
}

/// Makes the ledger's `data` name the data log's home before a writer opens it: with
/// `elsewhere`, a symbolic link to that directory (created if missing), so every reader finds
/// it from the ledger alone; without, `data` in the ledger (or where an existing link points).
pub fn place(ledger_dir: &Path, elsewhere: Option<&Path>) -> Result<PathBuf> {
    let link = data_dir(ledger_dir);
    let Some(other) = elsewhere else {
        return Ok(link);
    };
    std::fs::create_dir_all(other).ctx(other, "creating the --keep-data-dir directory")?;
    let target = std::fs::canonicalize(other).ctx(other, "resolving --keep-data-dir")?;
    match std::fs::symlink_metadata(&link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink(&target, &link)
                .ctx(&link, "linking the ledger to its data directory")?;
            super::writer::sync_dir(ledger_dir)?;
            Ok(link)
        }
        Err(e) => Err(Error::io(&link, "reading", e)),
        Ok(m) => {
            let now = m
                .file_type()
                .is_symlink()
                .then(|| std::fs::canonicalize(&link).ok())
                .flatten();
            if now.as_deref() == Some(target.as_path()) {
                Ok(link)
            } else {
                Err(Error::Usage(format!(
                    "--keep-data-dir {}: the ledger's data log is {} already; move its files to the new directory and replace {} with a link to it, or drop --keep-data-dir",
                    other.display(),
                    now.map_or_else(|| link.display().to_string(), |p| p.display().to_string()),
                    link.display()
                )))
            }
        }
    }
}

/// Where a valid entry is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    offset: u64,
    head: EntryHead,
}

/// One segment as read.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    /// Its number.
    pub number: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: u64,
    /// Valid block entries in it.
    pub entries: u64,
    /// Time of its first and last valid entry.
    pub times: Option<(Micros, Micros)>,
}

/// Bytes of the data log that are not valid entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Where the bad bytes start.
    pub offset: u64,
    /// How many.
    pub len: u64,
    /// Why they are not an entry.
    pub what: String,
    /// True for a crash's torn tail (never synced; the next writer cuts it), false for damage.
    pub torn: bool,
}

/// A ledger's data log, read and indexed: the read side of `--keep-data`, for `repair` and
/// `ledger export-block`. Every entry was checked (hash and contents) when indexed, and is
/// checked again when [`KeptData::find`] reads it.
pub struct KeptData {
    dir: PathBuf,
    ledger_id: [u8; 16],
    block_size: u32,
    index: HashMap<u64, Vec<Loc>>,
    segments: Vec<SegmentInfo>,
    damage: Vec<Damage>,
}

impl KeptData {
    /// Opens the data log of the ledger in `ledger_dir`: `Ok(None)` when the ledger keeps no
    /// data (no `data` there), an error when its `data` link leads nowhere or a file cannot be
    /// read. Damaged bytes do not fail the open: they are listed by [`KeptData::damage`] and
    /// never returned.
    pub fn open(ledger_dir: &Path) -> Result<Option<KeptData>> {
        let dir = data_dir(ledger_dir);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(None);
        }
        if !dir.is_dir() {
            return Err(Error::Ledger {
                path: dir.clone(),
                detail: format!(
                    "the ledger's data log is not reachable ({} is not a directory, or a link to one that is gone): mount or restore it",
                    std::fs::read_link(&dir).unwrap_or_else(|_| dir.clone()).display()
                ),
            });
        }
        let meta = Meta::read(&ledger_dir.join(META_FILE))?;
        let mut k = KeptData {
            dir: dir.clone(),
            ledger_id: meta.ledger_id,
            block_size: meta.block_size,
            index: HashMap::new(),
            segments: Vec::new(),
            damage: Vec::new(),
        };
        let numbers = log::segment_numbers(&dir)?;
        for (i, &n) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            k.read_segment(n, last)?;
        }
        Ok(Some(k))
    }

    fn read_segment(&mut self, n: u64, last: bool) -> Result<()> {
        let path = format::segment_path(&self.dir, n);
        let s = format::scan_segment(&path, &self.ledger_id, self.block_size)?;
        if let Some(e) = s.header_error {
            let blank = s.len < format::HEADER_LEN as u64;
            let (offset, what) = match e {
                Error::Damaged { offset, detail, .. } => (offset, detail),
                other => (0, other.to_string()),
            };
            self.damage.push(Damage {
                path: path.clone(),
                offset,
                len: s.len,
                what,
                torn: last && blank,
            });
        }
        for r in &s.bad {
            self.damage.push(Damage {
                path: path.clone(),
                offset: r.offset,
                len: r.len,
                what: r.why.clone(),
                torn: last && !r.synced_past,
            });
        }
        for &(offset, head) in &s.entries {
            self.index.entry(head.block).or_default().push(Loc {
                segment: n,
                offset,
                head,
            });
        }
        self.segments.push(SegmentInfo {
            number: n,
            path,
            bytes: s.len,
            entries: s.entries.len() as u64,
            times: s.first_time.zip(s.last_time),
        });
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// Bytes that are not valid entries: damage, and a crash's torn tail.
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// Bytes of every segment.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Valid entries.
    pub fn entries(&self) -> u64 {
        self.segments.iter().map(|s| s.entries).sum()
    }

    /// The window of time the entries span: the first and the last entry's time.
    pub fn window(&self) -> Option<(Micros, Micros)> {
        let mut t = self.segments.iter().filter_map(|s| s.times);
        let first = t.next()?;
        Some(t.fold(first, |(a, _), (_, z)| (a, z)))
    }

    /// The valid entries of `block`, oldest first: (generation, CRC-32, LSN, time).
    pub fn kept_of(&self, block: u64) -> Vec<(u32, u32, u64, Micros)> {
        self.index
            .get(&block)
            .map(|v| {
                v.iter()
                    .map(|l| (l.head.generation, l.head.crc, l.head.lsn, l.head.time))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The kept contents of `block` at `generation` whose CRC-32 is `crc`, read and verified
    /// now: the entry's BLAKE3 hash, then its decompressed contents against `crc` (padded to the
    /// block size as the ledger checksums a partial last block). `Ok(None)` when no valid entry
    /// holds them. Pass the generation and CRC-32 of a record the ledger holds (its state table
    /// or its history): that is what makes an entry trustworthy, since a crash may leave an
    /// entry whose record was lost. An error only for a file that cannot be read.
    pub fn find(&self, block: u64, generation: u32, crc: u32) -> Result<Option<Vec<u8>>> {
        let Some(locs) = self.index.get(&block) else {
            return Ok(None);
        };
        for l in locs
            .iter()
            .rev()
            .filter(|l| l.head.generation == generation && l.head.crc == crc)
        {
            let path = format::segment_path(&self.dir, l.segment);
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                // Deleted by retention since it was indexed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, "opening data-log segment", e)),
            };
            let mut buf = vec![0u8; l.head.size() as usize];
            if let Err(e) = f.read_exact_at(&mut buf, l.offset) {
                tracing::warn!(
                    "{}: the entry at offset {} cannot be read now ({e}): not used",
                    path.display(),
                    l.offset
                );
                continue;
            }
            let head = match format::parse(&buf, &self.ledger_id, self.block_size) {
                Parsed::Entry(h) if h == l.head => h,
                Parsed::Entry(_) => continue,
                Parsed::Bad(why) => {
                    tracing::warn!(
                        "{}: the entry at offset {} changed since it was indexed ({why}): not used",
                        path.display(),
                        l.offset
                    );
                    continue;
                }
            };
            if let Ok(data) = format::unpack(&head, &buf[ENTRY_HEADER..], self.block_size) {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// The data log at a glance, without reading its entries (for `status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glance {
    /// The data directory, links followed.
    pub dir: PathBuf,
    /// Segment files.
    pub segments: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the oldest segment was begun (its header), and when the newest was last written
    /// (its modification time): the window the kept data spans, at most.
    pub window: Option<(Micros, Micros)>,
}

/// Looks at the ledger's data log: `Ok(None)` when it keeps none.
pub fn glance(ledger_dir: &Path) -> Result<Option<Glance>> {
    let link = data_dir(ledger_dir);
    if std::fs::symlink_metadata(&link).is_err() {
        return Ok(None);
    }
    let dir = std::fs::canonicalize(&link).ctx(&link, "resolving the data directory")?;
    let numbers = log::segment_numbers(&dir)?;
    let mut bytes = 0;
    for &n in &numbers {
        let p = format::segment_path(&dir, n);
        bytes += std::fs::metadata(&p).ctx(&p, "reading")?.len();
    }
    let oldest = numbers.first().and_then(|&n| {
        let mut h = [0u8; format::HEADER_LEN];
        let f = std::fs::File::open(format::segment_path(&dir, n)).ok()?;
        f.read_exact_at(&mut h, 0).ok()?;
        Some(i64::from_le_bytes(h[44..52].try_into().ok()?))
    });
    let newest = numbers
        .last()
        .map(|&n| log::mtime(&format::segment_path(&dir, n)));
    Ok(Some(Glance {
        dir,
        segments: numbers.len() as u64,
        bytes,
        window: oldest.zip(newest),
    }))
}
