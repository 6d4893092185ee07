//! Devices: the backing store a ledger describes. [`BlockDevice`] is the narrow interface the
//! sidecar, the verifier and the baseline scan use, so a test can put a crash-simulating device
//! where a file would be. A device is a file or block device ([`FileDevice`]) or an NBD export
//! ([`NbdDevice`]); [`open`] picks by what the command line names.

mod claim;
mod direct;
mod file;
mod nbd;

pub use claim::{holders, Claim};
pub use file::FileDevice;
pub use nbd::{NbdDevice, DEFAULT_CONNECTIONS};

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

/// How a served device uses the host's page cache (`serve --cache`, with qemu's names for the
/// same choice). docs/OPERATIONS.md ("Cache modes") says which to use when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Through the page cache: a write returns once it is there, and FLUSH writes it back.
    #[default]
    Writeback,
    /// O_DIRECT: data moves between the device and aligned buffers, never cached by the host
    /// (a guest caches for itself). FLUSH still syncs the device.
    None,
}

impl CacheMode {
    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::None => "none",
        }
    }
}

/// How a device was read by a scan (`verify`, the baseline of `init`, the "holds now" of
/// `history`): the `read` of their output. docs/VERIFY.md ("How the device is read").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// O_DIRECT: from the media, past the host's page cache.
    Direct,
    /// O_DIRECT was refused: dirty pages were written back and each range dropped from the page
    /// cache before it was read. Best effort: pages another process maps or dirties again stay.
    CacheDropped,
    /// Through the host's page cache (`--cached`, or nothing better was possible).
    Cached,
    /// Over NBD: what the upstream reads is the upstream's business.
    Nbd,
}

impl ReadMode {
    /// The name used in output.
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Direct => "direct",
            ReadMode::CacheDropped => "cache-dropped",
            ReadMode::Cached => "cached",
            ReadMode::Nbd => "nbd",
        }
    }

    /// What the mode means, for the human output.
    pub fn meaning(self) -> &'static str {
        match self {
            ReadMode::Direct => "O_DIRECT, from the media past the host's page cache",
            ReadMode::CacheDropped => {
                "each range dropped from the host's page cache just before it was read (best effort: a page another process maps or dirties stays, and is read from the cache)"
            }
            ReadMode::Cached => {
                "through the host's page cache: newer cached data can hide a loss on the media below"
            }
            ReadMode::Nbd => "over NBD: whether the upstream reads its media or a cache is its business",
        }
    }
}

/// How [`BlockDevice::read_media`] reads a device, and why when it is not the media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRead {
    /// The mode.
    pub mode: ReadMode,
    /// Why, when the mode is not what was asked for (O_DIRECT refused, `--cached`).
    pub note: Option<String>,
}

/// Alignment of O_DIRECT buffers, offsets and lengths (covers 512- and 4096-byte sectors).
pub const DIRECT_ALIGN: usize = 4096;

/// A zeroed buffer whose start is aligned for O_DIRECT, made without unsafe code: a `Vec`
/// over-allocated by the alignment and sliced at an aligned address.
pub struct AlignedBuf {
    raw: Vec<u8>,
    skip: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes, starting at a [`DIRECT_ALIGN`]-aligned address.
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let skip = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, skip, len }
    }

    /// The aligned bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.skip..self.skip + self.len]
    }
}

