//! Listening sockets for the server: a unix socket (bound 0600, only a stale socket ever
//! replaced, removed at the end only if it is still the one bound) or TCP. Each accepted
//! connection is a plain [`Stream`]; TLS, if any, is layered on it later by the handshake.

use crate::nbd::stream::Stream;
use std::io;
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A listening socket.
pub enum Listener {
    /// Unix socket at a path, with the device and inode it was bound as: it is removed when
    /// the server stops only if the path still is that very socket.
    Unix(UnixListener, PathBuf, (u64, u64)),
    /// TCP.
    Tcp(TcpListener),
}

/// What is at a path, in words, for a refusal.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "something that is not a socket"
    }
}

impl Listener {
    /// Binds a unix socket with mode 0600. Nothing but a stale socket is ever replaced: the path
    /// must hold nothing, or a socket (by lstat, so never through a symbolic link) whose
    /// connect is refused (ECONNREFUSED). A live socket, a regular file, a directory, a link or
    /// anything else is refused and left alone.
    pub fn unix(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let refuse = |kind: io::ErrorKind, why: String| {
            Err(io::Error::new(
                kind,
                format!(
                    "{why}; give another socket path (--socket PATH, or socket = in the config)"
                ),
            ))
        };
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return refuse(e.kind(), format!("cannot tell what is at this path ({e})")),
            Ok(m) if !m.file_type().is_socket() => {
                return refuse(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is there, and only a stale socket is ever replaced: it is left untouched",
                        kind_of(&m.file_type())
                    ),
                )
            }
            Ok(m) => match UnixStream::connect(path) {
                Ok(_) => {
                    return refuse(
                        io::ErrorKind::AddrInUse,
                        "another server is listening on this socket; stop it first".into(),
                    )
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => {
                    // Stale (nobody listens): removed only if it is still the socket examined.
                    let now = std::fs::symlink_metadata(path)?;
                    if (now.dev(), now.ino()) != (m.dev(), m.ino()) {
                        return refuse(
                            io::ErrorKind::AlreadyExists,
                            "the stale socket here was replaced by something else meanwhile; it is left untouched".into(),
                        );
                    }
                    std::fs::remove_file(path)?;
                }
                Err(e) => {
                    return refuse(
                        e.kind(),
                        format!(
                            "a socket is there and connecting to it failed ({e}), so it is not known to be stale: it is left untouched (remove it yourself if no server uses it)"
                        ),
                    )
                }
            },
        }
        // Created with mode 0600 from the start: no window in which others could connect.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let r = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let l = r?;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Listener::Unix(l, path.to_path_buf(), (m.dev(), m.ino())))
    }

    /// Binds a TCP listener.
    pub fn tcp(addr: &str) -> io::Result<Listener> {
        Ok(Listener::Tcp(TcpListener::bind(addr)?))
    }

    /// Waits for a connection.
    pub fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Unix(l, ..) => Stream::Unix(l.accept()?.0),
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
            Listener::Unix(_, p, _) => format!("unix socket {}", p.display()),
            Listener::Tcp(l) => format!(
                "tcp {}",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            ),
        }
    }

    /// Whether only this host can connect: a unix socket, or TCP on a loopback address.
    pub fn loopback_only(&self) -> bool {
        match self {
            Listener::Unix(..) => true,
            Listener::Tcp(l) => l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
        }
    }

    /// Wakes a thread blocked in `accept` (it returns an error) and stops listening.
    pub fn stop(&self) {
        use std::os::fd::AsFd;
        let fd = match self {
            Listener::Unix(l, ..) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        };
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// Removes the socket file of a unix listener, if the path still is the socket bound
    /// (same device and inode): whatever replaced it meanwhile is left alone.
    pub fn cleanup(&self) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if let Listener::Unix(_, p, id) = self {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_socket() && (m.dev(), m.ino()) == *id => {
                    let _ = std::fs::remove_file(p);
                }
                Ok(_) => tracing::warn!(
                    "{}: no longer the socket this server bound (replaced meanwhile); left in place",
                    p.display()
                ),
                Err(_) => {}
            }
        }
    }
}
