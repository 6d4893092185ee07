//! A regular file or a block device, read and written with positioned I/O on one shared file
//! descriptor (one page cache, so a flush on any connection covers writes from all of them).

use super::direct::{read_direct, DirectIo};
use super::{
    BlockDevice, CacheMode, Claim, DeviceIdentity, DeviceKind, MediaRead, ReadMode, TrimOutcome,
    DIRECT_ALIGN,
};
use crate::error::{Error, IoContext, Result};
use nix::fcntl::{fallocate, FallocateFlags};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A file-backed device.
pub struct FileDevice {
    path: PathBuf,
    name: String,
    file: File,
    /// The same file opened with O_DSYNC: a write through it is durable when it returns (FUA).
    dsync: Option<File>,
    size: u64,
    is_block: bool,
    identity: DeviceIdentity,
    /// How the media is read, settled on first use by a scan or the scrubber.
    media: std::sync::OnceLock<Media>,
    /// The exclusive claim, once taken.
    claim: std::sync::OnceLock<Claim>,
    /// Bytes that were still cached after a drop, and so read from the cache.
    undropped: AtomicU64,
    /// Whether a drop could not be checked (the file refuses RWF_NOWAIT reads).
    unchecked: AtomicBool,
    /// Under `--cache none`: the data goes through these O_DIRECT descriptors, never the page
    /// cache (`file` stays for what direct I/O does not do: fallocate, fdatasync, the claim).
    direct: Option<DirectIo>,
}

/// Why direct I/O cannot read this file's media although opening it with O_DIRECT may
/// succeed: the kernel reports (statx DIOALIGN, Linux 6.1+) no direct I/O support, which some
/// filesystems then serve from the page cache without a word (ext4 with data=journal, for
/// one), or an alignment beyond the 4096 bytes our buffers have. `None` when it can, or the
/// kernel does not say.
fn dio_refusal(file: &File) -> Option<String> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let st = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if st.stx_mask & StatxFlags::DIOALIGN.bits() == 0 {
        return None;
    }
    match st.stx_dio_offset_align {
        0 => Some("the filesystem does no direct I/O on this file (statx reports no O_DIRECT alignment), so O_DIRECT would read the page cache".into()),
        a if a as usize > DIRECT_ALIGN || st.stx_dio_mem_align as usize > DIRECT_ALIGN => Some(format!(
            "direct I/O here needs {a}-byte alignment, more than the {DIRECT_ALIGN} bytes lostwrite's buffers have"
        )),
        _ => None,
    }
}

/// The way to the media.
enum Media {
    /// The same file opened with O_DIRECT.
    Direct(File),
    /// No direct I/O here (why): drop each range from the page cache, then read it.
    Drop(String),
    /// Nothing but the page cache (tmpfs, or the write-back before dropping failed); why.
    Cache(String),
}

