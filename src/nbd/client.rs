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

use super::proto::{self, cflags, cmd, opt, rep, tflags, Request};
use super::stream::{write_all_until, Stream, WRITE_SLICE};
use super::uri::{Endpoint, NbdUri};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long connecting, negotiating, and each request (sending it, then its reply) may take
/// before the upstream is given up on, unless [`set_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The upstream timeout in milliseconds (process-wide: one setting from the command line or
/// the config file).
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);
/// Set by [`abort_connecting`]: connections being negotiated give up at once.
static ABORT: AtomicBool = AtomicBool::new(false);
/// After [`stop_by`]: milliseconds since [`epoch`] past which nothing waits for an upstream.
static STOP_AT_MS: AtomicU64 = AtomicU64::new(u64::MAX);

fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// Sets the upstream timeout for every connection opened or request sent from now on (at
/// least a millisecond).
pub fn set_timeout(d: Duration) {
    TIMEOUT_MS.store((d.as_millis() as u64).max(1), Ordering::Relaxed);
}

/// The upstream timeout.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Makes every connection still negotiating give up now (a stop was asked for during start).
pub fn abort_connecting() {
    ABORT.store(true, Ordering::SeqCst);
}

/// From `d` after now, no request waits any longer for an upstream: shutdown has a bound
/// whatever the upstream does.
pub fn stop_by(d: Duration) {
    let at = (epoch().elapsed() + d).as_millis() as u64;
    STOP_AT_MS.fetch_min(at, Ordering::SeqCst);
}

/// When a wait begun now must end, and the reason to give if it does.
fn deadline() -> (Instant, String) {
    let (until, stopping) = bound(Instant::now() + timeout());
    (until, reason(stopping))
}

/// The earlier of a wait's own deadline and the stop deadline (which may be set while the
/// wait goes on), and whether it is the stop deadline.
fn bound(own: Instant) -> (Instant, bool) {
    match STOP_AT_MS.load(Ordering::Relaxed) {
        u64::MAX => (own, false),
        ms => {
            let stop = epoch() + Duration::from_millis(ms);
            (stop.min(own), stop < own)
        }
    }
}

/// Why a wait was given up.
fn reason(stopping: bool) -> String {
    reason_after(stopping, timeout())
}

/// Why a wait of `allowed` was given up.
fn reason_after(stopping: bool, allowed: Duration) -> String {
    if stopping {
        "the service is stopping and gave up waiting".into()
    } else if allowed == timeout() {
        format!(
            "no answer within {} (the upstream timeout; --upstream-timeout or upstream_timeout = sets it)",
            show(allowed)
        )
    } else {
        format!(
            "no answer within {} (four times the upstream timeout, for a flush, trim or zeroing; --upstream-timeout or upstream_timeout = sets it)",
            show(allowed)
        )
    }
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// A negotiating connection with one deadline for everything it reads and writes (the socket
/// times out in short slices so that the deadline and [`abort_connecting`] are looked at).
struct Bounded<'a> {
    s: &'a mut Stream,
    until: Instant,
    why: String,
}

impl Bounded<'_> {
    fn check(&self) -> io::Result<()> {
        if ABORT.load(Ordering::SeqCst) {
            // Not ErrorKind::Interrupted, which read_exact would retry.
            return Err(io::Error::other("a stop was asked for while connecting"));
        }
        if Instant::now() >= self.until {
            return Err(io::Error::new(io::ErrorKind::TimedOut, self.why.clone()));
        }
        Ok(())
    }
}

fn slow(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            match self.s.read(buf) {
                Err(e) if slow(&e) => {}
                r => return r,
            }
        }
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            match self.s.write(buf) {
                Err(e) if slow(&e) => {}
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// Reads and writes of a negotiation look at their deadline this often.
const NEGOTIATION_SLICE: Duration = Duration::from_millis(200);

/// Largest payload asked of a server that states no maximum (the spec's default).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;

/// What the server said about the export during negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags ([`proto::tflags`]).
    pub flags: u16,
    /// Minimum block size: offsets and lengths must be multiples of it.
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest READ or WRITE payload.
    pub max_payload: u32,
}

impl ExportInfo {
    /// Whether the server advertises transmission flag `f`.
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens a connection to the server a URI names (TCP with Nagle off).
pub fn dial(uri: &NbdUri) -> io::Result<Stream> {
    match &uri.endpoint {
        Endpoint::Unix(p) => UnixStream::connect(p)
            .map(Stream::Unix)
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", p.display()))),
        Endpoint::Tcp(h, port) => {
            let fail =
                |e: io::Error| io::Error::new(e.kind(), format!("connecting to {h}:{port}: {e}"));
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
            for a in (h.as_str(), *port).to_socket_addrs().map_err(fail)? {
                match TcpStream::connect_timeout(&a, timeout()) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        last = io::Error::new(
                            e.kind(),
                            format!(
                                "no answer within {} (the upstream timeout; --upstream-timeout or upstream_timeout = sets it)",
                                show(timeout())
                            ),
                        )
                    }
                    Err(e) => last = e,
                }
            }
            Err(fail(last))
        }
    }
}

/// Runs the fixed-newstyle handshake on a fresh connection and selects `export` with
/// NBD_OPT_GO, all within the upstream timeout. The stream is then in transmission, with no
/// read or write timeout set.
pub fn negotiate(s: &mut Stream, export: &str) -> io::Result<ExportInfo> {
    s.set_read_timeout(Some(NEGOTIATION_SLICE))?;
    s.set_write_timeout(Some(NEGOTIATION_SLICE))?;
    let (until, why) = deadline();
    let r = negotiate_by(&mut Bounded { s, until, why }, export);
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    r
}

