//! The server: listeners, a thread per connection that negotiates and then reads requests, and a
//! shared pool of workers that execute them and write the replies (out of order, under the
//! connection's writer lock). Reading a request never waits for an earlier one to finish, so
//! clients can keep many requests in flight on each connection and open several connections.
//!
//! Why threads and channels rather than an async runtime: every operation ends in a blocking
//! pread/pwrite/fdatasync on a file; an async runtime would hand those to a thread pool anyway.
//! A connection thread costs one mostly idle stack; the workers are where the I/O waits.
//!
//! Shutdown (SIGTERM/SIGINT via [`Server::shutdown`]): listeners stop, every connection stops
//! reading, requests already read are executed and answered, and then the caller closes the
//! exports (device and ledger synced, session closed). A client that has not taken its replies
//! [`SHUTDOWN_GRACE`] after the stop began is disconnected, so no client can hold a shutdown.

pub mod buffers;
pub mod conn;
pub mod handshake;
pub mod listener;
pub mod tls;

use crate::nbd::errno;
use crate::nbd::proto::{self, cflags, cmd, Request};
use crate::nbd::stream::{write_all_until, WRITE_SLICE};
use crate::service::{Export, OpError};
use buffers::{Buf, Buffers};
use conn::Conn;
use crossbeam_channel::{Receiver, Sender};
use handshake::{Exports, Outcome, MAX_PAYLOAD};
use listener::Listener;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads executing requests.
    pub workers: usize,
    /// Connections served at once; more are closed at once (and logged).
    pub max_connections: usize,
    /// Requests in flight per connection before the reader waits.
    pub max_inflight: usize,
    /// A client must finish negotiating within this time.
    pub handshake_timeout: Duration,
    /// With a TLS configuration, clients must STARTTLS before anything else.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: (4 * crate::scan::default_jobs()).max(8),
            max_connections: 1024,
            max_inflight: 256,
            handshake_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Largest WRITE payload that is read and discarded (answered EINVAL) rather than ending the
/// connection.
const MAX_DRAIN: u32 = 64 << 20;

/// How long a reply may wait for a client that does not read; then the connection is dropped.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long after a stop begins clients may take to receive their last replies; then the
/// connections still open are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Largest WRITE executed on the connection's own thread; larger ones go to the workers so
/// that receiving the next request overlaps with copying this one into the page cache.
const INLINE_WRITE: u32 = 64 << 10;

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    exports: Exports,
    config: Config,
    stopping: AtomicBool,
    conns: Mutex<HashMap<u64, Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicUsize,
    next_id: AtomicU64,
    jobs: Mutex<Option<Sender<Job>>>,
    buffers: Arc<Buffers>,
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Arc<Listener>>,
    acceptors: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts serving `exports` on `listeners`.
    pub fn start(exports: Vec<Arc<Export>>, listeners: Vec<Listener>, config: Config) -> Server {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::unbounded();
        let workers = (0..config.workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("nbd-worker-{i}"))
                    .spawn(move || {
                        for job in rx {
                            job();
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        let shared = Arc::new(Shared {
            exports: Exports(exports),
            config,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            jobs: Mutex::new(Some(tx)),
            buffers: Arc::new(Buffers::default()),
        });
        let listeners: Vec<Arc<Listener>> = listeners.into_iter().map(Arc::new).collect();
        let acceptors = listeners
            .iter()
            .map(|l| {
                let (l, shared) = (l.clone(), shared.clone());
                std::thread::Builder::new()
                    .name("nbd-accept".into())
                    .spawn(move || accept_loop(&l, &shared))
                    .expect("spawning the accept thread")
            })
            .collect();
        Server {
            shared,
            listeners,
            acceptors,
            workers,
        }
    }

    /// Stops accepting, stops reading requests, answers those already read, and waits for
    /// every connection and worker to finish. Returns the exports (for closing).
    pub fn shutdown(self) -> Vec<Arc<Export>> {
        let shared = self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        for l in &self.listeners {
            l.stop();
        }
        for a in self.acceptors {
            let _ = a.join();
        }
        for l in &self.listeners {
            l.cleanup();
        }
        for s in lock(&shared.conns).values() {
            s.shutdown(Shutdown::Read);
        }
        // Replies still unread after the grace period are abandoned: the connection is cut,
        // which ends every write blocked on it at once.
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        let sh = shared.clone();
        let cutter = std::thread::Builder::new()
            .name("nbd-stop".into())
            .spawn(move || {
                if finished.recv_timeout(SHUTDOWN_GRACE).is_err_and(|e| e.is_timeout()) {
                    for (id, s) in lock(&sh.conns).iter() {
                        tracing::warn!(
                            "connection {id}: its client has not taken its replies {} s into the stop; disconnecting it",
                            SHUTDOWN_GRACE.as_secs()
                        );
                        s.shutdown(Shutdown::Both);
                    }
                }
            });
        loop {
            let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&shared.threads));
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.join();
            }
        }
        drop(done);
        if let Ok(c) = cutter {
            let _ = c.join();
        }
        drop(lock(&shared.jobs).take());
        for w in self.workers {
            let _ = w.join();
        }
        shared.exports.0.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(l: &Listener, shared: &Arc<Shared>) {
    loop {
        let s = match l.accept() {
            Ok(s) => s,
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!("accept on {}: {e}", l.describe());
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if shared.active.load(Ordering::SeqCst) >= shared.config.max_connections {
            tracing::warn!(
                "refusing a connection from {}: already serving {} (the limit)",
                s.peer(),
                shared.config.max_connections
            );
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                // Whatever happens in the connection, its bookkeeping is undone.
                let run = std::panic::AssertUnwindSafe(|| connection(Conn::Plain(s), id, &sh));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "connection {id}: a bug ended this connection (panic); the service goes on"
                    );
                }
                lock(&sh.conns).remove(&id);
                sh.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => {
                let mut threads = lock(&shared.threads);
                threads.retain(|t| !t.is_finished());
                threads.push(h);
            }
            Err(e) => {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                tracing::error!("cannot start a connection thread: {e}");
            }
        }
    }
}

