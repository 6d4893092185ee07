//! A regular file or a block device, read and written with positioned I/O on one shared file
//! descriptor (one page cache, so a flush on any connection covers writes from all of them).

use super::{BlockDevice, DeviceIdentity, TrimOutcome};
use crate::error::{Error, IoContext, Result};
use nix::fcntl::{fallocate, FallocateFlags};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
    /// The same file opened with O_DIRECT, on first use by the scrubber (`None` where the
    /// filesystem refuses O_DIRECT, tmpfs for one).
    direct: std::sync::OnceLock<Option<File>>,
}

/// Alignment O_DIRECT buffers, offsets and lengths get (covers 512- and 4096-byte sectors).
const DIRECT_ALIGN: usize = 4096;

impl FileDevice {
    /// Opens `path` for reading, and for writing when `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| {
                let hint = match e.kind() {
                    io::ErrorKind::NotFound => " (no such file: check the DEVICE argument)",
                    io::ErrorKind::PermissionDenied => {
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
            kind: if is_block { "block" } else { "file" }.into(),
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
            direct: std::sync::OnceLock::new(),
        })
    }

    /// The identity a ledger records for this device.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
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
        let direct = self.direct.get_or_init(|| {
            match OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECT)
                .open(&self.path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(
                        "{}: O_DIRECT refused ({e}); the scrubber reads through the page cache",
                        self.name
                    );
                    None
                }
            }
        });
        let Some(direct) = direct else {
            return self.read_at(buf, offset);
        };
        // Aligned start, length and buffer (a Vec over-allocated and sliced at an aligned
        // address: no unsafe needed); a short read is the end of the device.
        let a = DIRECT_ALIGN as u64;
        let start = offset / a * a;
        let end = (offset + buf.len() as u64).div_ceil(a) * a;
        let len = (end - start) as usize;
        let mut raw = vec![0u8; len + DIRECT_ALIGN];
        let skip = raw.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut raw[skip..skip + len];
        let mut got = 0;
        while got < len {
            match direct.read_at(&mut aligned[got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let from = (offset - start) as usize;
        if got < from + buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("direct read at offset {offset}: the device ends first"),
            ));
        }
        buf.copy_from_slice(&aligned[from..from + buf.len()]);
        Ok(())
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
