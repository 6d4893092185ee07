//! An NBD export as the device: what qemu-nbd or nbdkit make of a qcow2 or vmdk image, an RBD
//! volume, or another host's disk. Requests go over a few pipelined connections
//! ([`crate::nbd::client::Connection`]); FLUSH and FUA are passed through, so "durable" means
//! what the upstream server says it means.

use super::{BlockDevice, DeviceIdentity, DeviceKind, TrimOutcome};
use crate::error::{Error, Result};
use crate::nbd::client::{Connection, ExportInfo, InFlight};
use crate::nbd::proto::{cflags, cmd, tflags};
use crate::nbd::uri::NbdUri;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Connections opened to an upstream that allows several (or when only reading).
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Largest TRIM or WRITE_ZEROES sent as one request.
const MAX_RANGE: u64 = 1 << 30;

/// An NBD export used as a device.
pub struct NbdDevice {
    name: String,
    conns: Vec<Connection>,
    next: AtomicUsize,
    info: ExportInfo,
    identity: DeviceIdentity,
}

impl NbdDevice {
    /// Connects to the export `uri` names. Writable use needs an export that is not read-only
    /// and supports FLUSH (without it nothing written could be called durable). Several
    /// connections are opened only when the server says they share one cache
    /// (NBD_FLAG_CAN_MULTI_CONN) or nothing will be written: otherwise a FLUSH on one
    /// connection need not cover writes made on another.
    pub fn open(uri: &NbdUri, writable: bool, connections: usize) -> Result<NbdDevice> {
        let name = uri.to_string();
        let refused = |detail: String| Error::Usage(format!("{name}: {detail}"));
        let first = Connection::open(uri).map_err(|e| Error::io(&name, "connecting", e))?;
        let info = *first.info();
        if writable && info.has(tflags::READ_ONLY) {
            return Err(refused(
                "the server exports it read-only; serve it with --read-only, or export it writable"
                    .into(),
            ));
        }
        if writable && !info.has(tflags::SEND_FLUSH) {
            return Err(refused(
                "the server does not support FLUSH, so no write through it could be made durable; lostwrite needs an upstream that flushes".into(),
            ));
        }
        let n = if info.has(tflags::CAN_MULTI_CONN) || !writable {
            connections.max(1)
        } else {
            1
        };
        let mut conns = vec![first];
        for _ in 1..n {
            let c = Connection::open(uri)
                .map_err(|e| Error::io(&name, "opening another connection", e))?;
            if (c.info().size, c.info().flags) != (info.size, info.flags) {
                return Err(refused(
                    "a second connection saw a different size or flags; the export changed while connecting".into(),
                ));
            }
            conns.push(c);
        }
        tracing::info!(
            "upstream {name}: {} bytes, flags {:#x}, block sizes min {} preferred {} max {}, {} connection(s)",
            info.size,
            info.flags,
            info.min_block,
            info.preferred_block,
            info.max_payload,
            conns.len()
        );
        Ok(NbdDevice {
            identity: DeviceIdentity {
                kind: DeviceKind::Nbd,
                path: name.clone(),
                dev: 0,
                ino: 0,
                rdev: 0,
            },
            name,
            conns,
            next: AtomicUsize::new(0),
            info,
        })
    }

