//! Segment summaries: derived files that let a reader skip sealed journal segments. The summary
//! of a sealed segment (`journal/NNNNNNNNNNNN.sum`) holds a bloom filter of the blocks its change
//! records touch and, in order, every record that is not a change (session open and close,
//! baseline, flush, durable), with the last change record before each of them. That is all
//! `history` needs to judge sessions and durability without the write records. A summary is
//! matched to its segment by the segment's own header and the next segment's chain (content
//! CRC-32 and length); a missing, torn, flipped or unmatched summary is ignored and the segment is
//! read in full, so a summary never changes an answer. Layout: docs/FORMAT.md ("Segment
//! summaries").

use super::codec;
use super::reader::{self, Entry, JournalEnd, SegmentInfo, Start};
use super::record::{Lsn, Record};
use super::segment::{self, SegmentHeader};
use crate::clock::Micros;
use crate::error::{IoContext, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// "LWSUMMRY".
pub const MAGIC: [u8; 8] = *b"LWSUMMRY";
/// Summary format version.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 96;
/// File-name suffix.
pub const SUFFIX: &str = ".sum";
/// Bloom filter probes per block.
const PROBES: u32 = 7;
/// Bloom filter bits per distinct block (about 1% false positives with 7 probes).
const BITS_PER_BLOCK: u64 = 10;

/// Path of the summary of segment `number`.
pub fn path(journal_dir: &Path, number: u64) -> PathBuf {
    journal_dir.join(format!("{number:012}{SUFFIX}"))
}

/// The segment number a summary's file name stands for.
pub fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    if stem.len() != 12 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn tmp_path(journal_dir: &Path, number: u64) -> PathBuf {
    journal_dir.join(format!("{number:012}{SUFFIX}.tmp"))
}

/// One mark: a non-change record, or the last change record (LSN, time) before one.
#[derive(Debug, Clone)]
pub enum Mark {
    /// A record that is not a change of a block.
    Record(Lsn, Micros, Record),
    /// The last change record before the next mark (or the segment's end).
    Touch(Lsn, Micros),
}

/// A decoded, checked summary.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Segment number.
    pub number: u64,
    /// LSN of its first record.
    pub first_lsn: Lsn,
    /// LSN after its last record.
    pub next_lsn: Lsn,
    /// Bytes of the segment (header and frames).
    pub len: u64,
    /// CRC-32 of those bytes (what the next segment's header names).
    pub content_crc: u32,
    /// Time of its last frame (0 if none).
    pub last_time: Micros,
    probes: u32,
    bloom: Vec<u64>,
    /// Marks in LSN order.
    pub marks: Vec<Mark>,
}

fn probe(block: u64, i: u32, bits: u64) -> u64 {
    // splitmix64, then double hashing.
    let mut z = block.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let h2 = (z >> 32) | 1;
    z.wrapping_add((i as u64).wrapping_mul(h2)) % bits
}

impl Summary {
    /// Whether the segment may hold a change record of `block` (false: it surely does not).
    pub fn may_hold(&self, block: u64) -> bool {
        let bits = self.bloom.len() as u64 * 64;
        (0..self.probes).all(|i| {
            let b = probe(block, i, bits);
            self.bloom[(b / 64) as usize] & (1 << (b % 64)) != 0
        })
    }

