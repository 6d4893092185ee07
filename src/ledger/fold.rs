//! The compacted history: what retention keeps of the journal segments it deletes. For every
//! block changed by a deleted record, its latest change (generation, checksum, LSN, time); for
//! every session, how it stood at the fold point (open, closed or crashed, which of its writes
//! were flushed). With the baseline, that is exactly the state at the fold point, plus the time
//! and durability of each block's latest generation, so a block reverted to what it held when
//! history was folded is still named exactly. Layout: docs/FORMAT.md ("compacted").
//!
//! The file is written whole under a temporary name and renamed into place; the journal segments
//! it replaces are deleted only after that, so a crash at any point leaves either the old fold and
//! all its segments, or the new fold and (perhaps) segments it already covers, which are ignored.

use super::codec;
use super::record::{Generation, Lsn};
use crate::clock::Micros;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// File name inside the ledger directory.
pub const FOLD_FILE: &str = "compacted";
/// "LWFOLD\0\0".
pub const MAGIC: [u8; 8] = *b"LWFOLD\0\0";
/// Version of this file's layout.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 128;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 32;

/// Where the retained journal starts, and how the fold is anchored to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldHeader {
    /// The ledger it belongs to.
    pub ledger_id: [u8; 16],
    /// Every record with LSN <= this is folded; the journal resumes at the next LSN.
    pub through_lsn: Lsn,
    /// Number of the first retained segment.
    pub next_segment: u64,
    /// CRC-32 of the last folded segment's content, which the next segment's header names.
    pub chain_crc: u32,
    /// Byte length of the last folded segment.
    pub chain_len: u64,
    /// Time of the last folded record.
    pub through_time: Micros,
    /// LSN of the folded baseline record (0 when none was folded).
    pub baseline_lsn: Lsn,
    /// Its time.
    pub baseline_time: Micros,
    /// Highest session number at the fold point.
    pub last_session: u64,
    /// That session had not closed at the fold point.
    pub session_open: bool,
    /// Number of sessions in the file.
    pub session_count: u32,
    /// Number of block entries.
    pub entry_count: u64,
    /// Bytes of the encoded session list.
    pub sessions_len: u64,
    /// CRC-32 of the encoded session list.
    pub sessions_crc: u32,
}

/// How a session stood at the fold point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldSession {
    /// Session number.
    pub id: u64,
    /// LSN of its session-open record.
    pub open_lsn: Lsn,
    /// Its time.
    pub open_time: Micros,
    /// `--journal-sync strict`.
    pub strict: bool,
    /// 0: not closed at the fold point (running then), 1: closed cleanly, 2: crashed (a later
    /// session opened without its close record).
    pub end: u8,
    /// LSN of its close record (when closed).
    pub close_lsn: Lsn,
    /// Time of its close record.
    pub close_time: Micros,
    /// LSN of its last folded record.
    pub last_lsn: Lsn,
    /// Time of that record.
    pub last_time: Micros,
    /// Every change record with LSN <= this was flushed.
    pub covers: Lsn,
    /// Further flushed or FUA-durable LSN ranges above `covers`, merged, in order.
    pub ranges: Vec<(Lsn, Lsn)>,
    /// Completed FLUSHes folded.
    pub flushes: u64,
    /// LSN of the last folded FLUSH (0: none).
    pub last_flush_lsn: Lsn,
    /// Its time.
    pub last_flush_time: Micros,
}

/// `FoldSession::end` values.
pub mod end {
    /// Not closed at the fold point.
    pub const OPEN: u8 = 0;
    /// Closed cleanly.
    pub const CLEAN: u8 = 1;
    /// Crashed.
    pub const CRASHED: u8 = 2;
}

/// What a block's latest folded change was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldChange {
    /// New contents with this checksum.
    Write(u32),
    /// Zeroes.
    Zero,
    /// Discarded.
    Trim,
    /// The write failed.
    Failed,
}

/// A block's latest change at or before the fold point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldEntry {
    /// Block.
    pub block: u64,
    /// LSN of the record.
    pub lsn: Lsn,
    /// Its time.
    pub time: Micros,
    /// The generation it made.
    pub generation: Generation,
    /// What it did.
    pub change: FoldChange,
}

