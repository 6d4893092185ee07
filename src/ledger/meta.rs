//! The ledger's metadata file: which device it describes and how (block size, size, identity),
//! written once when the ledger is made. Layout: docs/FORMAT.md ("meta").

use super::codec;
use super::identity::Identity;
use crate::clock::Micros;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// "LWLEDGER".
pub const MAGIC: [u8; 8] = *b"LWLEDGER";
/// Newest ledger format version this build reads and writes (docs/FORMAT.md keeps the
/// history).
pub const FORMAT_VERSION: u32 = 3;
/// Version of a new ledger: version 2 adds only the compacted history, so a ledger is marked 2
/// when it is first compacted and older builds keep reading the ones that never were.
pub const NEW_LEDGER_VERSION: u32 = 1;
/// `meta` version once the journal may hold records an older build cannot decode (flush
/// intents and confirmations, repairs): marked before the first is appended, so such a build
/// refuses the ledger by its version instead of calling the journal damaged.
pub const NEW_RECORDS_VERSION: u32 = 3;

/// Raises the `meta` file of the ledger in `dir` to at least `version` (temporary file, fsync,
/// rename, directory fsync); a file already there is left alone. Only the version changes.
pub fn ensure_version(dir: &Path, version: u32) -> Result<()> {
    let path = dir.join(super::META_FILE);
    let on_disk = Meta::read(&path)?;
    if on_disk.version >= version {
        return Ok(());
    }
    let mut m = on_disk;
    m.version = version;
    let tmp = dir.join(format!("{}.tmp", super::META_FILE));
    std::fs::write(&tmp, m.encode()).ctx(&tmp, "writing ledger metadata")?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .ctx(&tmp, "fsync")?;
    std::fs::rename(&tmp, &path).ctx(&path, "updating ledger metadata")?;
    super::writer::sync_dir(dir)
}

/// What the metadata file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Random identity of this ledger; every other ledger file carries it.
    pub ledger_id: [u8; 16],
    /// Bytes per block.
    pub block_size: u32,
    /// Device size in bytes when the ledger was made.
    pub device_size: u64,
    /// The device it was made for.
    pub identity: Identity,
    /// When it was made.
    pub created: Micros,
    /// The software that made it.
    pub software: String,
    /// Format version of the file (not part of the encoded body).
    #[serde(skip)]
    pub version: u32,
}

impl Meta {
    /// Encodes the file contents.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        codec::encode_into(self, &mut body);
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads and checks the metadata file.
    pub fn read(path: &Path) -> Result<Meta> {
        let b = std::fs::read(path).ctx(path, "reading ledger metadata")?;
        if b.len() < 20 || b[0..8] != MAGIC {
            return Err(Error::damaged(
                path,
                0,
                "not a lostwrite ledger metadata file (bad magic or too short)",
            ));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4"));
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize;
        if b.len() != 16 + len + 4 {
            return Err(Error::damaged(
                path,
                12,
                format!(
                    "metadata says {len} bytes of body but the file has {}",
                    b.len()
                ),
            ));
        }
        let crc = u32::from_le_bytes(b[16 + len..].try_into().expect("4"));
        if crc32fast::hash(&b[..16 + len]) != crc {
            return Err(Error::damaged(
                path,
                (16 + len) as u64,
                "metadata checksum mismatch",
            ));
        }
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(Error::damaged(
                path,
                8,
                format!(
                    "ledger format version {version}; this build reads versions 1 to {FORMAT_VERSION} (a newer lostwrite wrote it)"
                ),
            ));
        }
        let mut body = &b[16..16 + len];
        let mut meta: Meta = codec::decode_next(&mut body)
            .map_err(|e| Error::damaged(path, 16, format!("undecodable metadata: {e}")))?;
        meta.version = version;
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::identity::Kind;

    /// A string as docs/FORMAT.md spells it: u64 byte length, then the UTF-8 bytes.
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// The whole file, built field by field from docs/FORMAT.md ("meta") with the kind as the
    /// string the `String`-typed field of earlier builds wrote.
    fn by_hand(kind: &str, path: &str, dev: u64, ino: u64, rdev: u64) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[7u8; 16]);
        body.extend_from_slice(&4096u32.to_le_bytes());
        body.extend_from_slice(&(1u64 << 30).to_le_bytes());
        string(&mut body, kind);
        string(&mut body, path);
        body.extend_from_slice(&dev.to_le_bytes());
        body.extend_from_slice(&ino.to_le_bytes());
        body.extend_from_slice(&rdev.to_le_bytes());
        body.extend_from_slice(&1_700_000_000_123_456i64.to_le_bytes());
        string(&mut body, "lostwrite 0.1.0");
        let mut out = Vec::new();
        out.extend_from_slice(b"LWLEDGER");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn meta(kind: Kind, path: &str, dev: u64, ino: u64, rdev: u64) -> Meta {
        Meta {
            ledger_id: [7u8; 16],
            block_size: 4096,
            device_size: 1 << 30,
            identity: Identity {
                kind,
                path: path.into(),
                dev,
                ino,
                rdev,
            },
            created: 1_700_000_000_123_456,
            software: "lostwrite 0.1.0".into(),
            version: 1,
        }
    }

    #[test]
    fn every_kind_encodes_as_the_bytes_format_md_gives() {
        let cases = [
            (Kind::File, "file", "/srv/disk.img", 2049, 131, 0),
            (Kind::Block, "block", "/dev/sdb", 0, 0, (8 << 8) | 16),
            (
                Kind::Nbd,
                "nbd",
                "nbd+unix:///disk?socket=/run/up.sock",
                0,
                0,
                0,
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (kind, name, path, dev, ino, rdev) in cases {
            let m = meta(kind, path, dev, ino, rdev);
            let want = by_hand(name, path, dev, ino, rdev);
            assert_eq!(m.encode(), want, "{name}");
            let p = dir.path().join(name);
            std::fs::write(&p, &want).unwrap();
            assert_eq!(Meta::read(&p).unwrap(), m, "{name}");
        }
    }

    #[test]
    fn an_unknown_kind_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta");
        std::fs::write(&p, by_hand("tape", "/dev/st0", 0, 0, 0)).unwrap();
        let e = Meta::read(&p).unwrap_err();
        match &e {
            Error::Damaged { path, detail, .. } => {
                assert_eq!(path, &p);
                assert!(detail.contains("unknown device kind \"tape\""), "{detail}");
            }
            other => panic!("not a damage error: {other}"),
        }
    }
}
