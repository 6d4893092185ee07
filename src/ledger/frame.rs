//! Journal frames: one commit group of records with its own checksum, first LSN, time, and the
//! LSN up to which the journal was known durable when it was appended (which lets recovery tell
//! a torn, never-synced tail from damage to synced history). Layout: docs/FORMAT.md ("Frames").

use super::codec;
use super::record::{Lsn, Record};
use crate::clock::Micros;

/// "LWFR" as little-endian bytes.
pub const MAGIC: u32 = u32::from_le_bytes(*b"LWFR");
/// Bytes before the body.
pub const HEADER_LEN: usize = 40;
/// Largest body a frame may carry.
pub const MAX_BODY: usize = 16 << 20;
/// Most records a writer puts in one frame (a larger commit group spans several frames); the
/// largest record is a Flush with a bounded range list, so a frame stays far below MAX_BODY.
pub const MAX_RECORDS: usize = 1 << 16;
/// Smallest encoded record (a tag and one u64), bounding the record count a body can claim.
const MIN_RECORD: usize = 12;

/// A parsed frame header and its body.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// LSN of the first record; record `i` has LSN `first_lsn + i`.
    pub first_lsn: Lsn,
    /// Number of records.
    pub count: u32,
    /// Commit-group time.
    pub time: Micros,
    /// The journal was durable through this LSN when the frame was appended.
    pub synced_lsn: Lsn,
    /// Encoded records.
    pub body: &'a [u8],
    /// Total bytes of the frame (header and body).
    pub len: usize,
}

impl Frame<'_> {
    /// LSN of the last record.
    pub fn last_lsn(&self) -> Lsn {
        self.first_lsn + self.count as u64 - 1
    }

    /// Decodes the records; a body that does not hold exactly `count` records is an error.
    pub fn records(&self) -> Result<Vec<Record>, String> {
        let mut input = self.body;
        let mut out = Vec::with_capacity(self.count as usize);
        for i in 0..self.count {
            let r: Record =
                codec::decode_next(&mut input).map_err(|e| format!("record {i}: {e}"))?;
            out.push(r);
        }
        if !input.is_empty() {
            return Err(format!("{} bytes after the last record", input.len()));
        }
        Ok(out)
    }

    /// Walks the records for a reader that wants only some blocks: `visit` gets each record's
    /// index, with the record decoded when it is not a change record or its block passes
    /// `want`, and `None` for a change record of another block, whose other fields are not
    /// decoded (their sizes are fixed: docs/FORMAT.md, "Records"). As strict as
    /// [`Frame::records`]: a body that does not hold exactly `count` records is an error
    /// (`Err(Err(why))`); the visitor's own error comes back as `Err(Ok(e))`.
    pub fn skim<E>(
        &self,
        want: &dyn Fn(u64) -> bool,
        visit: &mut dyn FnMut(u32, Option<Record>) -> Result<(), E>,
    ) -> Result<(), Result<E, String>> {
        let mut input = self.body;
        for i in 0..self.count {
            let size = input
                .get(..4)
                .and_then(|t| change_size(u32::from_le_bytes(t.try_into().expect("4"))));
            match size {
                Some(n) if input.len() >= n => {
                    let block = u64::from_le_bytes(input[4..12].try_into().expect("8"));
                    if want(block) {
                        let r: Record = codec::decode_next(&mut input)
                            .map_err(|e| Err(format!("record {i}: {e}")))?;
                        visit(i, Some(r)).map_err(Ok)?;
                    } else {
                        input = &input[n..];
                        visit(i, None).map_err(Ok)?;
                    }
                }
                _ => {
                    let r: Record = codec::decode_next(&mut input)
                        .map_err(|e| Err(format!("record {i}: {e}")))?;
                    visit(i, Some(r)).map_err(Ok)?;
                }
            }
        }
        if !input.is_empty() {
            return Err(Err(format!("{} bytes after the last record", input.len())));
        }
        Ok(())
    }
}

