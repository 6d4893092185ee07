//! Reading the journal: every segment in order, every frame checked (magic, checksum, LSN
//! continuity, segment chain), records handed to a visitor. It also decides what a bad frame
//! means: in the never-synced tail of the last segment it is a torn write from a crash (the tail
//! is reported, and the writer truncates it); anywhere else it is damage, reported with file and
//! offset.

use super::frame::{self, Frame, FrameError};
use super::record::{Lsn, Record};
use super::segment::{self, SegmentHeader};
use crate::clock::Micros;
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// Journal format version written by this build.
pub const JOURNAL_VERSION: u32 = 1;

/// One segment as found on disk.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Segment number.
    pub number: u64,
    /// Its file.
    pub path: PathBuf,
    /// LSN of its first record.
    pub first_lsn: Lsn,
    /// Bytes of header and valid frames.
    pub valid_len: u64,
    /// Bytes in the file.
    pub file_len: u64,
    /// CRC-32 of the valid bytes (what the next segment's header must name).
    pub content_crc: u32,
    /// Time of its last valid frame (0 if it has none).
    pub last_time: Micros,
    /// Not read: a skimming reader took what it needed from the segment's summary (summary.rs).
    pub from_summary: bool,
}

/// A torn tail: bytes at the end of the last segment that do not form whole, valid frames and
/// were never synced.
#[derive(Debug, Clone)]
pub struct TornTail {
    /// Segment number.
    pub segment: u64,
    /// Its file.
    pub path: PathBuf,
    /// Offset of the first invalid byte; the valid journal ends here.
    pub offset: u64,
    /// Length of the file.
    pub file_len: u64,
    /// What was found there.
    pub reason: String,
}

/// What a full read of the journal found.
#[derive(Debug, Clone)]
pub struct JournalEnd {
    /// Segments in order.
    pub segments: Vec<SegmentInfo>,
    /// The LSN the next record will get.
    pub next_lsn: Lsn,
    /// Time of the last valid frame (0 if none).
    pub last_time: Micros,
    /// The torn tail, if any.
    pub torn: Option<TornTail>,
}

/// A record as the visitor sees it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its commit-group time.
    pub time: Micros,
    /// The record.
    pub record: &'a Record,
}

/// Where the journal begins: segment 1 at LSN 1, or, after retention folded the oldest segments
/// into the compacted history, the first segment it kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Number of the first segment.
    pub segment: u64,
    /// LSN of its first record.
    pub lsn: Lsn,
    /// What its header must name as its predecessor: content CRC-32 and byte length (both 0
    /// for segment 1).
    pub prev: (u32, u64),
}

impl Start {
    /// A journal that starts at its beginning.
    pub const ORIGIN: Start = Start {
        segment: 1,
        lsn: 1,
        prev: (0, 0),
    };
}

/// Lists segment numbers present in `journal_dir`, sorted.
pub fn list_segments(journal_dir: &Path) -> Result<Vec<u64>> {
    let rd = std::fs::read_dir(journal_dir).ctx(journal_dir, "listing journal segments")?;
    let mut nums = Vec::new();
    for e in rd {
        let e = e.ctx(journal_dir, "listing journal segments")?;
        if let Some(n) = e.file_name().to_str().and_then(segment::parse_name) {
            nums.push(n);
        }
    }
    nums.sort_unstable();
    Ok(nums)
}