impl FileDevice {
    /// Opens `path` for reading, and for writing when `writable`, through the page cache.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice> {
        Self::open_with(path, writable, CacheMode::Writeback)
    }

    /// Opens `path` with the given use of the host's page cache. [`CacheMode::None`] where
    /// O_DIRECT cannot reach the media (tmpfs, a filesystem that refuses it) is an error
    /// naming the file and why: serving it through the cache would be a silent fallback.
    pub fn open_with(path: &Path, writable: bool, cache: CacheMode) -> Result<FileDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| {
                // EPERM is not about who runs us: root gets it for an immutable file.
                let hint = match (e.kind(), e.raw_os_error()) {
                    (io::ErrorKind::NotFound, _) => " (no such file: check the DEVICE argument)",
                    (_, Some(nix::libc::EPERM)) => {
                        " (not permitted: the file may be immutable or append-only, see lsattr)"
                    }
                    (io::ErrorKind::PermissionDenied, _) => {
                        " (permission denied: run as a user that may open it)"
                    }
                    _ => "",
                };
                Error::io(path, format!("opening device{hint}"), e)
            })?;
        let meta = file.metadata().ctx(path, "stat")?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(Error::Usage(format!(
                "{}: not a regular file or block device",
                path.display()
            )));
        }
        let size = if is_block {
            (&file)
                .seek(SeekFrom::End(0))
                .ctx(path, "reading block device size")?
        } else {
            meta.len()
        };
        let dsync = if writable {
            Some(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_DSYNC)
                    .open(path)
                    .ctx(path, "opening device with O_DSYNC for FUA writes")?,
            )
        } else {
            None
        };
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let identity = DeviceIdentity {
            kind: if is_block {
                DeviceKind::Block
            } else {
                DeviceKind::File
            },
            path: canonical.display().to_string(),
            dev: if is_block { 0 } else { meta.dev() },
            ino: if is_block { 0 } else { meta.ino() },
            rdev: if is_block { meta.rdev() } else { 0 },
        };
        let mut dev = FileDevice {
            name: path.display().to_string(),
            path: path.to_path_buf(),
            file,
            dsync,
            size,
            is_block,
            identity,
            media: std::sync::OnceLock::new(),
            claim: std::sync::OnceLock::new(),
            undropped: AtomicU64::new(0),
            unchecked: AtomicBool::new(false),
            direct: None,
        };
        if cache == CacheMode::None {
            let d = DirectIo::open(path, writable, size, dev.direct_refusal()).map_err(|why| {
                Error::Usage(format!(
                    "{}: --cache none needs direct I/O (O_DIRECT) to the media, and here {why}; serve it with --cache writeback, or keep the image on a filesystem or block device that does direct I/O",
                    path.display()
                ))
            })?;
            dev.direct = Some(d);
        }
        Ok(dev)
    }

    /// The cache mode it was opened with.
    pub fn cache(&self) -> CacheMode {
        match self.direct {
            Some(_) => CacheMode::None,
            None => CacheMode::Writeback,
        }
    }

    /// Why O_DIRECT would not reach the media, when that shows before trying: a file on tmpfs
    /// (which accepts O_DIRECT on newer kernels, but has nothing below its page cache), or what
    /// statx says ([`dio_refusal`]).
    fn direct_refusal(&self) -> Option<String> {
        if self.on_tmpfs() {
            return Some("the file is on tmpfs, which keeps it only in memory: there is no media below the page cache".into());
        }
        dio_refusal(&self.file)
    }

    /// A regular file on tmpfs or ramfs. (A block device's node lives on devtmpfs, which says
    /// nothing about the device.)
    fn on_tmpfs(&self) -> bool {
        let ramfs = nix::sys::statfs::FsType(0x8584_58f6_u32 as _);
        !self.is_block
            && nix::sys::statfs::fstatfs(&self.file).is_ok_and(|s| {
                [nix::sys::statfs::TMPFS_MAGIC, ramfs].contains(&s.filesystem_type())
            })
    }

    /// The identity a ledger records for this device.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Takes the exclusive claim on the device ([`Claim`]), once; held until the device is
    /// dropped. Refused (exit 2) when another process holds it.
    pub fn claim(&self) -> Result<()> {
        if self.claim.get().is_none() {
            let c = Claim::take(&self.path, &self.file, self.is_block)?;
            let _ = self.claim.set(c);
        }
        Ok(())
    }

    fn media(&self) -> &Media {
        self.media.get_or_init(|| {
            if let Some(d) = &self.direct {
                match d.reader() {
                    Ok(f) => return Media::Direct(f),
                    Err(e) => tracing::warn!("{}: a second direct descriptor: {e}", self.name),
                }
            }
            // tmpfs accepts O_DIRECT on newer kernels, but there is nothing below its page
            // cache: saying "direct" there would claim a media that does not exist.
            if self.on_tmpfs() {
                return Media::Cache(
                    "the file is on tmpfs, which keeps it only in memory: the page cache is all there is to read".into(),
                );
            }
            let refused = match dio_refusal(&self.file) {
                Some(why) => why,
                None => match OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_DIRECT)
                    .open(&self.path)
                {
                    Ok(f) => return Media::Direct(f),
                    Err(e) => format!("the filesystem refused O_DIRECT ({e})"),
                },
            };
            // DONTNEED leaves dirty pages in place: write them back first so that the drop can
            // take them (they are then on the media too).
            match self.file.sync_data() {
                // A file that cannot be synced (a read-only filesystem) has nothing to write.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EINVAL) | Some(nix::libc::EROFS)
                    ) =>
                {
                    Media::Drop(refused)
                }
                Ok(()) => {
                    tracing::debug!(
                        "{}: {refused}; dropping each range from the page cache before reading it",
                        self.name
                    );
                    Media::Drop(refused)
                }
                Err(e) => {
                    let why = format!(
                        "{refused}, and writing back dirty pages failed ({e}), so the page cache cannot be dropped"
                    );
                    tracing::warn!("{}: {why}; reading through the page cache", self.name);
                    Media::Cache(why)
                }
            }
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// WRITE_ZEROES through the page cache (fallocate, or writing zeroes).
    fn write_zeroes_cached(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()> {
        let (off, l) = (offset as i64, len as i64);
        match fallocate(&self.file, FallocateFlags::FALLOC_FL_ZERO_RANGE, off, l) {
            Ok(()) => return Ok(()),
            Err(e) if !unsupported(e) => return Err(errno_to_io(e)),
            Err(_) => {}
        }
        if may_trim {
            let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match fallocate(&self.file, punch, off, l) {
                Ok(()) => return Ok(()),
                Err(e) if !unsupported(e) => return Err(errno_to_io(e)),
                Err(_) => {}
            }
        }
        if fast_only {
            return Err(io::Error::from_raw_os_error(nix::libc::ENOTSUP));
        }
        self.write_zeroes_by_writing(offset, len)
    }

    /// TRIM by punching a hole.
    fn trim_cached(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        // On a file a hole reads back as zeroes; on a block device the kernel accepts a punch
        // only where it can promise zeroes (a discard that zeroes), and refuses otherwise.
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, punch, offset as i64, len as i64) {
            Ok(()) => Ok(TrimOutcome::Zeroed),
            Err(e) if unsupported(e) => Ok(TrimOutcome::Ignored),
            Err(e) => Err(errno_to_io(e)),
        }
    }

    /// Under `--cache none`, zeroing or trimming a range: `whole` (fallocate) does the pages it
    /// covers whole, first (so that FAST_ZERO's refusal changes nothing), holding them against
    /// direct writes; the parts of pages at either end are written as zeroes directly. A
    /// filesystem zeroes a partial page through the page cache, which would fill it again.
    fn by_pages(
        &self,
        offset: u64,
        len: u64,
        mut whole: impl FnMut(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let d = self.direct.as_ref().expect("by_pages under --cache none");
        let a = DIRECT_ALIGN as u64;
        let end = offset + len;
        let (lo, hi) = (offset.div_ceil(a) * a, end / a * a);
        if lo >= hi {
            return self.write_zeroes_by_writing(offset, len);
        }
        {
            let _g = d.hold(lo, hi - lo);
            whole(lo, hi - lo)?;
        }
        if offset < lo {
            self.write_zeroes_by_writing(offset, lo - offset)?;
        }
        if hi < end {
            self.write_zeroes_by_writing(hi, end - hi)?;
        }
        Ok(())
    }

    fn write_zeroes_by_writing(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done, false)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn errno_to_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn unsupported(e: nix::errno::Errno) -> bool {
    matches!(
        e,
        nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL
    )
}

impl BlockDevice for FileDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn quick_writes(&self) -> bool {
        // A direct write waits for the media: run it where many can be in flight at once.
        self.direct.is_none()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.direct {
            Some(d) => d.read(buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn read_media(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.media() {
            Media::Direct(f) => read_direct(f, buf, offset),
            Media::Drop(_) => {
                let a = DIRECT_ALIGN as u64;
                let start = offset / a * a;
                let end = (offset + buf.len() as u64).div_ceil(a) * a;
                // Advisory: what it cannot drop is read from the cache (docs/VERIFY.md).
                let _ = nix::fcntl::posix_fadvise(
                    &self.file,
                    start as i64,
                    (end - start) as i64,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
                // What the drop could not take (mapped, dirtied again) is still cached: a
                // RWF_NOWAIT read returns it without I/O, so it is counted, not hidden.
                let mut slices = [io::IoSliceMut::new(buf)];
                let n = match rustix::io::preadv2(
                    &self.file,
                    &mut slices,
                    offset,
                    rustix::io::ReadWriteFlags::NOWAIT,
                ) {
                    Ok(n) => n,
                    Err(e) if e == rustix::io::Errno::AGAIN => 0,
                    Err(_) => {
                        self.unchecked.store(true, Ordering::Relaxed);
                        0
                    }
                };
                self.undropped.fetch_add(n as u64, Ordering::Relaxed);
                if n < buf.len() {
                    self.read_at(&mut buf[n..], offset + n as u64)?;
                }
                Ok(())
            }
            Media::Cache(_) => self.read_at(buf, offset),
        }
    }

    fn media_read(&self) -> MediaRead {
        match self.media() {
            Media::Direct(_) => MediaRead {
                mode: ReadMode::Direct,
                note: None,
            },
            Media::Drop(why) => {
                let undropped = self.undropped.load(Ordering::Relaxed);
                let check = if undropped > 0 {
                    format!("; {undropped} bytes stayed in the page cache after the drop (mapped or dirtied by another process) and were read from it")
                } else if self.unchecked.load(Ordering::Relaxed) {
                    "; whether every page could be dropped cannot be checked on this file".into()
                } else {
                    "; every range was dropped from the page cache before it was read".into()
                };
                MediaRead {
                    mode: ReadMode::CacheDropped,
                    note: Some(format!("{why}{check}")),
                }
            }
            Media::Cache(why) => MediaRead {
                mode: ReadMode::Cached,
                note: Some(why.clone()),
            },
        }
    }

    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        if self.direct.is_some() {
            // Nothing is cached: every read waits for the media.
            return Ok(false);
        }
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        let mut slices = [io::IoSliceMut::new(buf)];
        match rustix::io::preadv2(&self.file, &mut slices, offset, flags) {
            Ok(n) if n == slices[0].len() => Ok(true),
            // Partly cached, or not at all: let a thread that may block do it.
            Ok(_) => Ok(false),
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::OPNOTSUPP => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if let Some(d) = &self.direct {
            return d.write(buf, offset, fua, &self.file, self.dsync.as_ref());
        }
        match (&self.dsync, fua) {
            (Some(d), true) => d.write_all_at(buf, offset),
            _ => self.file.write_all_at(buf, offset),
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()> {
        if self.direct.is_some() {
            return self.by_pages(offset, len, |o, l| {
                self.write_zeroes_cached(o, l, may_trim, fast_only)
            });
        }
        self.write_zeroes_cached(offset, len, may_trim, fast_only)
    }

    fn trim_zeroes(&self) -> bool {
        // A hole in a regular file reads back as zeroes. Whether a block device can zero by
        // discarding is known only when it tries, too late to record it first.
        !self.is_block
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        if self.direct.is_some() {
            let mut outcome = TrimOutcome::Ignored;
            self.by_pages(offset, len, |o, l| {
                outcome = self.trim_cached(o, l)?;
                Ok(())
            })?;
            return Ok(outcome);
        }
        self.trim_cached(offset, len)
    }

    fn will_need(&self, offset: u64, len: u64) {
        if self.direct.is_some() {
            // Reading ahead into the page cache is what `--cache none` is for avoiding.
            return;
        }
        let _ = nix::fcntl::posix_fadvise(
            &self.file,
            offset as i64,
            len as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }

    fn done_with(&self, offset: u64, len: u64) {
        if self.is_block {
            // Advisory: a failure only means the page cache keeps the pages.
            let _ = nix::fcntl::posix_fadvise(
                &self.file,
                offset as i64,
                len as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}