/// Bytes of a change record with tag `tag` (tag u32, block u64, generation u32, and a crc u32
/// for a Write), `None` for the other kinds.
fn change_size(tag: u32) -> Option<usize> {
    match tag {
        3 => Some(20),
        4..=6 => Some(16),
        _ => None,
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the body needs: a torn or truncated tail.
    Truncated,
    /// Not a frame header.
    BadMagic,
    /// Header fields out of range.
    BadHeader(String),
    /// The checksum does not match.
    BadChecksum,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "frame cut short"),
            FrameError::BadMagic => write!(f, "no frame magic"),
            FrameError::BadHeader(s) => write!(f, "bad frame header: {s}"),
            FrameError::BadChecksum => write!(f, "frame checksum mismatch"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The frame checksum: CRC-32 of the ledger id followed by bytes 8.. of the frame, so a frame
/// left behind by another ledger (stale blocks after a crash) never passes as one of ours.
fn frame_crc(ledger_id: &[u8; 16], bytes: &[u8]) -> u32 {
    Checker::new(ledger_id).crc(bytes)
}

/// The frame checksum of one ledger, its id already taken in: a reader checking a million
/// frames makes one and clones it per frame.
#[derive(Clone)]
pub struct Checker(crc32fast::Hasher);

impl Checker {
    /// The checker of ledger `ledger_id`.
    pub fn new(ledger_id: &[u8; 16]) -> Checker {
        let mut h = crc32fast::Hasher::new();
        h.update(ledger_id);
        Checker(h)
    }

    fn crc(&self, bytes: &[u8]) -> u32 {
        let mut h = self.0.clone();
        h.update(bytes);
        h.finalize()
    }
}

/// Appends one frame holding `records` to `out`.
pub fn encode(
    out: &mut Vec<u8>,
    ledger_id: &[u8; 16],
    first_lsn: Lsn,
    time: Micros,
    synced_lsn: Lsn,
    records: &[Record],
) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    for r in records {
        codec::encode_into(r, out);
    }
    let body_len = out.len() - start - HEADER_LEN;
    assert!(body_len <= MAX_BODY, "frame body of {body_len} bytes");
    let h = &mut out[start..start + HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(records.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    h[24..32].copy_from_slice(&time.to_le_bytes());
    h[32..40].copy_from_slice(&synced_lsn.to_le_bytes());
    let crc = frame_crc(ledger_id, &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses the frame at the start of `buf`.
pub fn parse<'a>(buf: &'a [u8], ledger_id: &[u8; 16]) -> Result<Frame<'a>, FrameError> {
    parse_with(buf, &Checker::new(ledger_id))
}

/// [`parse`] with the ledger's [`Checker`].
pub fn parse_with<'a>(buf: &'a [u8], check: &Checker) -> Result<Frame<'a>, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Truncated);
    }
    if u32_at(buf, 0) != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let body_len = u32_at(buf, 8) as usize;
    let count = u32_at(buf, 12);
    if body_len > MAX_BODY {
        return Err(FrameError::BadHeader(format!("body of {body_len} bytes")));
    }
    if count == 0 || count as usize > body_len / MIN_RECORD {
        return Err(FrameError::BadHeader(format!(
            "{count} records in {body_len} bytes"
        )));
    }
    let len = HEADER_LEN + body_len;
    if buf.len() < len {
        return Err(FrameError::Truncated);
    }
    if check.crc(&buf[8..len]) != u32_at(buf, 4) {
        return Err(FrameError::BadChecksum);
    }
    let first_lsn = u64_at(buf, 16);
    if first_lsn == 0 {
        return Err(FrameError::BadHeader("LSN 0".into()));
    }
    Ok(Frame {
        first_lsn,
        count,
        time: u64_at(buf, 24) as i64,
        synced_lsn: u64_at(buf, 32),
        body: &buf[HEADER_LEN..len],
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse() {
        let recs = vec![
            Record::Write {
                block: 7,
                generation: 3,
                crc: 0xdead_beef,
            },
            Record::Flush {
                session: 1,
                covers: 9,
                extra: vec![(11, 12)],
            },
        ];
        let mut buf = Vec::new();
        encode(&mut buf, &[1; 16], 10, 1234, 8, &recs);
        assert_eq!(parse(&buf, &[2; 16]).unwrap_err(), FrameError::BadChecksum);
        let f = parse(&buf, &[1; 16]).unwrap();
        assert_eq!(
            (f.first_lsn, f.count, f.time, f.synced_lsn),
            (10, 2, 1234, 8)
        );
        assert_eq!(f.len, buf.len());
        assert_eq!(f.records().unwrap(), recs);
        assert_eq!(f.last_lsn(), 11);
    }

    #[test]
    fn skim_decodes_what_is_wanted_and_is_as_strict_as_records() {
        let recs = vec![
            Record::Write {
                block: 7,
                generation: 3,
                crc: 1,
            },
            Record::Zero {
                block: 8,
                generation: 1,
            },
            Record::Durable { first: 1, last: 2 },
            Record::Trim {
                block: 7,
                generation: 4,
            },
            Record::Failed {
                block: 9,
                generation: 2,
            },
        ];
        let mut buf = Vec::new();
        encode(&mut buf, &[1; 16], 10, 1234, 8, &recs);
        let f = parse(&buf, &[1; 16]).unwrap();
        let mut seen = Vec::new();
        f.skim::<()>(&|b| b == 7, &mut |i, r| {
            seen.push((i, r));
            Ok(())
        })
        .unwrap();
        let want: Vec<(u32, Option<Record>)> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    i as u32,
                    r.block().is_none_or(|b| b == 7).then(|| r.clone()),
                )
            })
            .collect();
        assert_eq!(seen, want);
        // A body with a byte too many, or cut inside a skipped record, fails like records().
        for longer in [true, false] {
            let mut bad = Vec::new();
            encode(&mut bad, &[1; 16], 10, 1234, 8, &recs);
            let body_len = bad.len() - HEADER_LEN;
            let f = Frame {
                body: if longer {
                    bad.push(0);
                    &bad[HEADER_LEN..]
                } else {
                    &bad[HEADER_LEN..HEADER_LEN + body_len - 3]
                },
                ..f
            };
            assert!(f.records().is_err());
            assert!(matches!(
                f.skim::<()>(&|_| false, &mut |_, _| Ok(())),
                Err(Err(_))
            ));
        }
    }
}
