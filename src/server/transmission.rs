//! Transmission: one connection's requests after negotiation. The connection thread reads
//! each request and its payload, checks it ([`validate`]), runs small WRITEs itself in
//! batches and hands everything else to the worker pool; [`dispatch`] maps a request onto the
//! [`Export`]'s operation, and the replies go out through the connection's writer, out of order
//! as they complete, a failed request's with the NBD error value of its [`Failure`].

use super::buffers::{Buf, Buffers};
use super::conn::Conn;
use super::failure::{Failure, Refusal};
use super::handshake::MAX_PAYLOAD;
use super::pool::Job;
use super::{lock, Shared, REPLY_TIMEOUT};
use crate::nbd::proto::{self, cflags, cmd, Request};
use crate::nbd::stream::write_all_until;
use crate::service::{Connection, Export};
use std::io::{BufReader, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Largest WRITE executed on the connection's own thread; larger ones go to the workers so
/// that receiving the next request overlaps with copying this one into the page cache.
const INLINE_WRITE: u32 = 64 << 10;

/// Largest WRITE payload that is read and discarded (answered EINVAL) rather than ending the
/// connection.
const MAX_DRAIN: u32 = 64 << 20;

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
pub fn validate(r: &Request) -> Result<(), Refusal> {
    let allowed = match r.kind {
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::CACHE => cflags::FUA,
        cmd::WRITE_ZEROES => cflags::FUA | cflags::NO_HOLE | cflags::FAST_ZERO,
        kind => return Err(Refusal::Command { kind }),
    };
    if r.flags & !allowed != 0 {
        return Err(Refusal::Flags {
            kind: r.kind,
            flags: r.flags & !allowed,
        });
    }
    if matches!(r.kind, cmd::READ | cmd::WRITE) && r.length > MAX_PAYLOAD {
        return Err(Refusal::TooLarge {
            kind: r.kind,
            length: r.length,
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
            let r = r.map_err(Failure::Op);
            log_failure(&req, &r);
            batch.reply(req.cookie, errno_of_result(&r));
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

/// Serves one connection's requests until it ends; returns how many were read. Its figures
/// (`stats`) are stored as they change, for `status`: plain stores, read by no one on the
/// request path.
pub(super) fn transmission(
    s: Conn,
    export: Arc<Export>,
    shared: &Arc<Shared>,
    id: u64,
    stats: &Connection,
) -> u64 {
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
    let (mut read_bytes, mut written_bytes) = (0u64, 0u64);
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
        stats.requests.store(count, Ordering::Relaxed);
        match req.kind {
            cmd::READ => {
                read_bytes += u64::from(req.length);
                stats.read_bytes.store(read_bytes, Ordering::Relaxed);
            }
            cmd::WRITE => {
                written_bytes += u64::from(req.length);
                stats.written_bytes.store(written_bytes, Ordering::Relaxed);
            }
            cmd::DISC => break,
            _ => {}
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
            tracing::info!("connection {id}: refused: {e}");
            batch.reply(req.cookie, Failure::Refused(e).errno());
            continue;
        }
        // A planned stop: this request is neither run nor answered, and the connection closes.
        // A client that reconnects (qemu with `reconnect-delay`) sends it again to the next
        // server; an NBD_ESHUTDOWN reply, which the protocol suggests, would reach qemu's guest
        // as a failed request, since qemu retries only what a lost connection left unanswered.
        if shared.stopping.load(Ordering::SeqCst) {
            tracing::info!(
                "connection {id}: stopping; {} left unanswered for the client to send again",
                proto::cmd_name(req.kind)
            );
            break;
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
                    let r = Err(Failure::Op(e));
                    log_failure(&req, &r);
                    batch.reply(req.cookie, errno_of_result(&r));
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
                    let r = Err(Failure::Op(e));
                    log_failure(&req, &r);
                    batch.reply(req.cookie, errno_of_result(&r));
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
                    replies.error(req.cookie, Failure::Panicked.errno());
                }
            }) as Job
        };
        if shared.jobs.push(job).is_err() {
            // The job (and its slot) was dropped unrun.
            batch.reply(req.cookie, Failure::ShuttingDown.errno());
        }
    }
    pending.run(&export, &mut batch);
    batch.flush(&replies);
    inflight.drain();
    // A client that leaves makes its writes durable, as a clean disconnect should.
    if wrote && !export.read_only() {
        if let Err(e) = export.flush() {
            tracing::warn!("connection {id}: flush at disconnect failed: {e}");
        }
    }
    lock(&replies.stream).shutdown(Shutdown::Both);
    count
}

/// The reply's error value: 0 for success, else the failure's.
fn errno_of_result(r: &Result<(), Failure>) -> u32 {
    r.as_ref().err().map_or(0, Failure::errno)
}

fn log_failure(req: &Request, r: &Result<(), Failure>) {
    let Err(e) = r else { return };
    let (what, off, len) = (proto::cmd_name(req.kind), req.offset, req.length);
    if e.warns() {
        tracing::warn!("{what} at offset {off} length {len}: {e}");
    } else {
        tracing::info!("{what} at offset {off} length {len} refused: {e}");
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
    // A READ's data goes right after the reply header, so the reply is one write, and starts
    // on a page, so a direct read lands in it without a copy. Only a successful read (which
    // fills all of it) sends the buffer.
    let mut buf =
        buffers.get_aligned_at(proto::SIMPLE_REPLY_LEN + data_len, proto::SIMPLE_REPLY_LEN);
    let result = dispatch(export, &req, payload, &mut buf[proto::SIMPLE_REPLY_LEN..]);
    if result.is_ok() && req.kind == cmd::READ {
        proto::simple_reply(&mut buf, 0, req.cookie);
        return replies.send(&buf);
    }
    log_failure(&req, &result);
    replies.error(req.cookie, errno_of_result(&result));
}

/// Carries out one validated request on `export`: `payload` is a WRITE's data, and a READ's
/// data goes to `read_into` (exactly `req.length` bytes).
pub fn dispatch(
    export: &Export,
    req: &Request,
    payload: &[u8],
    read_into: &mut [u8],
) -> Result<(), Failure> {
    let fua = req.flags & cflags::FUA != 0;
    let (off, len) = (req.offset, req.length as u64);
    let r = match req.kind {
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
        // Not reached after `validate`, which refuses every other command.
        kind => return Err(Refusal::Command { kind }.into()),
    };
    r.map_err(Failure::Op)
}
