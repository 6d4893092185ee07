//! The client side of NBD, on the same wire module as the server: fixed-newstyle negotiation
//! with NBD_OPT_GO (asking for the export's block-size constraints), then either
//!
//! * [`Client`]: one request at a time, for `demo` and tests that drive a sidecar the way a VM's
//!   disk would, or
//! * [`Connection`]: pipelined. Any number of threads issue requests at once; each waits for its
//!   own reply, which a reader thread hands over by cookie. This is what an NBD export used as
//!   a device runs on ([`crate::device::NbdDevice`]).
//!
//! Replies are simple replies: structured replies are never negotiated, so a server may not
//! send them (one that does is a protocol error that ends the connection).
//!
//! Each file has one job: `deadline.rs` the upstream timeouts and every wait they bound,
//! `negotiate.rs` dialling and the handshake ([`ExportInfo`]), `pipelined.rs` the
//! [`Connection`] and its reader thread, and this one the one-request-at-a-time [`Client`].

mod deadline;
mod negotiate;
mod pipelined;

pub use deadline::{abort_connecting, set_timeout, stop_by, timeout, DEFAULT_TIMEOUT};
pub use negotiate::{dial, negotiate, ExportInfo, DEFAULT_MAX_PAYLOAD};
pub use pipelined::{Connection, InFlight};

use super::proto::{self, cflags, cmd, Request};
use super::stream::Stream;
use super::uri::NbdUri;
use negotiate::{bad, nbd_error};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connected client running one request at a time.
pub struct Client {
    s: Stream,
    info: ExportInfo,
    cookie: u64,
}

impl Client {
    /// Connects to a unix socket and negotiates `export`.
    pub fn connect_unix(socket: &Path, export: &str) -> io::Result<Client> {
        Self::start(Stream::Unix(UnixStream::connect(socket)?), export)
    }

    /// Connects to the server a URI names and negotiates its export.
    pub fn connect(uri: &NbdUri) -> io::Result<Client> {
        Self::start(dial(uri)?, &uri.export)
    }

    fn start(mut s: Stream, export: &str) -> io::Result<Client> {
        let info = negotiate(&mut s, export)?;
        // One request at a time: each read and write gets the whole upstream timeout.
        s.set_read_timeout(Some(timeout()))?;
        s.set_write_timeout(Some(timeout()))?;
        Ok(Client { s, info, cookie: 0 })
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Transmission flags.
    pub fn flags(&self) -> u16 {
        self.info.flags
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        self.cookie += 1;
        let r = Request {
            flags,
            kind,
            cookie: self.cookie,
            offset,
            length,
        };
        self.s.write_all(&r.encode())?;
        self.s.write_all(payload)?;
        let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h)?;
        match proto::parse_simple_reply(&h) {
            Some((0, c)) if c == self.cookie => Ok(()),
            Some((e, c)) if c == self.cookie => Err(nbd_error(kind, offset, e)),
            _ => Err(bad("reply does not match the request")),
        }
    }

    /// Writes `data` at `offset` (with FUA when `fua`).
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let f = if fua { cflags::FUA } else { 0 };
        self.request(cmd::WRITE, f, offset, data.len() as u32, data)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.request(cmd::READ, 0, offset, buf.len() as u32, &[])?;
        self.s.read_exact(buf)
    }

    /// FLUSH.
    pub fn flush(&mut self) -> io::Result<()> {
        self.request(cmd::FLUSH, 0, 0, 0, &[])
    }

    /// DISC, then close.
    pub fn disconnect(mut self) -> io::Result<()> {
        self.cookie += 1;
        let r = Request {
            flags: 0,
            kind: cmd::DISC,
            cookie: self.cookie,
            offset: 0,
            length: 0,
        };
        self.s.write_all(&r.encode())
    }
}