    /// What the ledger records to recognise this device: the normalised URI.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Connections in use.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn pick(&self) -> &Connection {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
    }

    fn check_aligned(&self, what: &str, offset: u64, len: u64) -> io::Result<()> {
        let m = self.info.min_block as u64;
        if offset % m != 0 || len % m != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} of {len} bytes at offset {offset}: the upstream export takes only multiples of {m} bytes"
                ),
            ));
        }
        Ok(())
    }

    /// Sends pieces of at most `piece` bytes, all in flight at once, spread over the
    /// connections; then waits for every reply (all of them, even after an error).
    fn pieces(
        &self,
        (kind, flags): (u16, u16),
        offset: u64,
        len: u64,
        piece: u64,
        payload: Option<&[u8]>,
        mut got: impl FnMut(u64, Vec<u8>),
    ) -> io::Result<()> {
        let mut sent: Vec<(u64, &Connection, io::Result<InFlight>)> = Vec::new();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(piece);
            let c = self.pick();
            let data = payload.map_or(&[][..], |p| &p[at as usize..(at + n) as usize]);
            sent.push((at, c, c.start(kind, flags, offset + at, n as u32, data)));
            at += n;
        }
        let mut first_err = None;
        for (at, c, f) in sent {
            match f.and_then(|f| c.wait(f)) {
                Ok(data) => got(at, data),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn flush_all(&self) -> io::Result<()> {
        if !self.info.has(tflags::SEND_FLUSH) {
            return Ok(());
        }
        let sent: Vec<_> = self
            .conns
            .iter()
            .map(|c| (c, c.start(cmd::FLUSH, 0, 0, 0, &[])))
            .collect();
        let mut first_err = None;
        for (c, f) in sent {
            if let Err(e) = f.and_then(|f| c.wait(f)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// ENOTSUP with its raw errno, which is what the service looks for (as from fallocate).
fn unsupported() -> io::Error {
    io::Error::from_raw_os_error(nix::libc::ENOTSUP)
}

impl BlockDevice for NbdDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.info.size
    }

    fn min_io(&self) -> u32 {
        self.info.min_block
    }

    fn quick_writes(&self) -> bool {
        false
    }

    fn failure(&self) -> Option<String> {
        self.conns.iter().find_map(|c| c.failure())
    }

    fn can_fast_zero(&self) -> Option<bool> {
        Some(self.info.has(tflags::SEND_WRITE_ZEROES) && self.info.has(tflags::SEND_FAST_ZERO))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let m = self.info.min_block as u64;
        let (start, end) = (offset / m * m, (offset + buf.len() as u64).div_ceil(m) * m);
        if (start, end) != (offset, offset + buf.len() as u64) {
            // Reads may widen to the server's minimum block; writes may not.
            let mut wide = vec![0u8; (end - start) as usize];
            self.read_at(&mut wide, start)?;
            let skip = (offset - start) as usize;
            buf.copy_from_slice(&wide[skip..skip + buf.len()]);
            return Ok(());
        }
        let len = buf.len() as u64;
        self.pieces(
            (cmd::READ, 0),
            offset,
            len,
            self.info.max_payload as u64,
            None,
            |at, data| buf[at as usize..at as usize + data.len()].copy_from_slice(&data),
        )
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.check_aligned("write", offset, buf.len() as u64)?;
        let native_fua = fua && self.info.has(tflags::SEND_FUA);
        let flags = if native_fua { cflags::FUA } else { 0 };
        self.pieces(
            (cmd::WRITE, flags),
            offset,
            buf.len() as u64,
            self.info.max_payload as u64,
            Some(buf),
            |_, _| {},
        )?;
        if fua && !native_fua {
            self.flush_all()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flush_all()
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast_only: bool,
    ) -> io::Result<()> {
        self.check_aligned("write zeroes", offset, len)?;
        let piece = MAX_RANGE / self.info.min_block as u64 * self.info.min_block as u64;
        if self.info.has(tflags::SEND_WRITE_ZEROES) {
            if fast_only && !self.info.has(tflags::SEND_FAST_ZERO) {
                return Err(unsupported());
            }
            let mut flags = if may_trim { 0 } else { cflags::NO_HOLE };
            if fast_only {
                flags |= cflags::FAST_ZERO;
            }
            return self.pieces(
                (cmd::WRITE_ZEROES, flags),
                offset,
                len,
                piece,
                None,
                |_, _| {},
            );
        }
        if fast_only {
            return Err(unsupported());
        }
        let step = (self.info.max_payload as u64).min(len).max(1);
        let zeroes = vec![0u8; step as usize];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(step);
            self.write_at(&zeroes[..n as usize], offset + at, false)?;
            at += n;
        }
        Ok(())
    }

    fn trim_zeroes(&self) -> bool {
        // The NBD spec leaves trimmed contents undefined; nothing is promised.
        false
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<TrimOutcome> {
        if !self.info.has(tflags::SEND_TRIM) {
            return Ok(TrimOutcome::Ignored);
        }
        let m = self.info.min_block as u64;
        // Trims are advisory: shrink to the server's blocks rather than refuse.
        let (start, end) = (offset.div_ceil(m) * m, (offset + len) / m * m);
        if end <= start {
            return Ok(TrimOutcome::Ignored);
        }
        let piece = MAX_RANGE / m * m;
        self.pieces((cmd::TRIM, 0), start, end - start, piece, None, |_, _| {})?;
        Ok(TrimOutcome::Discarded)
    }
}
