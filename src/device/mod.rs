//! Devices: the backing store a ledger describes. [`BlockDevice`] is the narrow interface the
//! sidecar, the verifier and the baseline scan use, so a test can put a crash-simulating device
//! (or, later, an NBD export) where a file would be.

mod file;

pub use file::FileDevice;

use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// What a trim did to the range it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimOutcome {
    /// The range now reads back as zeroes.
    Zeroed,
    /// The range was discarded and its contents are undefined.
    Discarded,
    /// The device ignored the trim (allowed: trims are advisory); contents are unchanged.
    Ignored,
}

/// A byte-addressed device. Offsets and lengths need not be block-aligned.
pub trait BlockDevice: Send + Sync {
    /// Path or URI, for messages.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads like [`BlockDevice::read_at`] only if that cannot block (the data is cached);
    /// `Ok(false)` means it would have to wait for the device, and nothing was read.
    fn read_at_nowait(&self, _buf: &mut [u8], _offset: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Writes all of `buf` at `offset`; with `fua` the data is durable when this returns.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn flush(&self) -> io::Result<()>;
    /// Makes the range read back as zeroes; `may_trim` allows deallocating it. With
    /// `fast_only`, fails with ENOTSUP (changing nothing) rather than writing zeroes the slow way.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()>;
    /// Whether a successful [`BlockDevice::trim`] leaves the range reading back as zeroes
    /// (known before the trim is issued, so it can be recorded first).
    fn trim_zeroes(&self) -> bool;
    /// Discards the range if the device supports it.
    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome>;
    /// Hints that the range will be read soon (NBD_CMD_CACHE). A no-op where it does not apply.
    fn will_need(&self, _offset: u64, _len: u64) {}
    /// Hints that a scanned range will not be read again soon (keeps a scan of a block device
    /// from evicting the host's page cache). A no-op where it does not apply.
    fn done_with(&self, _offset: u64, _len: u64) {}
}

/// A shared device is a device (a test keeps a handle to the device it gave an export).
impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        (**self).read_at_nowait(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        (**self).write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn write_zeroes(&self, o: u64, l: u64, may_trim: bool, fast: bool) -> io::Result<()> {
        (**self).write_zeroes(o, l, may_trim, fast)
    }
    fn trim_zeroes(&self) -> bool {
        (**self).trim_zeroes()
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        (**self).trim(offset, len)
    }
    fn will_need(&self, offset: u64, len: u64) {
        (**self).will_need(offset, len)
    }
    fn done_with(&self, offset: u64, len: u64) {
        (**self).done_with(offset, len)
    }
}

/// How a ledger recognises its device again: the kind, the path as given, and the identity the
/// kernel gives it (device and inode numbers for a file, the device number for a block device).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// "file" or "block".
    pub kind: String,
    /// The canonical path when the ledger was made.
    pub path: String,
    /// st_dev of a regular file (0 for a block device).
    pub dev: u64,
    /// st_ino of a regular file (0 for a block device).
    pub ino: u64,
    /// st_rdev of a block device (0 for a file).
    pub rdev: u64,
}

impl DeviceIdentity {
    /// Why `other` is not the same device, or `None` when it is.
    pub fn differs(&self, other: &DeviceIdentity) -> Option<String> {
        if self.kind != other.kind {
            return Some(format!(
                "the ledger was made for a {} and this is a {}",
                self.kind, other.kind
            ));
        }
        if self.kind == "file" && (self.dev, self.ino) != (other.dev, other.ino) {
            return Some(format!(
                "the ledger was made for the file {} (device {}, inode {}); this file is device {}, inode {} (a copy or a different file)",
                self.path, self.dev, self.ino, other.dev, other.ino
            ));
        }
        if self.kind == "block" && self.rdev != other.rdev {
            return Some(format!(
                "the ledger was made for block device {} ({}:{}); this is {}:{}",
                self.path,
                self.rdev >> 8,
                self.rdev & 0xff,
                other.rdev >> 8,
                other.rdev & 0xff
            ));
        }
        None
    }
}

/// Opens a device given on the command line. NBD URIs are recognised and refused with a clear
/// message until the NBD client exists.
pub fn open(spec: &str, writable: bool) -> crate::Result<FileDevice> {
    if spec.starts_with("nbd://") || spec.starts_with("nbd+unix://") || spec.starts_with("nbds") {
        return Err(crate::Error::Usage(format!(
            "{spec}: NBD URIs as devices are not supported by this build yet; export the image as a file or block device"
        )));
    }
    FileDevice::open(Path::new(spec), writable)
}