/// A byte-addressed device. Offsets and lengths need not be block-aligned.
pub trait BlockDevice: Send + Sync {
    /// Path or URI, for messages.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Smallest unit of I/O: offsets and lengths of writes must be multiples of it (1 for a
    /// file; an NBD export may demand more).
    fn min_io(&self) -> u32 {
        1
    }
    /// Whether a write without FUA returns without waiting for another process or machine
    /// (it lands in the page cache). The server runs such writes on the connection's own
    /// thread; a device that waits for a round trip (an NBD upstream) says `false`, and its
    /// writes go to the worker pool so that many are in flight at once.
    fn quick_writes(&self) -> bool {
        true
    }
    /// Why the device can no longer be used (a lost NBD connection), if it cannot.
    fn failure(&self) -> Option<String> {
        None
    }
    /// Whether `write_zeroes` with `fast_only` can work, when known before trying.
    fn can_fast_zero(&self) -> Option<bool> {
        None
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads from the media rather than a cache where the device can (O_DIRECT on a file or
    /// block device), for the scrubber: a scrub that reads its own page cache misses exactly
    /// the losses it exists for. Falls back to [`BlockDevice::read_at`].
    fn read_media(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(buf, offset)
    }
    /// How [`BlockDevice::read_media`] reads this device. A buffer aligned to [`DIRECT_ALIGN`]
    /// with an aligned offset and length is read without copying.
    fn media_read(&self) -> MediaRead {
        MediaRead {
            mode: ReadMode::Cached,
            note: None,
        }
    }
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
    fn min_io(&self) -> u32 {
        (**self).min_io()
    }
    fn quick_writes(&self) -> bool {
        (**self).quick_writes()
    }
    fn failure(&self) -> Option<String> {
        (**self).failure()
    }
    fn can_fast_zero(&self) -> Option<bool> {
        (**self).can_fast_zero()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        (**self).read_at_nowait(buf, offset)
    }
    fn read_media(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_media(buf, offset)
    }
    fn media_read(&self) -> MediaRead {
        (**self).media_read()
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

/// Which sort of device this is: what decides how it is recognised again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A regular file (an image).
    File,
    /// A block device.
    Block,
    /// An NBD export.
    Nbd,
}

/// The facts by which a device can be recognised again: the kind, the path as given, and the
/// identity the kernel gives it (device and inode numbers for a file, the device number for a
/// block device); for an NBD export, the normalised URI. The ledger records them in its `meta`
/// in a form of its own (ledger/identity.rs), so this struct is free to change without touching
/// the on-disk format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// File, block device or NBD export.
    pub kind: DeviceKind,
    /// The canonical path (the URI for an NBD export).
    pub path: String,
    /// st_dev of a regular file (0 otherwise).
    pub dev: u64,
    /// st_ino of a regular file (0 otherwise).
    pub ino: u64,
    /// st_rdev of a block device (0 otherwise).
    pub rdev: u64,
}

/// A device named on the command line: a path or an NBD URI.
pub enum Device {
    /// A regular file or block device.
    File(FileDevice),
    /// An NBD export.
    Nbd(NbdDevice),
}

impl Device {
    /// What the ledger records to recognise the device.
    pub fn identity(&self) -> &DeviceIdentity {
        match self {
            Device::File(f) => f.identity(),
            Device::Nbd(n) => n.identity(),
        }
    }

    /// Takes the exclusive claim on a file or block device (see [`Claim`]), held as long as
    /// the device is. An NBD export is not claimed here: its server decides who may write it.
    pub fn claim(&self) -> crate::Result<()> {
        match self {
            Device::File(f) => f.claim(),
            Device::Nbd(_) => Ok(()),
        }
    }

    fn inner(&self) -> &dyn BlockDevice {
        match self {
            Device::File(f) => f,
            Device::Nbd(n) => n,
        }
    }
}

impl BlockDevice for Device {
    fn name(&self) -> &str {
        self.inner().name()
    }
    fn size(&self) -> u64 {
        self.inner().size()
    }
    fn min_io(&self) -> u32 {
        self.inner().min_io()
    }
    fn quick_writes(&self) -> bool {
        self.inner().quick_writes()
    }
    fn failure(&self) -> Option<String> {
        self.inner().failure()
    }
    fn can_fast_zero(&self) -> Option<bool> {
        self.inner().can_fast_zero()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner().read_at(buf, offset)
    }
    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.inner().read_at_nowait(buf, offset)
    }
    fn read_media(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner().read_media(buf, offset)
    }
    fn media_read(&self) -> MediaRead {
        match self {
            Device::File(f) => f.media_read(),
            Device::Nbd(_) => MediaRead {
                mode: ReadMode::Nbd,
                note: None,
            },
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.inner().write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner().flush()
    }
    fn write_zeroes(&self, o: u64, l: u64, may_trim: bool, fast: bool) -> io::Result<()> {
        self.inner().write_zeroes(o, l, may_trim, fast)
    }
    fn trim_zeroes(&self) -> bool {
        self.inner().trim_zeroes()
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        self.inner().trim(offset, len)
    }
    fn will_need(&self, offset: u64, len: u64) {
        self.inner().will_need(offset, len)
    }
    fn done_with(&self, offset: u64, len: u64) {
        self.inner().done_with(offset, len)
    }
}

/// A device whose [`BlockDevice::read_media`] reads through the page cache (`--cached`: faster
/// on a hot cache, blind to losses below it). Everything else passes through.
pub struct CachedReads<'a>(pub &'a dyn BlockDevice);

impl BlockDevice for CachedReads<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn min_io(&self) -> u32 {
        self.0.min_io()
    }
    fn quick_writes(&self) -> bool {
        self.0.quick_writes()
    }
    fn failure(&self) -> Option<String> {
        self.0.failure()
    }
    fn can_fast_zero(&self) -> Option<bool> {
        self.0.can_fast_zero()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.0.read_at_nowait(buf, offset)
    }
    fn read_media(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn media_read(&self) -> MediaRead {
        match self.0.media_read().mode {
            // Reads over NBD are the same either way.
            ReadMode::Nbd => self.0.media_read(),
            _ => MediaRead {
                mode: ReadMode::Cached,
                note: Some("--cached was given".into()),
            },
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn write_zeroes(&self, o: u64, l: u64, may_trim: bool, fast: bool) -> io::Result<()> {
        self.0.write_zeroes(o, l, may_trim, fast)
    }
    fn trim_zeroes(&self) -> bool {
        self.0.trim_zeroes()
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        self.0.trim(offset, len)
    }
    fn will_need(&self, offset: u64, len: u64) {
        self.0.will_need(offset, len)
    }
    fn done_with(&self, offset: u64, len: u64) {
        self.0.done_with(offset, len)
    }
}

/// Opens a device given on the command line: an NBD URI (`nbd://HOST[:PORT]/EXPORT`,
/// `nbd+unix:///EXPORT?socket=PATH`) or a path. A file or block device opened `writable` is
/// claimed ([`Device::claim`]): one owner writes a device.
pub fn open(spec: &str, writable: bool) -> crate::Result<Device> {
    open_with(spec, writable, CacheMode::Writeback)
}

/// Like [`open`], with the given use of the host's page cache ([`FileDevice::open_with`]).
/// [`CacheMode::None`] applies to a file or block device: an NBD upstream's cache belongs to
/// its server.
pub fn open_with(spec: &str, writable: bool, cache: CacheMode) -> crate::Result<Device> {
    if crate::nbd::uri::is_uri(spec) {
        if cache == CacheMode::None {
            return Err(crate::Error::Usage(format!(
                "{spec}: --cache none applies to a file or block device; an NBD upstream's cache belongs to its server (use --cache writeback, or set the cache on the upstream)"
            )));
        }
        let uri = crate::nbd::uri::NbdUri::parse(spec).map_err(crate::Error::Usage)?;
        return Ok(Device::Nbd(NbdDevice::open(
            &uri,
            writable,
            DEFAULT_CONNECTIONS,
        )?));
    }
    let dev = Device::File(FileDevice::open_with(Path::new(spec), writable, cache)?);
    if writable {
        dev.claim()?;
    }
    Ok(dev)
}
