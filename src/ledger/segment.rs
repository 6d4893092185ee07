//! Journal segment files: naming and the 64-byte header that chains each segment to its
//! predecessor. Layout: docs/FORMAT.md ("Segments").

use super::record::Lsn;
use std::path::{Path, PathBuf};

/// "LWJOURNL".
pub const MAGIC: [u8; 8] = *b"LWJOURNL";
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 64;
/// A segment is closed and a new one started once it passes this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// File-name suffix.
pub const SUFFIX: &str = ".seg";

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Journal format version that wrote it.
    pub version: u32,
    /// The ledger it belongs to.
    pub ledger_id: [u8; 16],
    /// Segment number, from 1.
    pub number: u64,
    /// LSN of the first record in it.
    pub first_lsn: Lsn,
    /// CRC-32 of the predecessor's entire content (0 for segment 1).
    pub prev_crc: u32,
    /// Byte length of the predecessor (0 for segment 1).
    pub prev_len: u64,
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.ledger_id);
        h[32..40].copy_from_slice(&self.number.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_lsn.to_le_bytes());
        h[48..52].copy_from_slice(&self.prev_crc.to_le_bytes());
        h[52..60].copy_from_slice(&self.prev_len.to_le_bytes());
        let crc = crc32fast::hash(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header; the error says which field is wrong.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < HEADER_LEN {
            return Err(format!("segment header cut short ({} bytes)", b.len()));
        }
        if b[0..8] != MAGIC {
            return Err("not a lostwrite journal segment (bad magic)".into());
        }
        let crc = u32::from_le_bytes(b[60..64].try_into().expect("4"));
        if crc32fast::hash(&b[0..60]) != crc {
            return Err("segment header checksum mismatch".into());
        }
        let hl = u32::from_le_bytes(b[12..16].try_into().expect("4"));
        if hl as usize != HEADER_LEN {
            return Err(format!("segment header length {hl}"));
        }
        Ok(SegmentHeader {
            version: u32::from_le_bytes(b[8..12].try_into().expect("4")),
            ledger_id: b[16..32].try_into().expect("16"),
            number: u64::from_le_bytes(b[32..40].try_into().expect("8")),
            first_lsn: u64::from_le_bytes(b[40..48].try_into().expect("8")),
            prev_crc: u32::from_le_bytes(b[48..52].try_into().expect("4")),
            prev_len: u64::from_le_bytes(b[52..60].try_into().expect("8")),
        })
    }
}

/// Path of segment `number` in the journal directory.
pub fn path(journal_dir: &Path, number: u64) -> PathBuf {
    journal_dir.join(format!("{number:012}{SUFFIX}"))
}

/// The segment number a file name stands for, if it is a segment name.
pub fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    if stem.len() != 12 || !stem.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_names() {
        let h = SegmentHeader {
            version: 1,
            ledger_id: [7; 16],
            number: 3,
            first_lsn: 99,
            prev_crc: 0xabcd,
            prev_len: 4096,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[33] ^= 1;
        assert!(SegmentHeader::decode(&bad).is_err());
        assert_eq!(parse_name("000000000003.seg"), Some(3));
        assert_eq!(parse_name("3.seg"), None);
        assert_eq!(path(Path::new("j"), 3), PathBuf::from("j/000000000003.seg"));
    }
}
