//! A plain connection on a unix socket or TCP, behind one type, and the bounded write both
//! ends of the protocol use. Encryption is a layer above: the server's TLS wraps this type
//! rather than being one of its variants, so this file knows nothing of TLS.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long one blocking write waits before its caller's deadline is looked at again (the
/// socket's write timeout where [`write_all_until`] is used).
pub const WRITE_SLICE: Duration = Duration::from_secs(1);

/// Writes all of `buf` to a socket whose write timeout is a short slice, calling `give_up`
/// (told whether that write moved any bytes) whenever a write leaves something unsent: when it
/// returns a reason, the write fails with it (ErrorKind::TimedOut). So a peer that stops
/// reading holds the writer for a bounded time; the caller decides whether a peer that reads
/// slowly counts as stopped (a total deadline) or not (a deadline reset by progress).
pub fn write_all_until(
    w: &mut impl Write,
    mut buf: &[u8],
    mut give_up: impl FnMut(bool) -> Option<String>,
) -> io::Result<()> {
    while !buf.is_empty() {
        let mut moved = false;
        match w.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                moved = true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
        if !buf.is_empty() {
            if let Some(why) = give_up(moved) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
        }
    }
    Ok(())
}

/// A connection on a unix socket or TCP (no TLS: that wraps it).
pub enum Stream {
    /// Unix socket.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Stream {
    /// A second handle on the same connection (one reads, the other writes).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) {
        // The peer may already be gone; nothing to do about it.
        match self {
            Stream::Unix(s) => drop(s.shutdown(how)),
            Stream::Tcp(s) => drop(s.shutdown(how)),
        }
    }

    /// Sets (or clears) the read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// Sets (or clears) the write timeout (shared by every handle on the connection).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
        }
    }

    /// Who is on the other end, for logs.
    pub fn peer(&self) -> String {
        match self {
            Stream::Unix(_) => "unix socket".into(),
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}