/// Reads the whole journal, checking everything, and calls `visit` for each record with
/// LSN >= `decode_from` (frames wholly below it are checked but not decoded).
/// `protected` is the journal position (segment, offset) known synced by a checkpoint: invalid
/// bytes before it are damage even in the last segment.
/// Segments numbered below `start.segment` (folded, left behind by an interrupted compaction)
/// are skipped; reading stops after segment `last_segment`.
pub fn scan(
    journal_dir: &Path,
    ledger_id: &[u8; 16],
    start: Start,
    last_segment: u64,
    decode_from: Lsn,
    protected: (u64, u64),
    visit: &mut dyn FnMut(Entry<'_>) -> Result<()>,
) -> Result<JournalEnd> {
    scan_frames(
        journal_dir,
        ledger_id,
        start,
        last_segment,
        protected,
        None,
        &mut |path, pos, f| decode(path, pos, f, decode_from, visit),
    )
}

/// Decodes the records of frame `f` (at `pos` in `path`) with LSN >= `decode_from` and hands
/// them to `visit`.
pub fn decode(
    path: &Path,
    pos: u64,
    f: &Frame<'_>,
    decode_from: Lsn,
    visit: &mut dyn FnMut(Entry<'_>) -> Result<()>,
) -> Result<()> {
    if f.last_lsn() < decode_from {
        return Ok(());
    }
    let records = f
        .records()
        .map_err(|e| Error::damaged(path, pos, format!("undecodable frame: {e}")))?;
    for (k, r) in records.iter().enumerate() {
        let lsn = f.first_lsn + k as u64;
        if lsn >= decode_from {
            visit(Entry {
                lsn,
                time: f.time,
                record: r,
            })?;
        }
    }
    Ok(())
}

/// Where a reader may begin reading the last segment past its start: the frame boundary the
/// state table's checkpoint names (its `checkpoint_pos`) and the LSN of the frame there (one
/// past its `checkpoint_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The segment.
    pub segment: u64,
    /// The offset of a frame boundary in it.
    pub offset: u64,
    /// The LSN of the frame there.
    pub lsn: Lsn,
}

/// [`scan`] frame by frame: `visit` gets each valid frame with its file and offset, records
/// undecoded. With `resume`, when the last segment is the one it names and reaches its offset,
/// that segment's frames before the offset are not read (its header is): they are neither
/// checked nor visited, and its `content_crc` in the answer is 0. Only a reader that reads
/// that segment whole afterwards (`history`, through [`crate::ledger::summary::scan`]) may ask
/// for this, and never the writer, which chains the next segment to that CRC.
pub fn scan_frames(
    journal_dir: &Path,
    ledger_id: &[u8; 16],
    start: Start,
    last_segment: u64,
    protected: (u64, u64),
    resume: Option<Resume>,
    visit: &mut dyn FnMut(&Path, u64, &Frame<'_>) -> Result<()>,
) -> Result<JournalEnd> {
    let mut numbers = list_segments(journal_dir)?;
    numbers.retain(|&n| n >= start.segment);
    if numbers.is_empty() {
        return Err(Error::damaged(
            journal_dir,
            0,
            "the journal has no segments; the ledger is incomplete (restore it or create a new one with `lostwrite init`)",
        ));
    }
    let check = frame::Checker::new(ledger_id);
    let mut segments: Vec<SegmentInfo> = Vec::with_capacity(numbers.len());
    let mut next_lsn: Lsn = start.lsn;
    let mut last_time = 0;
    let mut torn = None;
    for (i, &number) in numbers.iter().enumerate() {
        if number > last_segment {
            break;
        }
        let path = segment::path(journal_dir, number);
        let is_last = i + 1 == numbers.len();
        let expected_number = segments.last().map_or(start.segment, |s| s.number + 1);
        if number != expected_number {
            // Named by the file that is missing, the one to restore.
            return Err(Error::damaged(
                segment::path(journal_dir, expected_number),
                0,
                if segments.is_empty() {
                    format!(
                        "journal segment {expected_number} is missing: the journal starts at segment {number}; restore the ledger directory from a copy"
                    )
                } else {
                    format!(
                        "journal segment {expected_number} is missing: segment {number} follows segment {}; restore the ledger directory from a copy",
                        expected_number - 1
                    )
                },
            ));
        }
        let mut win = Window::open(&path)?;
        let file_len = win.len;
        let header = match SegmentHeader::decode(win.at(0, segment::HEADER_LEN)?) {
            Ok(h) => h,
            Err(why)
                if is_last
                    && (file_len < segment::HEADER_LEN as u64 || win.all_zero_from(0)?)
                    && (number, 0) >= protected =>
            {
                // A segment created just before a crash whose header never reached the disk.
                torn = Some(TornTail {
                    segment: number,
                    path: path.clone(),
                    offset: 0,
                    file_len,
                    reason: why,
                });
                break;
            }
            Err(why) => return Err(Error::damaged(&path, 0, why)),
        };
        let prev = segments
            .last()
            .map_or(start.prev, |p| (p.content_crc, p.valid_len));
        check_header(&header, &path, ledger_id, number, next_lsn, prev)?;
        let mut pos = segment::HEADER_LEN as u64;
        match resume {
            Some(r)
                if is_last
                    && r.segment == number
                    && (pos..=file_len).contains(&r.offset)
                    && r.lsn >= next_lsn =>
            {
                pos = r.offset;
                next_lsn = r.lsn;
                win.skip_to(pos)?;
            }
            _ => win.hash_from(0),
        }
        let mut frames_time = None;
        while pos < file_len {
            let bytes = win.frame_at(pos)?;
            let f = match frame::parse_with(bytes, &check) {
                Ok(f) => f,
                Err(e) => {
                    let offset = pos;
                    if !is_last || (number, offset) < protected {
                        return Err(Error::damaged(
                            &path,
                            offset,
                            format!("{e} in synced journal history (the ledger file was damaged; `lostwrite ledger check` lists every problem)"),
                        ));
                    }
                    let rest = win.rest(pos)?;
                    if let Some(later) = synced_frame_after(&rest, 0, ledger_id, next_lsn) {
                        return Err(Error::damaged(
                            &path,
                            offset,
                            format!(
                                "{e}, but a later frame at offset {} says the journal had been synced past this point: damaged history, not a torn tail",
                                offset + later as u64
                            ),
                        ));
                    }
                    torn = Some(TornTail {
                        segment: number,
                        path: path.clone(),
                        offset,
                        file_len,
                        reason: describe_tail(&e, &rest),
                    });
                    break;
                }
            };
            if f.first_lsn != next_lsn {
                return Err(Error::damaged(
                    &path,
                    pos,
                    format!(
                        "frame starts at LSN {} where LSN {next_lsn} was expected ({} records)",
                        f.first_lsn,
                        if f.first_lsn < next_lsn {
                            "duplicated or reordered"
                        } else {
                            "missing"
                        }
                    ),
                ));
            }
            visit(&path, pos, &f)?;
            next_lsn = f.last_lsn() + 1;
            frames_time = Some(f.time);
            pos += f.len as u64;
        }
        let valid_len = pos.min(file_len);
        if let Some(t) = frames_time {
            last_time = t;
        }
        segments.push(SegmentInfo {
            number,
            path,
            first_lsn: header.first_lsn,
            valid_len,
            file_len,
            content_crc: win.content_crc(valid_len)?,
            last_time: frames_time.unwrap_or(0),
            from_summary: false,
        });
        if torn.is_some() {
            break;
        }
    }
    Ok(JournalEnd {
        segments,
        next_lsn,
        last_time,
        torn,
    })
}

/// Reads only the last segment, from `resume` on, if `resume` names the last segment: its
/// header is taken as it stands (the segments before it are not looked at, so neither its
/// first LSN nor its chain is checked against them) and its frames before the offset are not
/// read. `None` when `resume` names another segment or the header cannot be read (the caller
/// reads the journal as usual). For a reader that reads the whole journal afterwards, which
/// checks all of that ([`Ledger::scan_history_skimming`](crate::ledger::Ledger::scan_history_skimming)).
pub fn scan_tail(
    journal_dir: &Path,
    ledger_id: &[u8; 16],
    resume: Resume,
    protected: (u64, u64),
    visit: &mut dyn FnMut(&Path, u64, &Frame<'_>) -> Result<()>,
) -> Result<Option<JournalEnd>> {
    if list_segments(journal_dir)?.last() != Some(&resume.segment) {
        return Ok(None);
    }
    let path = segment::path(journal_dir, resume.segment);
    let Ok(mut win) = Window::open(&path) else {
        return Ok(None);
    };
    let Ok(h) = SegmentHeader::decode(win.at(0, segment::HEADER_LEN)?) else {
        return Ok(None);
    };
    let start = Start {
        segment: resume.segment,
        lsn: h.first_lsn,
        prev: (h.prev_crc, h.prev_len),
    };
    scan_frames(
        journal_dir,
        ledger_id,
        start,
        u64::MAX,
        protected,
        Some(resume),
        visit,
    )
    .map(Some)
}

/// Bytes a segment is read in: opening holds this much of a segment (or one frame, when a frame
/// is larger), not the whole 64 MiB file.
const CHUNK: usize = 1 << 20;

/// A segment read through a bounded buffer: `buf` holds the file's bytes from offset `base` on.
struct Window {
    file: std::fs::File,
    path: PathBuf,
    /// The file's length when it was opened (a live view reads while the service appends).
    len: u64,
    base: u64,
    buf: Vec<u8>,
    /// The CRC-32 of the file's bytes before `hashed`, when the segment's content CRC is
    /// wanted: taken a chunk at a time as the window moves on, not a frame at a time.
    hasher: Option<crc32fast::Hasher>,
    hashed: u64,
}

impl Window {
    fn open(path: &Path) -> Result<Window> {
        let file = std::fs::File::open(path).ctx(path, "reading journal segment")?;
        let len = file.metadata().ctx(path, "reading journal segment")?.len();
        Ok(Window {
            file,
            path: path.to_path_buf(),
            len,
            base: 0,
            buf: Vec::with_capacity(CHUNK),
            hasher: None,
            hashed: 0,
        })
    }

    /// Hashes the bytes from `pos` (not yet dropped) on as the window moves past them; the
    /// window only moves past bytes of the header and of valid frames.
    fn hash_from(&mut self, pos: u64) {
        debug_assert!(pos >= self.base);
        self.hasher = Some(crc32fast::Hasher::new());
        self.hashed = pos;
    }

    /// Moves the window to `pos` without reading the bytes before it (nothing is hashed).
    fn skip_to(&mut self, pos: u64) -> Result<()> {
        self.hasher = None;
        self.buf.clear();
        self.base = pos;
        self.at(pos, 0).map(|_| ())
    }

    /// The CRC-32 of the bytes from where hashing began to `end` (0 when nothing was hashed).
    fn content_crc(&mut self, end: u64) -> Result<u32> {
        if self.hasher.is_none() {
            return Ok(0);
        }
        if end > self.hashed {
            let from = self.hashed;
            self.at(from, (end - from) as usize)?;
            let (a, b) = ((from - self.base) as usize, (end - self.base) as usize);
            if let Some(h) = self.hasher.as_mut() {
                h.update(&self.buf[a..b]);
            }
            self.hashed = end;
        }
        Ok(self.hasher.take().map_or(0, |h| h.finalize()))
    }

    /// The bytes from file offset `pos` (not before the window's start) to the buffer's end:
    /// at least `want` of them, or all the file has.
    fn at(&mut self, pos: u64, want: usize) -> Result<&[u8]> {
        use std::os::unix::fs::FileExt;
        debug_assert!(pos >= self.base);
        let end = self.base + self.buf.len() as u64;
        let need = (pos + want as u64).min(self.len);
        if need > end || pos > end {
            // Keep only what is not consumed yet, then read a chunk (or the frame) behind it.
            let keep_from = (pos - self.base).min(self.buf.len() as u64) as usize;
            if let Some(h) = self.hasher.as_mut() {
                let upto = self.base + keep_from as u64;
                if upto > self.hashed {
                    h.update(&self.buf[(self.hashed - self.base) as usize..keep_from]);
                    self.hashed = upto;
                }
            }
            self.buf.drain(..keep_from);
            self.base += keep_from as u64;
            let target = ((need - self.base) as usize).max(CHUNK);
            let target = target.min((self.len - self.base) as usize);
            let mut have = self.buf.len();
            self.buf.resize(target, 0);
            while have < target {
                let n = self
                    .file
                    .read_at(&mut self.buf[have..], self.base + have as u64)
                    .ctx(&self.path, "reading journal segment")?;
                if n == 0 {
                    break;
                }
                have += n;
            }
            self.buf.truncate(have);
        }
        let from = ((pos - self.base) as usize).min(self.buf.len());
        Ok(&self.buf[from..])
    }

    /// The bytes of the frame at `pos` as far as its header says it reaches (fewer at the
    /// file's end: the parser then calls it cut short).
    fn frame_at(&mut self, pos: u64) -> Result<&[u8]> {
        let head = self.at(pos, frame::HEADER_LEN)?;
        let want = if head.len() >= frame::HEADER_LEN {
            let body = u32::from_le_bytes(head[8..12].try_into().expect("4")) as usize;
            frame::HEADER_LEN + body.min(frame::MAX_BODY)
        } else {
            head.len()
        };
        self.at(pos, want)
    }

    /// Everything from `pos` to the end of the file (to judge a bad tail: only then is more
    /// than a chunk held).
    fn rest(&mut self, pos: u64) -> Result<Vec<u8>> {
        let want = (self.len.saturating_sub(pos)) as usize;
        Ok(self.at(pos, want)?.to_vec())
    }

    /// Whether every byte from `pos` on is zero, read a chunk at a time.
    fn all_zero_from(&mut self, mut pos: u64) -> Result<bool> {
        while pos < self.len {
            let b = self.at(pos, CHUNK)?;
            if b.iter().any(|&x| x != 0) {
                return Ok(false);
            }
            pos += b.len() as u64;
        }
        Ok(true)
    }
}

fn check_header(
    h: &SegmentHeader,
    path: &Path,
    ledger_id: &[u8; 16],
    number: u64,
    next_lsn: Lsn,
    (crc, len): (u32, u64),
) -> Result<()> {
    if h.version != JOURNAL_VERSION {
        return Err(Error::damaged(
            path,
            8,
            format!(
                "journal format version {} (this build reads version {JOURNAL_VERSION})",
                h.version
            ),
        ));
    }
    if &h.ledger_id != ledger_id {
        return Err(Error::damaged(
            path,
            16,
            "segment belongs to a different ledger (copied in from elsewhere?)",
        ));
    }
    if h.number != number {
        return Err(Error::damaged(
            path,
            32,
            format!(
                "segment header says number {} but the file is segment {number}",
                h.number
            ),
        ));
    }
    if h.first_lsn != next_lsn {
        return Err(Error::damaged(
            path,
            40,
            format!(
                "segment starts at LSN {} but the previous one ended before LSN {next_lsn}",
                h.first_lsn
            ),
        ));
    }
    if (h.prev_crc, h.prev_len) != (crc, len) {
        return Err(Error::damaged(
            path,
            48,
            format!(
                "the chain is broken: this segment names a predecessor of {} bytes with checksum {:08x}, but segment {} had {len} bytes with checksum {crc:08x} (a segment was replaced or reverted, or the compacted history belongs to another journal)",
                h.prev_len,
                h.prev_crc,
                number - 1
            ),
        ));
    }
    Ok(())
}

/// Looks for a valid frame after a bad one whose `synced_lsn` shows the journal had been made
/// durable beyond the bad spot. Returns its offset.
fn synced_frame_after(buf: &[u8], bad: usize, id: &[u8; 16], bad_lsn: Lsn) -> Option<usize> {
    let magic = frame::MAGIC.to_le_bytes();
    let mut q = bad + 1;
    while q + frame::HEADER_LEN <= buf.len() {
        if buf[q..q + 4] == magic {
            if let Ok(f) = frame::parse(&buf[q..], id) {
                if f.synced_lsn >= bad_lsn {
                    return Some(q);
                }
            }
        }
        q += 1;
    }
    None
}

fn describe_tail(e: &FrameError, rest: &[u8]) -> String {
    if rest.iter().all(|&b| b == 0) {
        format!("{} zero bytes", rest.len())
    } else {
        format!("{e} ({} bytes)", rest.len())
    }
}