fn connection(mut s: Conn, id: u64, shared: &Arc<Shared>) {
    let peer = s.peer();
    if let Ok(c) = s.try_clone() {
        lock(&shared.conns).insert(id, c);
    }
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let _ = s.set_read_timeout(Some(shared.config.handshake_timeout));
    let stopping = || shared.stopping.load(Ordering::SeqCst);
    let no_zeroes = match handshake::greet(&mut s) {
        Ok(Ok(z)) => z,
        Ok(Err(why)) => {
            return tracing::info!("connection {id} from {peer} ended during negotiation: {why}")
        }
        Err(e) => {
            return tracing::info!("connection {id} from {peer} failed during negotiation: {e}")
        }
    };
    let mut tls = handshake::TlsState {
        required: shared.config.tls.is_some(),
        active: false,
    };
    let outcome = loop {
        match handshake::options(&mut s, &shared.exports, no_zeroes, tls, &stopping) {
            Ok(Outcome::StartTls) => {
                let Some(config) = shared.config.tls.clone() else {
                    return tracing::error!("connection {id}: STARTTLS accepted without TLS");
                };
                let raw = match s {
                    Conn::Plain(raw) => raw,
                    Conn::Tls(_) => {
                        return tracing::error!(
                            "connection {id}: STARTTLS on an encrypted connection"
                        )
                    }
                };
                match tls::TlsStream::accept(raw, config) {
                    Ok(t) => {
                        s = Conn::Tls(t);
                        tls.active = true;
                    }
                    Err(e) => {
                        return tracing::info!(
                            "connection {id} from {peer}: TLS handshake failed: {e}"
                        )
                    }
                }
            }
            other => break other,
        }
    };
    match outcome {
        Ok(Outcome::StartTls) => {}
        Ok(Outcome::Transmission(export)) => {
            let _ = s.set_read_timeout(None);
            // A client that stops reading its replies must not hold a worker (or shutdown)
            // forever: writes wake every slice to look at the reply's deadline. (TLS cannot
            // resume a timed-out write, so there the socket's own timeout is the deadline.)
            let slice = match s {
                Conn::Tls(_) => REPLY_TIMEOUT,
                _ => WRITE_SLICE,
            };
            let _ = s.set_write_timeout(Some(slice));
            tracing::info!(
                "connection {id} from {peer}: serving export {:?}",
                export.name()
            );
            let _client = ClientCount::new(&export);
            let requests = transmission(s, export, shared, id);
            tracing::info!("connection {id} closed after {requests} requests");
        }
        Ok(Outcome::Closed(why)) => {
            tracing::info!("connection {id} from {peer} ended during negotiation: {why}")
        }
        Err(e) => tracing::info!("connection {id} from {peer} failed during negotiation: {e}"),
    }
}

