//! A regular file or a block device, read and written with positioned I/O on one shared file
//! descriptor (one page cache, so a flush on any connection covers writes from all of them).

use super::{
    AlignedBuf, BlockDevice, Claim, DeviceIdentity, DeviceKind, MediaRead, ReadMode, TrimOutcome,
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
    /// Opens `path` for reading, and for writing when `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice> {
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
        Ok(FileDevice {
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
            // tmpfs accepts O_DIRECT on newer kernels, but there is nothing below its page
            // cache: saying "direct" there would claim a media that does not exist. (A block
            // device's node lives on devtmpfs, which says nothing about the device.)
            let ramfs = nix::sys::statfs::FsType(0x8584_58f6_u32 as _);
            if let (false, Ok(t)) = (
                self.is_block,
                nix::sys::statfs::fstatfs(&self.file).map(|s| s.filesystem_type()),
            ) {
                if t == nix::sys::statfs::TMPFS_MAGIC || t == ramfs {
                    return Media::Cache(
                        "the file is on tmpfs, which keeps it only in memory: the page cache is all there is to read".into(),
                    );
                }
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

    /// Reads with O_DIRECT; an unaligned buffer, offset or length goes through an aligned
    /// bounce buffer. A short read is the end of the device.
    fn read_direct(&self, direct: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let a = DIRECT_ALIGN as u64;
        let aligned = buf.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && offset % a == 0
            && buf.len() % DIRECT_ALIGN == 0;
        if aligned {
            let got = read_full(direct, buf, offset)?;
            if got < buf.len() {
                return Err(short(offset, buf.len()));
            }
            return Ok(());
        }
        let start = offset / a * a;
        let end = (offset + buf.len() as u64).div_ceil(a) * a;
        let mut bounce = AlignedBuf::new((end - start) as usize);
        let bounce = bounce.as_mut_slice();
        let got = read_full(direct, bounce, start)?;
        let from = (offset - start) as usize;
        if got < from + buf.len() {
            return Err(short(offset, buf.len()));
        }
        buf.copy_from_slice(&bounce[from..from + buf.len()]);
        Ok(())
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_zeroes_by_writing(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn short(offset: u64, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("direct read of {len} bytes at offset {offset}: the device ends first"),
    )
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

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn read_media(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.media() {
            Media::Direct(f) => self.read_direct(f, buf, offset),
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

    fn trim_zeroes(&self) -> bool {
        // A hole in a regular file reads back as zeroes. Whether a block device can zero by
        // discarding is known only when it tries, too late to record it first.
        !self.is_block
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        // On a file a hole reads back as zeroes; on a block device the kernel accepts a punch
        // only where it can promise zeroes (a discard that zeroes), and refuses otherwise.
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, punch, offset as i64, len as i64) {
            Ok(()) => Ok(TrimOutcome::Zeroed),
            Err(e) if unsupported(e) => Ok(TrimOutcome::Ignored),
            Err(e) => Err(errno_to_io(e)),
        }
    }

    fn will_need(&self, offset: u64, len: u64) {
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
