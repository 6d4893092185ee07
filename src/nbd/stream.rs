//! A connection or listener on a unix socket or TCP, behind one type.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A client connection.
pub enum Stream {
    /// Unix socket.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
    /// TLS over either (after STARTTLS).
    Tls(std::sync::Arc<super::tls::TlsStream>),
}

impl Stream {
    /// A second handle on the same connection (one reads, the other writes).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Tls(t) => Stream::Tls(t.clone()),
        })
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) {
        // The peer may already be gone; nothing to do about it.
        match self {
            Stream::Unix(s) => drop(s.shutdown(how)),
            Stream::Tcp(s) => drop(s.shutdown(how)),
            Stream::Tls(t) => t.raw().shutdown(how),
        }
    }

    /// Sets (or clears) the read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(x) => x.raw().set_read_timeout(t),
        }
    }

    /// Sets (or clears) the write timeout (shared by every handle on the connection).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Tls(x) => x.raw().set_write_timeout(t),
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
            Stream::Tls(t) => format!("{} (TLS)", t.raw().peer()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(t) => t.read_plain(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(t) => t.write_plain(buf).map(|()| buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(_) => Ok(()),
        }
    }
}

/// A listening socket.
pub enum Listener {
    /// Unix socket at a path (removed when the server stops).
    Unix(UnixListener, PathBuf),
    /// TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds a unix socket with mode 0600. A stale socket file (nobody listening) is replaced;
    /// a live one is refused.
    pub fn unix(path: &Path) -> io::Result<Listener> {
        if path.exists() {
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another server is listening on this socket",
                    ))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
        // Created with mode 0600 from the start: no window in which others could connect.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let r = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let l = r?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener::Unix(l, path.to_path_buf()))
    }

    /// Binds a TCP listener.
    pub fn tcp(addr: &str) -> io::Result<Listener> {
        Ok(Listener::Tcp(TcpListener::bind(addr)?))
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Unix(l, _) => Stream::Unix(l.accept()?.0),
            Listener::Tcp(l) => {
                let s = l.accept()?.0;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }

    /// Where it listens, for messages.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix socket {}", p.display()),
            Listener::Tcp(l) => format!(
                "tcp {}",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            ),
        }
    }

    /// Wakes a thread blocked in `accept` (it returns an error) and stops listening.
    pub fn stop(&self) {
        use std::os::fd::AsFd;
        let fd = match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        };
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// Removes the socket file of a unix listener.
    pub fn cleanup(&self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}