fn negotiate_by(s: &mut Bounded, export: &str) -> io::Result<ExportInfo> {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).map_err(|e| {
        let msg = if e.kind() == io::ErrorKind::TimedOut {
            format!("the server accepted the connection but sent no NBD greeting: {e}; check that it is an NBD server and that it is not stuck")
        } else {
            format!("reading the server greeting: {e}")
        };
        io::Error::new(e.kind(), msg)
    })?;
    if greeting[0..8] != proto::NBDMAGIC.to_be_bytes() {
        return Err(bad("not an NBD server (bad greeting magic)"));
    }
    if greeting[8..16] != proto::IHAVEOPT.to_be_bytes() {
        return Err(bad(
            "the server speaks oldstyle NBD, which has no export names or options; run it in newstyle mode",
        ));
    }
    let hflags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if hflags & proto::handshake_flags::FIXED_NEWSTYLE == 0 {
        return Err(bad("the server does not speak fixed newstyle NBD"));
    }
    let mut cf = proto::client_flags::FIXED_NEWSTYLE;
    if hflags & proto::handshake_flags::NO_ZEROES != 0 {
        cf |= proto::client_flags::NO_ZEROES;
    }
    s.write_all(&cf.to_be_bytes())?;
    if export.len() > proto::MAX_NAME {
        return Err(bad(format!(
            "export names are at most {} bytes",
            proto::MAX_NAME
        )));
    }
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    // One information request: the block-size constraints, which this client then honours.
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&proto::info::BLOCK_SIZE.to_be_bytes());
    let mut o = proto::IHAVEOPT.to_be_bytes().to_vec();
    o.extend_from_slice(&opt::GO.to_be_bytes());
    o.extend_from_slice(&(data.len() as u32).to_be_bytes());
    o.extend_from_slice(&data);
    s.write_all(&o)?;
    let mut info = ExportInfo {
        size: u64::MAX,
        flags: 0,
        min_block: 1,
        preferred_block: 4096,
        max_payload: DEFAULT_MAX_PAYLOAD,
    };
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("waiting for the answer to NBD_OPT_GO: {e}"),
            )
        })?;
        if h[0..8] != proto::OPT_REPLY_MAGIC.to_be_bytes() {
            return Err(bad("bad option reply magic from the server"));
        }
        let kind = u32::from_be_bytes(h[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
        if len > 1 << 16 {
            return Err(bad(format!("option reply of {len} bytes is too large")));
        }
        let mut d = vec![0u8; len as usize];
        s.read_exact(&mut d)?;
        let info_type = (d.len() >= 2).then(|| u16::from_be_bytes([d[0], d[1]]));
        match kind {
            rep::INFO if info_type == Some(proto::info::EXPORT) && d.len() >= 12 => {
                info.size = u64::from_be_bytes(d[2..10].try_into().expect("8"));
                info.flags = u16::from_be_bytes([d[10], d[11]]);
            }
            rep::INFO if info_type == Some(proto::info::BLOCK_SIZE) && d.len() >= 14 => {
                let min = u32::from_be_bytes(d[2..6].try_into().expect("4"));
                let pref = u32::from_be_bytes(d[6..10].try_into().expect("4"));
                let max = u32::from_be_bytes(d[10..14].try_into().expect("4"));
                if !min.is_power_of_two() || min > 65536 || max < min {
                    return Err(bad(format!(
                        "the server's block sizes make no sense (minimum {min}, maximum {max})"
                    )));
                }
                info.min_block = min;
                info.preferred_block = pref.max(min);
                info.max_payload = max.min(DEFAULT_MAX_PAYLOAD) / min * min;
            }
            rep::INFO => {}
            rep::ACK => break,
            e => {
                let msg = String::from_utf8_lossy(&d);
                let why = match e {
                    rep::ERR_UNKNOWN => format!(
                        "the server has no export named {export:?} (list them with `nbdinfo --list URI`)"
                    ),
                    rep::ERR_TLS_REQD => {
                        "the server requires TLS, which lostwrite does not speak as a client yet".into()
                    }
                    rep::ERR_UNSUP => "the server does not support NBD_OPT_GO (too old)".into(),
                    rep::ERR_POLICY => format!("the server refused export {export:?} by policy"),
                    rep::ERR_SHUTDOWN => "the server is shutting down".into(),
                    other => format!("the server refused export {export:?} (reply {other:#x})"),
                };
                return Err(bad(if msg.trim().is_empty() {
                    why
                } else {
                    format!("{why}: {}", msg.trim())
                }));
            }
        }
    }
    if info.size == u64::MAX || info.flags & tflags::HAS_FLAGS == 0 {
        return Err(bad("the server did not give the export's size and flags"));
    }
    if info.size > i64::MAX as u64 || info.size % info.min_block as u64 != 0 {
        return Err(bad(format!(
            "the export's size of {} bytes is not a whole number of its {}-byte blocks (or too large)",
            info.size, info.min_block
        )));
    }
    Ok(info)
}

/// The error a failed request returns, saying which request failed.
fn nbd_error(kind: u16, offset: u64, e: u32) -> io::Error {
    let os = super::errno::io_error_of(e);
    io::Error::new(
        os.kind(),
        format!(
            "{} at offset {offset}: the server replied {os}",
            proto::cmd_name(kind)
        ),
    )
}

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

/// How long a request may go without any sign of life from the upstream. A FLUSH (and a trim or
/// zeroing, which may sync or walk a whole range) can legitimately keep a healthy server busy
/// for long on a slow disk with much dirty data, and a timeout fails it for good (the
/// connection is dropped, the session poisoned): such commands get four times the timeout.
fn allowance(kind: u16) -> Duration {
    match kind {
        cmd::FLUSH | cmd::TRIM | cmd::WRITE_ZEROES => timeout() * 4,
        _ => timeout(),
    }
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