    fn encode(&self, ledger_id: &[u8; 16]) -> Vec<u8> {
        let mut marks = Vec::new();
        for m in &self.marks {
            match m {
                Mark::Record(lsn, time, r) => {
                    marks.push(0u8);
                    marks.extend_from_slice(&lsn.to_le_bytes());
                    marks.extend_from_slice(&time.to_le_bytes());
                    let mut b = Vec::new();
                    codec::encode_into(r, &mut b);
                    marks.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    marks.extend_from_slice(&b);
                }
                Mark::Touch(lsn, time) => {
                    marks.push(1u8);
                    marks.extend_from_slice(&lsn.to_le_bytes());
                    marks.extend_from_slice(&time.to_le_bytes());
                }
            }
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.bloom.len() * 8 + marks.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out.extend_from_slice(ledger_id);
        out.extend_from_slice(&self.number.to_le_bytes());
        out.extend_from_slice(&self.first_lsn.to_le_bytes());
        out.extend_from_slice(&self.next_lsn.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.content_crc.to_le_bytes());
        out.extend_from_slice(&self.probes.to_le_bytes());
        out.extend_from_slice(&(self.bloom.len() as u64 * 8).to_le_bytes());
        out.extend_from_slice(&self.last_time.to_le_bytes());
        out.extend_from_slice(&(marks.len() as u64).to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        for w in &self.bloom {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&marks);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a summary file's bytes; `None` for anything that is not an intact summary of
    /// this ledger (derived data: the caller reads the segment instead).
    fn decode(b: &[u8], ledger_id: &[u8; 16]) -> Option<Summary> {
        if b.len() < HEADER_LEN + 4 || b[0..8] != MAGIC {
            return None;
        }
        let (body, tail) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(tail.try_into().ok()?) {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        if u32_at(8) != VERSION || u32_at(12) as usize != HEADER_LEN || &b[16..32] != ledger_id {
            return None;
        }
        let bloom_len = u64_at(72);
        let marks_len = u64_at(88);
        if bloom_len == 0
            || bloom_len % 8 != 0
            || (HEADER_LEN as u64)
                .checked_add(bloom_len)?
                .checked_add(marks_len)?
                != body.len() as u64
        {
            return None;
        }
        let probes = u32_at(68);
        if probes == 0 || probes > 32 {
            return None;
        }
        let bloom_end = HEADER_LEN + bloom_len as usize;
        let bloom = b[HEADER_LEN..bloom_end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        let mut marks = Vec::new();
        let mut m = &b[bloom_end..body.len()];
        while !m.is_empty() {
            if m.len() < 17 {
                return None;
            }
            let kind = m[0];
            let lsn = u64::from_le_bytes(m[1..9].try_into().expect("8"));
            let time = i64::from_le_bytes(m[9..17].try_into().expect("8"));
            m = &m[17..];
            match kind {
                0 => {
                    if m.len() < 4 {
                        return None;
                    }
                    let n = u32::from_le_bytes(m[0..4].try_into().expect("4")) as usize;
                    let mut rb = m.get(4..4 + n)?;
                    let r: Record = codec::decode_next(&mut rb).ok()?;
                    if !rb.is_empty() || r.block().is_some() {
                        return None;
                    }
                    marks.push(Mark::Record(lsn, time, r));
                    m = &m[4 + n..];
                }
                1 => marks.push(Mark::Touch(lsn, time)),
                _ => return None,
            }
        }
        Some(Summary {
            number: u64_at(32),
            first_lsn: u64_at(40),
            next_lsn: u64_at(48),
            len: u64_at(56),
            content_crc: u32_at(64),
            last_time: i64::from_le_bytes(b[80..88].try_into().expect("8")),
            probes,
            bloom,
            marks,
        })
    }
}

/// Reads segment `number` in full and writes its summary (a temporary file renamed into
/// place). Only for a sealed segment: one that a later segment follows.
pub fn build(journal_dir: &Path, ledger_id: &[u8; 16], number: u64) -> Result<()> {
    let seg = segment::path(journal_dir, number);
    let mut head = [0u8; segment::HEADER_LEN];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&seg).ctx(&seg, "reading a segment to summarise it")?;
        f.read_exact_at(&mut head, 0)
            .ctx(&seg, "reading a segment to summarise it")?;
    }
    let h =
        SegmentHeader::decode(&head).map_err(|why| crate::error::Error::damaged(&seg, 0, why))?;
    let start = Start {
        segment: number,
        lsn: h.first_lsn,
        prev: (h.prev_crc, h.prev_len),
    };
    let mut blocks: HashSet<u64> = HashSet::new();
    let mut marks = Vec::new();
    let mut touch: Option<(Lsn, Micros)> = None;
    let end = reader::scan(journal_dir, ledger_id, start, number, 0, (0, 0), &mut |e| {
        match e.record.block() {
            Some(b) => {
                blocks.insert(b);
                touch = Some((e.lsn, e.time));
            }
            None => {
                if let Some((l, t)) = touch.take() {
                    marks.push(Mark::Touch(l, t));
                }
                marks.push(Mark::Record(e.lsn, e.time, e.record.clone()));
            }
        }
        Ok(())
    })?;
    if let Some((l, t)) = touch {
        marks.push(Mark::Touch(l, t));
    }
    let info = match end.segments.as_slice() {
        [s] if end.torn.is_none() && s.number == number && s.valid_len == s.file_len => s,
        // The last segment, or one with bad bytes: nothing to summarise.
        _ => return Ok(()),
    };
    let words = ((blocks.len() as u64 * BITS_PER_BLOCK).max(512)).div_ceil(64);
    let bits = words * 64;
    let mut bloom = vec![0u64; words as usize];
    for b in blocks {
        for i in 0..PROBES {
            let p = probe(b, i, bits);
            bloom[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
    let s = Summary {
        number,
        first_lsn: info.first_lsn,
        next_lsn: end.next_lsn,
        len: info.valid_len,
        content_crc: info.content_crc,
        last_time: info.last_time,
        probes: PROBES,
        bloom,
        marks,
    };
    let tmp = tmp_path(journal_dir, number);
    std::fs::write(&tmp, s.encode(ledger_id)).ctx(&tmp, "writing a segment summary")?;
    let dst = path(journal_dir, number);
    // Not synced: a summary lost or torn by a crash is ignored and rebuilt.
    std::fs::rename(&tmp, &dst).ctx(&dst, "installing a segment summary")?;
    Ok(())
}

/// Sealed segments from `first` on (all but the last) whose summary is missing or does not
/// match them: what a writer rebuilds when it opens.
pub fn missing(journal_dir: &Path, ledger_id: &[u8; 16], end: &JournalEnd) -> Vec<u64> {
    let segs = &end.segments;
    let mut out = Vec::new();
    for w in segs.windows(2) {
        let s = &w[0];
        let ok = load(journal_dir, ledger_id, s.number).is_some_and(|m| {
            (m.first_lsn, m.next_lsn, m.len, m.content_crc)
                == (s.first_lsn, w[1].first_lsn, s.valid_len, s.content_crc)
        });
        if !ok {
            out.push(s.number);
        }
    }
    out
}

/// Removes summaries whose segment is gone (below the journal's first segment) and unfinished
/// temporary summaries. Only files named as this module names them are touched.
pub fn tidy(journal_dir: &Path, first_segment: u64) -> Result<()> {
    let rd = std::fs::read_dir(journal_dir).ctx(journal_dir, "listing journal segments")?;
    for e in rd {
        let e = e.ctx(journal_dir, "listing journal segments")?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let stale = match name.strip_suffix(".tmp") {
            Some(stem) => parse_name(stem).is_some(),
            None => parse_name(&name).is_some_and(|n| n < first_segment),
        };
        if stale {
            let p = e.path();
            std::fs::remove_file(&p).ctx(&p, "removing a stale segment summary")?;
        }
    }
    Ok(())
}

/// Removes the summary of segment `number`, if there is one.
pub fn remove(journal_dir: &Path, number: u64) -> Result<()> {
    let p = path(journal_dir, number);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).ctx(&p, "removing a segment summary")
        }
        _ => Ok(()),
    }
}

fn load(journal_dir: &Path, ledger_id: &[u8; 16], number: u64) -> Option<Summary> {
    let b = std::fs::read(path(journal_dir, number)).ok()?;
    Summary::decode(&b, ledger_id).filter(|s| s.number == number)
}

fn read_header(journal_dir: &Path, number: u64) -> Option<(SegmentHeader, u64)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(segment::path(journal_dir, number)).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = [0u8; segment::HEADER_LEN];
    f.read_exact_at(&mut head, 0).ok()?;
    Some((SegmentHeader::decode(&head).ok()?, len))
}

/// Segment `number`'s summary, if it matches the segment as its neighbours name it: its own
/// header (first LSN, predecessor), its length on disk, and the next segment's header (chain CRC
/// and length, first LSN). The next segment must exist: the last one is never skipped.
fn matching(
    journal_dir: &Path,
    ledger_id: &[u8; 16],
    number: u64,
    first_lsn: Lsn,
    prev: (u32, u64),
) -> Option<Summary> {
    let s = load(journal_dir, ledger_id, number)?;
    let (h, len) = read_header(journal_dir, number)?;
    let (next, _) = read_header(journal_dir, number + 1)?;
    let ok = &h.ledger_id == ledger_id
        && &next.ledger_id == ledger_id
        && h.number == number
        && next.number == number + 1
        && h.first_lsn == first_lsn
        && s.first_lsn == first_lsn
        && (h.prev_crc, h.prev_len) == prev
        && len == s.len
        && (next.prev_crc, next.prev_len) == (s.content_crc, s.len)
        && next.first_lsn == s.next_lsn
        && s.next_lsn >= s.first_lsn;
    ok.then_some(s)
}

/// What a skimming scan hands over.
pub enum Seen<'a> {
    /// A record (every record of a segment read in full; the marks of a skipped one).
    Record(Entry<'a>),
    /// The last change record before the next mark of a skipped segment: its LSN and time.
    Touch(Lsn, Micros),
}

/// How [`scan`] reads the journal.
pub struct Walk<'a> {
    /// Records with a lower LSN are not handed over (frames wholly below are not decoded).
    pub decode_from: Lsn,
    /// The journal position a checkpoint knows synced (as for [`reader::scan`]).
    pub protected: (u64, u64),
    /// Where the last segment may be read from instead of its start ([`reader::scan_frames`]).
    pub resume: Option<reader::Resume>,
    /// Whether a sealed segment with a matching summary must be read: when not, its marks are
    /// handed over instead of its records.
    pub wants: &'a dyn Fn(&Summary) -> bool,
    /// In the segments read, the change records to hand over (by block); the others are
    /// handed over as the last one before each record handed over ([`Seen::Touch`]). `None`:
    /// every record.
    pub blocks: Option<&'a dyn Fn(u64) -> bool>,
}

/// Reads the journal like [`reader::scan`], but a sealed segment whose summary matches it and
/// for which `walk.wants` says no is not read: its marks (with LSN >= `decode_from`) are handed
/// over instead of its records, and its length and CRC-32 come from the summary. Every other
/// segment is read by [`reader::scan_frames`], one at a time, which also reports gaps and
/// damage; of its change records, only those `walk.blocks` asks for are decoded.
pub fn scan(
    journal_dir: &Path,
    ledger_id: &[u8; 16],
    start: Start,
    walk: &Walk<'_>,
    visit: &mut dyn FnMut(Seen<'_>) -> Result<()>,
) -> Result<JournalEnd> {
    let decode_from = walk.decode_from;
    let numbers = reader::list_segments(journal_dir)?;
    let mut at = start;
    let mut segments: Vec<SegmentInfo> = Vec::new();
    let mut last_time = 0;
    loop {
        // The last segment (being written) is never skipped.
        let sealed = numbers.binary_search(&at.segment).is_ok()
            && numbers.last().is_some_and(|&l| l > at.segment);
        let skip = sealed
            .then(|| matching(journal_dir, ledger_id, at.segment, at.lsn, at.prev))
            .flatten()
            .filter(|s| !(walk.wants)(s));
        if let Some(s) = skip {
            for m in &s.marks {
                match m {
                    Mark::Record(lsn, time, r) if *lsn >= decode_from => {
                        visit(Seen::Record(Entry {
                            lsn: *lsn,
                            time: *time,
                            record: r,
                        }))?
                    }
                    Mark::Touch(lsn, time) if *lsn >= decode_from => {
                        visit(Seen::Touch(*lsn, *time))?
                    }
                    _ => {}
                }
            }
            segments.push(SegmentInfo {
                number: s.number,
                path: segment::path(journal_dir, s.number),
                first_lsn: s.first_lsn,
                valid_len: s.len,
                file_len: s.len,
                content_crc: s.content_crc,
                last_time: s.last_time,
                from_summary: true,
            });
            if s.last_time != 0 {
                last_time = s.last_time;
            }
            at = Start {
                segment: s.number + 1,
                lsn: s.next_lsn,
                prev: (s.content_crc, s.len),
            };
            continue;
        }
        let one = read_whole(journal_dir, ledger_id, at, walk, visit)?;
        if one.last_time != 0 {
            last_time = one.last_time;
        }
        let next = one.segments.last().map(|l| Start {
            segment: l.number + 1,
            lsn: one.next_lsn,
            prev: (l.content_crc, l.valid_len),
        });
        segments.extend(one.segments);
        match next {
            Some(n) if sealed && one.torn.is_none() => at = n,
            _ => {
                return Ok(JournalEnd {
                    segments,
                    next_lsn: one.next_lsn,
                    last_time,
                    torn: one.torn,
                })
            }
        }
    }
}

/// Reads segment `at.segment` in full (from `walk.resume`'s offset when it names it), handing
/// over its records as `walk` says.
fn read_whole(
    journal_dir: &Path,
    ledger_id: &[u8; 16],
    at: Start,
    walk: &Walk<'_>,
    visit: &mut dyn FnMut(Seen<'_>) -> Result<()>,
) -> Result<JournalEnd> {
    let decode_from = walk.decode_from;
    let Some(want) = walk.blocks else {
        return reader::scan_frames(
            journal_dir,
            ledger_id,
            at,
            at.segment,
            walk.protected,
            walk.resume,
            &mut |path, pos, f| {
                reader::decode(path, pos, f, decode_from, &mut |e| visit(Seen::Record(e)))
            },
        );
    };
    // The last change record passed over since the last record handed over.
    let mut passed: Option<(Lsn, Micros)> = None;
    let end = reader::scan_frames(
        journal_dir,
        ledger_id,
        at,
        at.segment,
        walk.protected,
        walk.resume,
        &mut |path, pos, f| {
            if f.last_lsn() < decode_from {
                return Ok(());
            }
            let (first, time) = (f.first_lsn, f.time);
            f.skim(want, &mut |i, r| {
                let lsn = first + i as u64;
                if lsn < decode_from {
                    return Ok(());
                }
                match r {
                    None => passed = Some((lsn, time)),
                    Some(record) => {
                        if let Some((l, t)) = passed.take() {
                            visit(Seen::Touch(l, t))?;
                        }
                        visit(Seen::Record(Entry {
                            lsn,
                            time,
                            record: &record,
                        }))?;
                    }
                }
                Ok(())
            })
            .map_err(|e| {
                e.unwrap_or_else(|why| {
                    crate::error::Error::damaged(path, pos, format!("undecodable frame: {why}"))
                })
            })
        },
    )?;
    if let Some((l, t)) = passed {
        visit(Seen::Touch(l, t))?;
    }
    Ok(end)
}