impl FoldEntry {
    /// The 32 bytes of the entry.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let (code, crc) = match self.change {
            FoldChange::Write(c) => (0u32, c),
            FoldChange::Zero => (1, 0),
            FoldChange::Trim => (2, 0),
            FoldChange::Failed => (3, 0),
        };
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.block.to_le_bytes());
        b[8..16].copy_from_slice(&self.lsn.to_le_bytes());
        b[16..24].copy_from_slice(&self.time.to_le_bytes());
        b[24..28].copy_from_slice(&((self.generation << 2) | code).to_le_bytes());
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes an entry; `None` when a field is out of range.
    pub fn decode(b: &[u8; ENTRY_LEN]) -> Option<FoldEntry> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let word = u32::from_le_bytes(b[24..28].try_into().expect("4"));
        let crc = u32::from_le_bytes(b[28..32].try_into().expect("4"));
        let change = match (word & 3, crc) {
            (0, c) => FoldChange::Write(c),
            (1, 0) => FoldChange::Zero,
            (2, 0) => FoldChange::Trim,
            (3, 0) => FoldChange::Failed,
            _ => return None,
        };
        Some(FoldEntry {
            block: u64_at(0),
            lsn: u64_at(8),
            time: u64_at(16) as i64,
            generation: word >> 2,
            change,
        })
    }
}

