//! The ledger's metadata file: which device it describes and how (block size, size, identity),
//! written once when the ledger is made. Layout: docs/FORMAT.md ("meta").

use super::codec;
use crate::clock::Micros;
use crate::device::DeviceIdentity;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// "LWLEDGER".
pub const MAGIC: [u8; 8] = *b"LWLEDGER";
/// Newest ledger format version this build reads and writes (docs/FORMAT.md keeps the
/// history).
pub const FORMAT_VERSION: u32 = 2;
/// Version of a new ledger: version 2 adds only the compacted history, so a ledger is marked 2
/// when it is first compacted and older builds keep reading the ones that never were.
pub const NEW_LEDGER_VERSION: u32 = 1;

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
    pub identity: DeviceIdentity,
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
