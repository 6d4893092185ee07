//! The device identity as the ledger records it in `meta` (docs/FORMAT.md, "meta"), and the
//! check that a device is the one a ledger was made for.
//!
//! The format owns this type: the device layer reports its own facts
//! ([`crate::device::DeviceIdentity`], with its own [`DeviceKind`]) and knows nothing of the
//! ledger, and [`Identity::of`] turns them into what `meta` holds. The kind is mirrored here
//! rather than reused because its encoding is part of the format: [`Kind`] is written as the
//! string `file`, `block` or `nbd` (as the struct it replaced wrote its `String` field), so
//! renaming or adding a device variant cannot change the bytes of a ledger, and the exhaustive
//! match in [`Kind::of`] stops the build until the format says how a new kind is recorded.

use crate::device::{DeviceIdentity, DeviceKind};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of device a ledger was made for, encoded as its name (a bincode string).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Kind {
    /// A regular file: `file`.
    File,
    /// A block device: `block`.
    Block,
    /// An NBD export: `nbd`.
    Nbd,
}

impl Kind {
    /// The kind the format records for a device of kind `k`.
    pub fn of(k: DeviceKind) -> Kind {
        match k {
            DeviceKind::File => Kind::File,
            DeviceKind::Block => Kind::Block,
            DeviceKind::Nbd => Kind::Nbd,
        }
    }

    /// The name written to `meta` (and shown in messages).
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Block => "block",
            Kind::Nbd => "nbd",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Kind> for String {
    fn from(k: Kind) -> String {
        k.name().to_string()
    }
}

impl TryFrom<String> for Kind {
    type Error = String;

    fn try_from(s: String) -> Result<Kind, String> {
        match s.as_str() {
            "file" => Ok(Kind::File),
            "block" => Ok(Kind::Block),
            "nbd" => Ok(Kind::Nbd),
            _ => Err(format!(
                "unknown device kind {s:?} (this build knows file, block and nbd)"
            )),
        }
    }
}

/// How a ledger recognises its device again: the kind, the canonical path when the ledger was
/// made (the normalised URI for `nbd`), and the kernel's numbers for it. Field order is the
/// encoding order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// File, block device or NBD export.
    pub kind: Kind,
    /// The canonical path when the ledger was made (the URI for `nbd`).
    pub path: String,
    /// st_dev of a regular file (0 otherwise).
    pub dev: u64,
    /// st_ino of a regular file (0 otherwise).
    pub ino: u64,
    /// st_rdev of a block device (0 otherwise).
    pub rdev: u64,
}

impl Identity {
    /// What the ledger records of device `d`.
    pub fn of(d: &DeviceIdentity) -> Identity {
        Identity {
            kind: Kind::of(d.kind),
            path: d.path.clone(),
            dev: d.dev,
            ino: d.ino,
            rdev: d.rdev,
        }
    }

    /// Why `other` is not the same device, or `None` when it is.
    pub fn differs(&self, other: &Identity) -> Option<String> {
        if self.kind != other.kind {
            return Some(format!(
                "the ledger was made for a {} and this is a {}",
                self.kind, other.kind
            ));
        }
        match self.kind {
            Kind::File if (self.dev, self.ino) != (other.dev, other.ino) => Some(format!(
                "the ledger was made for the file {} (device {}, inode {}); this file is device {}, inode {} (a copy or a different file)",
                self.path, self.dev, self.ino, other.dev, other.ino
            )),
            Kind::Nbd if self.path != other.path => Some(format!(
                "the ledger was made for NBD export {} and this is {}",
                self.path, other.path
            )),
            Kind::Block if self.rdev != other.rdev => Some(format!(
                "the ledger was made for block device {} ({}:{}); this is {}:{}",
                self.path,
                self.rdev >> 8,
                self.rdev & 0xff,
                other.rdev >> 8,
                other.rdev & 0xff
            )),
            _ => None,
        }
    }
}
