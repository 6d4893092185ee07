//! The client side of NBD, on the same wire module as the server: fixed-newstyle negotiation
//! with NBD_OPT_GO, then one request at a time with simple replies. Enough for `demo` to drive a
//! sidecar the way a VM's disk would (writes, flushes), without root or external tools.

use super::proto::{self, cflags, cmd, opt, rep, Request};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connected client.
pub struct Client {
    s: UnixStream,
    size: u64,
    flags: u16,
    cookie: u64,
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl Client {
    /// Connects to a unix socket and negotiates `export` with NBD_OPT_GO.
    pub fn connect_unix(socket: &Path, export: &str) -> io::Result<Client> {
        let mut s = UnixStream::connect(socket)?;
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting)?;
        if greeting[0..8] != proto::NBDMAGIC.to_be_bytes()
            || greeting[8..16] != proto::IHAVEOPT.to_be_bytes()
        {
            return Err(bad("not an NBD server (bad greeting)"));
        }
        s.write_all(
            &(proto::client_flags::FIXED_NEWSTYLE | proto::client_flags::NO_ZEROES).to_be_bytes(),
        )?;
        let mut data = (export.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut o = proto::IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&opt::GO.to_be_bytes());
        o.extend_from_slice(&(data.len() as u32).to_be_bytes());
        o.extend_from_slice(&data);
        s.write_all(&o)?;
        let (mut size, mut flags) = (None, 0);
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            if h[0..8] != proto::OPT_REPLY_MAGIC.to_be_bytes() {
                return Err(bad("bad option reply magic"));
            }
            let kind = u32::from_be_bytes(h[12..16].try_into().expect("4"));
            let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
            if len > 1 << 16 {
                return Err(bad("option reply too large"));
            }
            let mut d = vec![0u8; len as usize];
            s.read_exact(&mut d)?;
            match kind {
                rep::INFO
                    if d.len() >= 12 && u16::from_be_bytes([d[0], d[1]]) == proto::info::EXPORT =>
                {
                    size = Some(u64::from_be_bytes(d[2..10].try_into().expect("8")));
                    flags = u16::from_be_bytes([d[10], d[11]]);
                }
                rep::INFO => {}
                rep::ACK => break,
                e => {
                    return Err(bad(format!(
                        "the server refused export {export:?} (reply {e:#x})"
                    )))
                }
            }
        }
        Ok(Client {
            s,
            size: size.ok_or_else(|| bad("no export size in the server's reply"))?,
            flags,
            cookie: 0,
        })
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
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
            Some((e, c)) if c == self.cookie => Err(io::Error::other(format!(
                "{} at offset {offset}: NBD error {e}",
                proto::cmd_name(kind)
            ))),
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
