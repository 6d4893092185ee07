//! The NBD server, the layer above the service: listeners ([`listener`]), a thread per
//! connection that negotiates ([`handshake`], [`tls`] on a [`conn::Conn`]) and then reads
//! requests ([`transmission`]), and a shared pool of workers that execute them and write the
//! replies (out of order, under the connection's writer lock; a failed request's NBD error
//! value is chosen in [`failure`], and nowhere else). Reading a request never waits for an
//! earlier one to finish, so clients can keep many requests in flight on each connection and
//! open several connections.
//!
//! Why threads and channels rather than an async runtime: every operation ends in a blocking
//! pread/pwrite/fdatasync on a file; an async runtime would hand those to a thread pool anyway.
//! A connection thread costs one mostly idle stack; the workers are where the I/O waits.
//!
//! Shutdown (SIGTERM/SIGINT via [`Server::shutdown`]): listeners stop, every connection stops
//! reading, requests already read are executed and answered, and then the caller closes the
//! exports (device and ledger synced, session closed). A request that comes in after the stop
//! began is left unanswered and its connection closed, so that a client that reconnects sends
//! it again to the next server (a restart or an upgrade loses no request: docs/OPERATIONS.md).
//! A client that has not taken its replies [`SHUTDOWN_GRACE`] after the stop began is
//! disconnected, so no client can hold a shutdown.
//!
//! The exports offered can change while serving ([`Server::publish`], for a reload): a client
//! negotiating sees the list of the moment of each option, and enters transmission only if the
//! export it chose is still published. [`Server::drain`] ends the connections of one export
//! that is no longer published, as a shutdown ends all of them; connections to other exports
//! never notice.

pub mod buffers;
pub mod conn;
pub mod failure;
pub mod handshake;
pub mod listener;
pub mod pool;
pub mod tls;
pub mod transmission;

use crate::nbd::stream::WRITE_SLICE;
use crate::service::{Connection, Export};
use buffers::Buffers;
use conn::Conn;
use handshake::{Exports, Greeting, Outcome};
use listener::Listener;
use pool::Queue;
use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// How long a reply may wait for a client that does not read; then the connection is dropped.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long after a stop begins clients may take to receive their last replies; then the
/// connections still open are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct Shared {
    exports: Exports,
    config: Config,
    stopping: AtomicBool,
    conns: Mutex<HashMap<u64, Conn>>,
    /// The export each connection in transmission serves (by address: no reference kept).
    serving: Mutex<HashMap<u64, usize>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    active: AtomicUsize,
    next_id: AtomicU64,
    jobs: Arc<Queue>,
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
        let jobs = Arc::new(Queue::default());
        let workers = (0..config.workers.max(1))
            .map(|i| {
                let jobs = jobs.clone();
                std::thread::Builder::new()
                    .name(format!("nbd-worker-{i}"))
                    .spawn(move || {
                        while let Some(job) = jobs.take() {
                            job();
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        let shared = Arc::new(Shared {
            exports: Exports::new(exports),
            config,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            serving: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            jobs,
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
        shared.jobs.close();
        for w in self.workers {
            let _ = w.join();
        }
        shared.exports.list()
    }

    /// Offers `exports` from now on, in this order (the first answers to the empty name).
    /// Connections already in transmission keep their export, published or not.
    pub fn publish(&self, exports: Vec<Arc<Export>>) {
        self.shared.exports.replace(exports);
    }

    /// Ends every connection to `export`, which must no longer be published: each stops
    /// reading, the requests it has read are answered (and its writes flushed, as at any
    /// disconnect), and it closes. A client that has not taken its replies [`SHUTDOWN_GRACE`]
    /// later is cut off. Returns how many connections it ended; connections to other exports
    /// are not touched.
    pub fn drain(&self, export: &Arc<Export>) -> usize {
        let key = Arc::as_ptr(export) as usize;
        let ids: Vec<u64> = lock(&self.shared.serving)
            .iter()
            .filter(|(_, &e)| e == key)
            .map(|(&id, _)| id)
            .collect();
        for id in &ids {
            if let Some(c) = lock(&self.shared.conns).get(id) {
                c.shutdown(Shutdown::Read);
            }
        }
        let gone = |ids: &[u64]| {
            let serving = lock(&self.shared.serving);
            ids.iter().all(|id| !serving.contains_key(id))
        };
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        let mut cut = false;
        while !gone(&ids) {
            if !cut && std::time::Instant::now() >= deadline {
                for id in &ids {
                    if let Some(c) = lock(&self.shared.conns).get(id) {
                        tracing::warn!(
                            "connection {id}: its client has not taken its replies {} s into the drain of export {:?}; disconnecting it",
                            SHUTDOWN_GRACE.as_secs(),
                            export.name()
                        );
                        c.shutdown(Shutdown::Both);
                    }
                }
                cut = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ids.len()
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
                lock(&sh.serving).remove(&id);
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
        Ok(Greeting::Options { no_zeroes }) => no_zeroes,
        Ok(Greeting::Closed(why)) => {
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
            // Registered under the list's lock, so a drain either sees this connection or it
            // sees the export gone: no connection slips into a removed export.
            let registered = shared.exports.while_offered(&export, || {
                lock(&shared.serving).insert(id, Arc::as_ptr(&export) as usize);
            });
            if !registered {
                return tracing::info!(
                    "connection {id} from {peer}: export {:?} was removed by a reload while the client negotiated; closing",
                    export.name()
                );
            }
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
            let client = ClientCount::new(&export, id, peer);
            let requests = transmission::transmission(s, export, shared, id, &client.1);
            tracing::info!("connection {id} closed after {requests} requests");
        }
        Ok(Outcome::Closed(why)) => {
            tracing::info!("connection {id} from {peer} ended during negotiation: {why}")
        }
        Err(e) => tracing::info!("connection {id} from {peer} failed during negotiation: {e}"),
    }
}

/// Counts a connection in transmission on its export, and lists it among the export's
/// connections, until dropped (even by a panic): at connect and disconnect only, so the
/// request path pays nothing for it.
struct ClientCount(Arc<Export>, Arc<Connection>);

impl ClientCount {
    fn new(e: &Arc<Export>, id: u64, peer: String) -> ClientCount {
        let c = Arc::new(Connection::new(id, peer));
        e.counters.connections.add(c.clone());
        e.counters.clients.fetch_add(1, Ordering::Relaxed);
        ClientCount(e.clone(), c)
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.counters.clients.fetch_sub(1, Ordering::Relaxed);
        self.0.counters.connections.remove(self.1.id);
    }
}
