//! A served connection: a plain socket, or TLS over one once STARTTLS has run. The reader
//! thread and the reply writers each hold a handle on it.

use super::tls::TlsStream;
use crate::nbd::stream::Stream;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::Duration;

/// One client connection as the server sees it.
pub enum Conn {
    /// Unencrypted, on a unix socket or TCP.
    Plain(Stream),
    /// TLS over a plain socket (after STARTTLS).
    Tls(Arc<TlsStream>),
}

impl Conn {
    /// A second handle on the same connection (one reads, the other writes).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Plain(s) => Conn::Plain(s.try_clone()?),
            Conn::Tls(t) => Conn::Tls(t.clone()),
        })
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) {
        match self {
            Conn::Plain(s) => s.shutdown(how),
            Conn::Tls(t) => t.raw().shutdown(how),
        }
    }

    /// Sets (or clears) the read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.set_read_timeout(t),
            Conn::Tls(x) => x.raw().set_read_timeout(t),
        }
    }

    /// Sets (or clears) the write timeout (shared by every handle on the connection).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.set_write_timeout(t),
            Conn::Tls(x) => x.raw().set_write_timeout(t),
        }
    }

    /// Who is on the other end, for logs.
    pub fn peer(&self) -> String {
        match self {
            Conn::Plain(s) => s.peer(),
            Conn::Tls(t) => format!("{} (TLS)", t.raw().peer()),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read_plain(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write_plain(buf).map(|()| buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(_) => Ok(()),
        }
    }
}