impl FoldHeader {
    /// The 128 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.ledger_id);
        h[32..40].copy_from_slice(&self.through_lsn.to_le_bytes());
        h[40..48].copy_from_slice(&self.next_segment.to_le_bytes());
        h[48..52].copy_from_slice(&self.chain_crc.to_le_bytes());
        h[52..60].copy_from_slice(&self.chain_len.to_le_bytes());
        h[60..68].copy_from_slice(&self.through_time.to_le_bytes());
        h[68..76].copy_from_slice(&self.baseline_lsn.to_le_bytes());
        h[76..84].copy_from_slice(&self.baseline_time.to_le_bytes());
        h[84..92].copy_from_slice(&self.last_session.to_le_bytes());
        h[92..96].copy_from_slice(&(self.session_open as u32).to_le_bytes());
        h[96..100].copy_from_slice(&self.session_count.to_le_bytes());
        h[100..108].copy_from_slice(&self.entry_count.to_le_bytes());
        h[108..116].copy_from_slice(&self.sessions_len.to_le_bytes());
        h[116..120].copy_from_slice(&self.sessions_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..124]);
        h[124..128].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks the header; the error names the field and its offset.
    pub fn decode(
        b: &[u8],
        ledger_id: &[u8; 16],
    ) -> std::result::Result<FoldHeader, (u64, String)> {
        if b.len() < HEADER_LEN {
            return Err((0, format!("header cut short ({} bytes)", b.len())));
        }
        if b[0..8] != MAGIC {
            return Err((
                0,
                "not a lostwrite compacted-history file (bad magic)".into(),
            ));
        }
        let crc = u32::from_le_bytes(b[124..128].try_into().expect("4"));
        if crc32fast::hash(&b[0..124]) != crc {
            return Err((124, "header checksum mismatch".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        if u32_at(8) != VERSION {
            return Err((
                8,
                format!("version {} (this build reads version {VERSION})", u32_at(8)),
            ));
        }
        if u32_at(12) as usize != HEADER_LEN {
            return Err((12, format!("header length {}", u32_at(12))));
        }
        if &b[16..32] != ledger_id {
            return Err((16, "it belongs to a different ledger".into()));
        }
        let open = u32_at(92);
        if open > 1 {
            return Err((92, format!("session-open flag {open}")));
        }
        let h = FoldHeader {
            ledger_id: *ledger_id,
            through_lsn: u64_at(32),
            next_segment: u64_at(40),
            chain_crc: u32_at(48),
            chain_len: u64_at(52),
            through_time: u64_at(60) as i64,
            baseline_lsn: u64_at(68),
            baseline_time: u64_at(76) as i64,
            last_session: u64_at(84),
            session_open: open == 1,
            session_count: u32_at(96),
            entry_count: u64_at(100),
            sessions_len: u64_at(108),
            sessions_crc: u32_at(116),
        };
        if h.next_segment < 2 || h.through_lsn == 0 {
            return Err((
                32,
                "it folds nothing (through LSN 0 or next segment < 2)".into(),
            ));
        }
        Ok(h)
    }
}

/// Where a new compacted history is written before it is renamed to [`FOLD_FILE`].
pub fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{FOLD_FILE}.tmp"))
}

/// An opened compacted-history file: header and sessions in memory, entries streamed.
#[derive(Debug, Clone)]
pub struct Fold {
    /// Its path.
    pub path: PathBuf,
    /// The header.
    pub header: FoldHeader,
    /// Sessions at the fold point, by number.
    pub sessions: Vec<FoldSession>,
}

impl Fold {
    /// Reads the file in `dir` if there is one: its header and sessions. Entries are checked
    /// when [`Fold::entries`] reads them.
    pub fn read(dir: &Path, ledger_id: &[u8; 16]) -> Result<Option<Fold>> {
        let path = dir.join(FOLD_FILE);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, "opening the compacted history", e)),
        };
        let len = f.metadata().ctx(&path, "stat")?.len();
        let mut r = BufReader::new(f);
        let mut hb = vec![0u8; HEADER_LEN.min(len as usize)];
        r.read_exact(&mut hb).ctx(&path, "reading its header")?;
        let header =
            FoldHeader::decode(&hb, ledger_id).map_err(|(o, why)| Error::damaged(&path, o, why))?;
        let expect =
            HEADER_LEN as u64 + header.sessions_len + header.entry_count * ENTRY_LEN as u64 + 4;
        if len != expect {
            return Err(Error::damaged(
                &path,
                0,
                format!(
                    "the file has {len} bytes but its header describes {expect} ({} sessions, {} entries): cut short or overwritten",
                    header.session_count, header.entry_count
                ),
            ));
        }
        let mut sb = vec![0u8; header.sessions_len as usize];
        r.read_exact(&mut sb).ctx(&path, "reading its sessions")?;
        if crc32fast::hash(&sb) != header.sessions_crc {
            return Err(Error::damaged(
                &path,
                HEADER_LEN as u64,
                "the session list fails its checksum",
            ));
        }
        let mut input = &sb[..];
        let mut sessions = Vec::with_capacity(header.session_count as usize);
        for _ in 0..header.session_count {
            let s: FoldSession = codec::decode_next(&mut input).map_err(|e| {
                Error::damaged(
                    &path,
                    HEADER_LEN as u64,
                    format!("undecodable session: {e}"),
                )
            })?;
            sessions.push(s);
        }
        Ok(Some(Fold {
            path,
            header,
            sessions,
        }))
    }

    /// Byte offset of the first entry.
    fn entries_offset(&self) -> u64 {
        HEADER_LEN as u64 + self.header.sessions_len
    }

    /// Hands every entry, in block order, to `visit`; checks the entries' checksum at the end
    /// (a damaged file fails then, after the visitor saw its entries).
    pub fn entries(&self, visit: &mut dyn FnMut(&FoldEntry) -> Result<()>) -> Result<()> {
        use std::io::Seek;
        let path = &self.path;
        let mut f = std::fs::File::open(path).ctx(path, "opening the compacted history")?;
        f.seek(std::io::SeekFrom::Start(self.entries_offset()))
            .ctx(path, "seeking to its entries")?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut hasher = crc32fast::Hasher::new();
        let mut b = [0u8; ENTRY_LEN];
        let mut prev: Option<u64> = None;
        for i in 0..self.header.entry_count {
            let at = self.entries_offset() + i * ENTRY_LEN as u64;
            r.read_exact(&mut b).ctx(path, "reading its entries")?;
            hasher.update(&b);
            let e = FoldEntry::decode(&b)
                .filter(|e| prev.is_none_or(|p| e.block > p) && e.lsn <= self.header.through_lsn)
                .ok_or_else(|| {
                    Error::damaged(path, at, "an entry is out of order or out of range")
                })?;
            prev = Some(e.block);
            visit(&e)?;
        }
        let mut t = [0u8; 4];
        r.read_exact(&mut t).ctx(path, "reading its checksum")?;
        if hasher.finalize() != u32::from_le_bytes(t) {
            return Err(Error::damaged(
                path,
                self.entries_offset() + self.header.entry_count * ENTRY_LEN as u64,
                "the block entries fail their checksum",
            ));
        }
        Ok(())
    }
}

/// Writes a new compacted-history file as `dir/compacted.tmp`, synced; the caller renames it.
pub struct FoldWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    hasher: crc32fast::Hasher,
    header: FoldHeader,
    written: u64,
    prev: Option<u64>,
}

