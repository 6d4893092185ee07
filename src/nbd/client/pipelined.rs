//! The pipelined client, [`Connection`]: any number of threads send requests at once
//! ([`Connection::start`]) and each waits for its own reply ([`Connection::wait`]), which one
//! reader thread (`read_replies`) hands over by cookie. It owns what the threads share
//! (`Shared`: the requests waiting, the writer, the liveness of the server) and how a
//! connection dies: once, failing every request still waiting (`Shared::die`, `lost`).

use super::deadline::{allowance, bound, epoch, reason, reason_after, timeout};
use super::negotiate::{dial, nbd_error, negotiate, ExportInfo};
use crate::nbd::proto::{self, cmd, Request};
use crate::nbd::stream::{write_all_until, Stream, WRITE_SLICE};
use crate::nbd::uri::NbdUri;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a waiting request gets: the READ payload (empty for other commands), or the error.
type Reply = io::Result<Vec<u8>>;

struct Waiter {
    kind: u16,
    offset: u64,
    read_len: u32,
    tx: Sender<Reply>,
}

#[derive(Default)]
struct Pending {
    next_cookie: u64,
    waiting: HashMap<u64, Waiter>,
    /// Why the connection is unusable; set once, never cleared.
    dead: Option<String>,
}

struct Shared {
    pending: Mutex<Pending>,
    writer: Mutex<Stream>,
    /// Another handle on the socket, to shut it down without waiting for a stuck writer.
    killer: Stream,
    name: String,
    /// Set when this side hangs up, so the reader's end is not logged as a failure.
    closing: AtomicBool,
    /// When the last reply arrived (milliseconds after `epoch()`): a server that answers is
    /// alive, however long one request of it takes.
    last_reply_ms: AtomicU64,
}

impl Shared {
    fn heard(&self) {
        self.last_reply_ms
            .store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_reply(&self) -> Instant {
        epoch() + Duration::from_millis(self.last_reply_ms.load(Ordering::Relaxed))
    }
}

impl Shared {
    /// Marks the connection dead and fails every request still waiting.
    fn die(&self, why: String) {
        let waiting = {
            let mut p = lock(&self.pending);
            if p.dead.is_none() {
                if !self.closing.load(Ordering::Relaxed) {
                    tracing::error!("NBD connection to {}: {why}", self.name);
                }
                p.dead = Some(why);
            }
            std::mem::take(&mut p.waiting)
        };
        let why = lock(&self.pending).dead.clone().unwrap_or_default();
        for (_, w) in waiting {
            let _ = w.tx.send(Err(lost(&self.name, &why, w.kind, w.offset)));
        }
        self.killer.shutdown(Shutdown::Both);
    }
}

fn lost(name: &str, why: &str, kind: u16, offset: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!(
            "{} at offset {offset}: the connection to {name} is lost ({why}); its outcome is unknown",
            proto::cmd_name(kind)
        ),
    )
}

/// A pipelined connection: requests from many threads in flight at once.
pub struct Connection {
    shared: Arc<Shared>,
    info: ExportInfo,
    reader: Option<JoinHandle<()>>,
}

/// A request sent and not yet answered; [`Connection::wait`] collects it.
pub struct InFlight {
    rx: Receiver<Reply>,
    kind: u16,
}