/// Counts a connection in transmission on its export until dropped (even by a panic).
struct ClientCount(Arc<Export>);

impl ClientCount {
    fn new(e: &Arc<Export>) -> ClientCount {
        e.counters.clients.fetch_add(1, Ordering::Relaxed);
        ClientCount(e.clone())
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.counters.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The reply side of a connection, shared by the workers.
struct Replies {
    stream: Mutex<Conn>,
    dead: AtomicBool,
}

impl Replies {
    fn send(&self, bytes: &[u8]) {
        if self.dead.load(Ordering::Relaxed) {
            return;
        }
        let mut s = lock(&self.stream);
        let sent = match &*s {
            Conn::Tls(_) => s.write_all(bytes),
            _ => {
                let until = Instant::now() + REPLY_TIMEOUT;
                write_all_until(&mut *s, bytes, |_| {
                    (Instant::now() >= until).then(|| {
                        format!("the client took no reply for {} s", REPLY_TIMEOUT.as_secs())
                    })
                })
            }
        };
        if let Err(e) = sent {
            tracing::info!("client gone while replying: {e}");
            self.dead.store(true, Ordering::Relaxed);
            s.shutdown(Shutdown::Both);
        }
    }

    fn error(&self, cookie: u64, code: u32) {
        let mut b = [0u8; proto::SIMPLE_REPLY_LEN];
        proto::simple_reply(&mut b, code, cookie);
        self.send(&b);
    }
}

/// One request's place in its connection's in-flight count, given back when dropped (also
/// when the request's job panics or is never run).
struct Slot(Arc<Inflight>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Requests of one connection that are read but not yet answered.
#[derive(Default)]
struct Inflight {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Inflight {
    fn acquire(&self, max: usize) {
        let mut n = lock(&self.n);
        while *n >= max {
            n = self.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
    }
    fn release(&self) {
        *lock(&self.n) -= 1;
        self.cv.notify_all();
    }
    fn drain(&self) {
        let mut n = lock(&self.n);
        while *n > 0 {
            n = self.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Checks a request before it is queued: the command and its flags. Range and read-only
/// checks belong to the export.
pub fn validate(r: &Request) -> Result<(), OpError> {
    let allowed = match r.kind {
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::CACHE => cflags::FUA,
        cmd::WRITE_ZEROES => cflags::FUA | cflags::NO_HOLE | cflags::FAST_ZERO,
        k => {
            return Err(OpError {
                errno: errno::EINVAL,
                why: format!("unsupported command {} ({k})", proto::cmd_name(k)),
            })
        }
    };
    if r.flags & !allowed != 0 {
        return Err(OpError {
            errno: errno::EINVAL,
            why: format!(
                "flags {:#x} not valid for {}",
                r.flags & !allowed,
                proto::cmd_name(r.kind)
            ),
        });
    }
    if matches!(r.kind, cmd::READ | cmd::WRITE) && r.length > MAX_PAYLOAD {
        return Err(OpError {
            errno: errno::EINVAL,
            why: format!(
                "{} of {} bytes exceeds the 32 MiB limit",
                proto::cmd_name(r.kind),
                r.length
            ),
        });
    }
    Ok(())
}

/// Most small WRITEs gathered before they run.
const MAX_PENDING: usize = 32;

/// Small WRITEs a connection has read and not yet run.
#[derive(Default)]
struct Pending {
    writes: Vec<(Request, Buf)>,
}

impl Pending {
    /// Runs the gathered writes (their records in one journal append) and queues the replies.
    fn run(&mut self, export: &Export, batch: &mut Batch) {
        if self.writes.is_empty() {
            return;
        }
        let list: Vec<(u64, &[u8])> = self
            .writes
            .iter()
            .map(|(r, p)| (r.offset, &p[..]))
            .collect();
        let results = export.write_many(&list);
        drop(list);
        for ((req, _payload), r) in self.writes.drain(..).zip(results) {
            log_failure(&req, &r);
            batch.reply(req.cookie, r.err().map_or(0, |e| e.errno));
        }
    }
}

/// Replies of requests executed on the connection's own thread, sent in batches: while more
/// requests are already buffered, replies wait, so a pipelining client gets them in one write.
struct Batch {
    buf: Vec<u8>,
}

impl Batch {
    const FLUSH_AT: usize = 256 << 10;

    fn reply(&mut self, cookie: u64, code: u32) {
        let at = self.buf.len();
        self.buf.resize(at + proto::SIMPLE_REPLY_LEN, 0);
        proto::simple_reply(&mut self.buf[at..], code, cookie);
    }

    fn flush(&mut self, replies: &Replies) {
        if !self.buf.is_empty() {
            replies.send(&self.buf);
            self.buf.clear();
            // One 32 MiB read should not pin 32 MiB to the connection for its lifetime.
            self.buf.shrink_to(Self::FLUSH_AT);
        }
    }
}

fn transmission(s: Conn, export: Arc<Export>, shared: &Arc<Shared>, id: u64) -> u64 {
    let replies = match s.try_clone() {
        Ok(w) => Arc::new(Replies {
            stream: Mutex::new(w),
            dead: AtomicBool::new(false),
        }),
        Err(e) => {
            tracing::warn!("connection {id}: {e}");
            return 0;
        }
    };
    let inflight = Arc::new(Inflight::default());
    let mut reader = BufReader::with_capacity(128 << 10, s);
    let mut batch = Batch { buf: Vec::new() };
    let mut count = 0u64;
    let mut wrote = false;
    // Small WRITEs already read, run together (one journal append) before anything else.
    let mut pending = Pending::default();
    loop {
        if !pending.writes.is_empty()
            && (reader.buffer().len() < proto::REQUEST_LEN || pending.writes.len() >= MAX_PENDING)
        {
            pending.run(&export, &mut batch);
        }
        if reader.buffer().len() < proto::REQUEST_LEN || batch.buf.len() >= Batch::FLUSH_AT {
            batch.flush(&replies);
        }
        let mut hdr = [0u8; proto::REQUEST_LEN];
        if let Err(e) = reader.read_exact(&mut hdr) {
            if e.kind() != std::io::ErrorKind::UnexpectedEof
                && !shared.stopping.load(Ordering::SeqCst)
            {
                tracing::info!("connection {id}: {e}");
            }
            break;
        }
        let req = match Request::parse(&hdr) {
            Ok(r) => r,
            Err(bad) => {
                tracing::warn!(
                    "connection {id}: request with bad magic {:#010x}; closing the connection",
                    bad.0
                );
                break;
            }
        };
        count += 1;
        if req.kind == cmd::DISC {
            break;
        }
        let mut payload = Buf::empty();
        if req.kind == cmd::WRITE {
            if req.length > MAX_DRAIN {
                tracing::warn!(
                    "connection {id}: WRITE of {} bytes; closing the connection",
                    req.length
                );
                break;
            }
            payload = shared.buffers.get(req.length as usize);
            if reader.read_exact(&mut payload).is_err() {
                tracing::info!("connection {id}: client vanished in a WRITE payload");
                break;
            }
        }
        if let Err(e) = validate(&req) {
            tracing::info!("connection {id}: refused: {}", e.why);
            batch.reply(req.cookie, e.errno);
            continue;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            batch.reply(req.cookie, errno::ESHUTDOWN);
            continue;
        }
        wrote |= matches!(req.kind, cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM);
        // Work that cannot block for long runs here, with no hand-off between threads: a read
        // the page cache can satisfy, a write without FUA. Everything that waits for the
        // device (flushes, FUA, zeroing, trims, uncached reads) goes to the workers.
        let fua = req.flags & cflags::FUA != 0;
        if req.kind == cmd::WRITE && !fua && req.length <= INLINE_WRITE && export.quick_writes() {
            pending
                .writes
                .push((req, std::mem::replace(&mut payload, Buf::empty())));
            continue;
        }
        // Anything else waits for the writes read before it.
        pending.run(&export, &mut batch);
        if req.kind == cmd::READ && !fua && req.length as usize <= Batch::FLUSH_AT {
            let at = batch.buf.len();
            batch
                .buf
                .resize(at + proto::SIMPLE_REPLY_LEN + req.length as usize, 0);
            match export.read_nowait(req.offset, &mut batch.buf[at + proto::SIMPLE_REPLY_LEN..]) {
                Ok(true) => {
                    proto::simple_reply(&mut batch.buf[at..], 0, req.cookie);
                    continue;
                }
                Ok(false) => batch.buf.truncate(at),
                Err(e) => {
                    batch.buf.truncate(at);
                    log_failure(&req, &Err(e.clone()));
                    batch.reply(req.cookie, e.errno);
                    continue;
                }
            }
        } else if req.kind == cmd::READ && !fua {
            // A large reply goes out on its own, from a reused buffer: growing the batch for
            // it would zero-fill (and later free) a fresh buffer every time.
            let mut buf = shared
                .buffers
                .get(proto::SIMPLE_REPLY_LEN + req.length as usize);
            match export.read_nowait(req.offset, &mut buf[proto::SIMPLE_REPLY_LEN..]) {
                Ok(true) => {
                    proto::simple_reply(&mut buf, 0, req.cookie);
                    batch.flush(&replies);
                    replies.send(&buf);
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    log_failure(&req, &Err(e.clone()));
                    batch.reply(req.cookie, e.errno);
                    continue;
                }
            }
        }
        // Replies already made must not wait while this thread waits for a free slot.
        batch.flush(&replies);
        inflight.acquire(shared.config.max_inflight);
        let job = {
            let (export, replies) = (export.clone(), replies.clone());
            let buffers = shared.buffers.clone();
            let slot = Slot(inflight.clone());
            let payload = std::mem::replace(&mut payload, Buf::empty());
            Box::new(move || {
                let _slot = slot;
                let run = std::panic::AssertUnwindSafe(|| {
                    execute(&export, req, &payload, &replies, &buffers)
                });
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "{} at offset {} length {} panicked; answered EIO",
                        proto::cmd_name(req.kind),
                        req.offset,
                        req.length
                    );
                    replies.error(req.cookie, errno::EIO);
                }
            }) as Job
        };
        let sent = lock(&shared.jobs).as_ref().map(|tx| tx.send(job));
        if !matches!(sent, Some(Ok(()))) {
            // The job (and its slot) was dropped unrun.
            batch.reply(req.cookie, errno::ESHUTDOWN);
        }
    }
    pending.run(&export, &mut batch);
    batch.flush(&replies);
    inflight.drain();
    // A client that leaves makes its writes durable, as a clean disconnect should.
    if wrote && !export.read_only() {
        if let Err(e) = export.flush() {
            tracing::warn!("connection {id}: flush at disconnect failed: {}", e.why);
        }
    }
    lock(&replies.stream).shutdown(Shutdown::Both);
    count
}

fn log_failure(req: &Request, r: &Result<(), OpError>) {
    let Err(e) = r else { return };
    let (what, off, len) = (proto::cmd_name(req.kind), req.offset, req.length);
    if matches!(e.errno, errno::EIO | errno::ENOSPC) {
        tracing::warn!("{what} at offset {off} length {len}: {}", e.why);
    } else {
        tracing::info!("{what} at offset {off} length {len} refused: {}", e.why);
    }
}

fn execute(
    export: &Export,
    req: Request,
    payload: &[u8],
    replies: &Replies,
    buffers: &Arc<Buffers>,
) {
    let data_len = if req.kind == cmd::READ {
        req.length as usize
    } else {
        0
    };
    // A READ's data goes right after the reply header, so the reply is one write. Only a
    // successful read (which fills all of it) sends the buffer.
    let mut buf = buffers.get(proto::SIMPLE_REPLY_LEN + data_len);
    let result = dispatch(export, &req, payload, &mut buf[proto::SIMPLE_REPLY_LEN..]);
    if result.is_ok() && req.kind == cmd::READ {
        proto::simple_reply(&mut buf, 0, req.cookie);
        return replies.send(&buf);
    }
    log_failure(&req, &result);
    replies.error(req.cookie, result.err().map_or(0, |e| e.errno));
}

/// Carries out one validated request on `export`: `payload` is a WRITE's data, and a READ's
/// data goes to `read_into` (exactly `req.length` bytes).
pub fn dispatch(
    export: &Export,
    req: &Request,
    payload: &[u8],
    read_into: &mut [u8],
) -> Result<(), OpError> {
    let fua = req.flags & cflags::FUA != 0;
    let (off, len) = (req.offset, req.length as u64);
    match req.kind {
        cmd::READ => export.read(off, read_into),
        cmd::WRITE => export.write(off, payload, fua),
        cmd::FLUSH => export.flush(),
        cmd::TRIM => export.trim(off, len, fua),
        cmd::WRITE_ZEROES => export.write_zeroes(
            off,
            len,
            req.flags & cflags::NO_HOLE == 0,
            req.flags & cflags::FAST_ZERO != 0,
            fua,
        ),
        cmd::CACHE => export.cache(off, len),
        _ => Err(OpError {
            errno: errno::EINVAL,
            why: "unsupported command".into(),
        }),
    }
}