impl FoldWriter {
    /// Starts the file: `header` (its counts and session checksum are filled in here) and
    /// `sessions`. Entries follow with [`FoldWriter::push`], in block order.
    pub fn create(dir: &Path, mut header: FoldHeader, sessions: &[FoldSession]) -> Result<Self> {
        let path = tmp_path(dir);
        let mut sb = Vec::new();
        for s in sessions {
            codec::encode_into(s, &mut sb);
        }
        header.session_count = sessions.len() as u32;
        header.sessions_len = sb.len() as u64;
        header.sessions_crc = crc32fast::hash(&sb);
        let f = std::fs::File::create(&path).ctx(&path, "creating the compacted history")?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        // The entry count is not known yet: the header is written again at the end.
        out.write_all(&header.encode())
            .and_then(|_| out.write_all(&sb))
            .ctx(&path, "writing the compacted history")?;
        Ok(FoldWriter {
            path,
            out,
            hasher: crc32fast::Hasher::new(),
            header,
            written: 0,
            prev: None,
        })
    }

    /// Appends one entry (blocks strictly increasing).
    pub fn push(&mut self, e: &FoldEntry) -> Result<()> {
        assert!(
            self.prev.is_none_or(|p| e.block > p),
            "fold entries out of order"
        );
        self.prev = Some(e.block);
        let b = e.encode();
        self.hasher.update(&b);
        self.written += 1;
        self.out
            .write_all(&b)
            .ctx(&self.path, "writing the compacted history")
    }

    /// Completes the file and syncs it; returns its temporary path and final header.
    pub fn finish(mut self) -> Result<(PathBuf, FoldHeader)> {
        use std::os::unix::fs::FileExt;
        let crc = self.hasher.clone().finalize();
        self.out
            .write_all(&crc.to_le_bytes())
            .ctx(&self.path, "writing the compacted history")?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, "writing the compacted history", e.into_error()))?;
        self.header.entry_count = self.written;
        f.write_all_at(&self.header.encode(), 0)
            .ctx(&self.path, "writing the compacted history's header")?;
        f.sync_all()
            .ctx(&self.path, "fsync of the compacted history")?;
        Ok((self.path, self.header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let id = [5u8; 16];
        let h = FoldHeader {
            ledger_id: id,
            through_lsn: 90,
            next_segment: 3,
            chain_crc: 0xdead,
            chain_len: 4096,
            through_time: 77,
            baseline_lsn: 1,
            baseline_time: 2,
            last_session: 4,
            session_open: true,
            session_count: 0,
            entry_count: 0,
            sessions_len: 0,
            sessions_crc: 0,
        };
        let s = FoldSession {
            id: 4,
            open_lsn: 10,
            open_time: 11,
            strict: false,
            end: end::OPEN,
            close_lsn: 0,
            close_time: 0,
            last_lsn: 90,
            last_time: 77,
            covers: 50,
            ranges: vec![(60, 61)],
            flushes: 3,
            last_flush_lsn: 70,
            last_flush_time: 71,
        };
        let entries = [
            FoldEntry {
                block: 2,
                lsn: 20,
                time: 5,
                generation: (1 << 30) - 1,
                change: FoldChange::Write(0xffff_ffff),
            },
            FoldEntry {
                block: 9,
                lsn: 21,
                time: 6,
                generation: 3,
                change: FoldChange::Trim,
            },
        ];
        let mut w = FoldWriter::create(dir.path(), h, std::slice::from_ref(&s)).unwrap();
        for e in &entries {
            w.push(e).unwrap();
        }
        let (tmp, _) = w.finish().unwrap();
        std::fs::rename(tmp, dir.path().join(FOLD_FILE)).unwrap();
        let f = Fold::read(dir.path(), &id).unwrap().unwrap();
        assert_eq!(f.sessions, vec![s]);
        assert_eq!(f.header.entry_count, 2);
        let mut got = Vec::new();
        f.entries(&mut |e| {
            got.push(*e);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, entries);
        // A flipped byte in the entries fails their checksum.
        let p = dir.path().join(FOLD_FILE);
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 10] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let f = Fold::read(dir.path(), &id).unwrap().unwrap();
        assert!(f.entries(&mut |_| Ok(())).is_err());
        assert!(Fold::read(dir.path(), &[6u8; 16]).is_err());
    }
}