impl Connection {
    /// Connects to the server a URI names and negotiates its export.
    pub fn open(uri: &NbdUri) -> io::Result<Connection> {
        let mut s = dial(uri)?;
        let info = negotiate(&mut s, &uri.export)?;
        // A server that stops reading must not hold a writer (and everything behind it)
        // forever: past the upstream timeout the write fails, and the connection with it.
        s.set_write_timeout(Some(WRITE_SLICE))?;
        let reader = s.try_clone()?;
        let killer = s.try_clone()?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            killer,
            writer: Mutex::new(s),
            name: uri.to_string(),
            closing: AtomicBool::new(false),
            last_reply_ms: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let reader = std::thread::Builder::new()
            .name("nbd-client-reader".into())
            .spawn(move || read_replies(reader, &sh))?;
        Ok(Connection {
            shared,
            info,
            reader: Some(reader),
        })
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// Sends a request (with its payload for WRITE) and returns at once.
    pub fn start(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<InFlight> {
        let (tx, rx) = bounded(1);
        let cookie = {
            let mut p = lock(&self.shared.pending);
            if let Some(why) = &p.dead {
                return Err(lost(&self.shared.name, why, kind, offset));
            }
            p.next_cookie += 1;
            let c = p.next_cookie;
            let read_len = if kind == cmd::READ { length } else { 0 };
            // Registered before the request is sent: the reply may come back at once.
            p.waiting.insert(
                c,
                Waiter {
                    kind,
                    offset,
                    read_len,
                    tx,
                },
            );
            c
        };
        let header = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        }
        .encode();
        let sent = {
            let mut w = lock(&self.shared.writer);
            // Past the timeout without a byte taken: a server that reads slowly is not stuck.
            let mut own = Instant::now() + timeout();
            let mut late = |moved: bool| {
                if moved {
                    own = Instant::now() + timeout();
                }
                let (until, stopping) = bound(own);
                (Instant::now() >= until).then(|| reason(stopping))
            };
            if payload.len() <= 64 << 10 {
                // One write for header and a small payload: one syscall, one segment.
                let mut b = Vec::with_capacity(header.len() + payload.len());
                b.extend_from_slice(&header);
                b.extend_from_slice(payload);
                write_all_until(&mut *w, &b, &mut late)
            } else {
                write_all_until(&mut *w, &header, &mut late)
                    .and_then(|()| write_all_until(&mut *w, payload, &mut late))
            }
        };
        if let Err(e) = sent {
            // A partial request leaves the stream unusable: fail everything, this one too.
            self.shared.die(format!("sending a request failed: {e}"));
        }
        Ok(InFlight { rx, kind })
    }

    /// Waits for a request's reply: the READ payload, or empty. Past the upstream timeout (or
    /// the stop deadline) the connection is declared dead, failing this request and every other
    /// one waiting on it: their outcome is unknown.
    pub fn wait(&self, f: InFlight) -> Reply {
        let closed = || {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the connection to {} closed", self.shared.name),
            ))
        };
        let started = Instant::now();
        let allowed = allowance(f.kind);
        loop {
            // In slices: a stop begun meanwhile may bring the deadline forward, and a reply to
            // another request pushes it back (the server is alive, only busy).
            let own = started.max(self.shared.last_reply()) + allowed;
            let (until, stopping) = bound(own);
            match f.rx.recv_deadline(until.min(Instant::now() + WRITE_SLICE)) {
                Ok(r) => return r,
                Err(RecvTimeoutError::Disconnected) => return closed(),
                Err(RecvTimeoutError::Timeout) if Instant::now() >= until => {
                    let why = reason_after(stopping, allowed);
                    self.shared.die(format!("waiting for a reply: {why}"));
                    return f.rx.recv().unwrap_or_else(|_| closed());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Sends a request and waits for its reply.
    pub fn call(&self, kind: u16, flags: u16, offset: u64, length: u32, payload: &[u8]) -> Reply {
        let f = self.start(kind, flags, offset, length, payload)?;
        self.wait(f)
    }

    /// Why the connection is unusable, if it is.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.pending).dead.clone()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let disc = Request {
            flags: 0,
            kind: cmd::DISC,
            cookie: u64::MAX,
            offset: 0,
            length: 0,
        }
        .encode();
        self.shared.closing.store(true, Ordering::Relaxed);
        // A polite goodbye unless a writer is stuck; the server may already be gone.
        if let Ok(mut w) = self.shared.writer.try_lock() {
            let _ = w.write_all(&disc);
        }
        self.shared.killer.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The reader thread: hands each reply to the request it answers until the connection ends.
fn read_replies(mut s: Stream, sh: &Shared) {
    let why = loop {
        let mut h = [0u8; proto::SIMPLE_REPLY_LEN];
        if let Err(e) = s.read_exact(&mut h) {
            break if e.kind() == io::ErrorKind::UnexpectedEof {
                "the server closed the connection".to_string()
            } else {
                format!("reading a reply: {e}")
            };
        }
        sh.heard();
        let Some((error, cookie)) = proto::parse_simple_reply(&h) else {
            break "the server sent a reply with a bad magic (or a structured reply, which was not negotiated)".into();
        };
        let Some(w) = lock(&sh.pending).waiting.remove(&cookie) else {
            break format!("the server replied to cookie {cookie}, which no request carries");
        };
        let reply = if error != 0 {
            // Simple replies carry no payload after an error.
            Err(nbd_error(w.kind, w.offset, error))
        } else {
            let mut data = vec![0u8; w.read_len as usize];
            if let Err(e) = s.read_exact(&mut data) {
                let _ =
                    w.tx.send(Err(lost(&sh.name, "short read payload", w.kind, w.offset)));
                break format!("reading a {}-byte read payload: {e}", w.read_len);
            }
            Ok(data)
        };
        let _ = w.tx.send(reply);
    };
    sh.die(why);
}
