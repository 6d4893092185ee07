//! Prometheus metrics for `serve --metrics HOST:PORT`: `GET /metrics` answers in the text
//! exposition format, encoded by prometheus-client from the exports' own counters at scrape
//! time (the I/O path only bumps atomics), every series labelled by export; `GET /healthz`
//! answers 200 while every export can record, 503 naming those that cannot; `GET /status.json`
//! answers the same live figures as JSON ([`LiveStatus`]), which `status --config` reads, so no
//! client has to parse the text exposition; `POST /reload` asks the service to re-read its
//! configuration and answers the outcome as JSON (200 applied, 409 refused), which `lostwrite
//! reload` reads. The exports reported on change with a reload ([`MetricsServer::publish`]);
//! what reloads did is kept in [`Reloads`].

use crate::clock::rfc3339;
use crate::findings::classify::Kind;
use crate::service::{Export, FLUSH_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabel {
    export: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    export: String,
    kind: String,
}

struct Exports(Vec<Arc<Export>>);

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|e| e.name()))
            .finish()
    }
}

fn label(e: &Export) -> ExportLabel {
    ExportLabel {
        export: e.name().to_string(),
    }
}

impl Exports {
    /// One counter family: a value per export.
    fn counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&Export) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for e in &self.0 {
            let l = label(e);
            m.encode_family(&l)?
                .encode_counter::<NoLabelSet, _, u64>(&value(e), None)?;
        }
        Ok(())
    }

    /// One gauge family: a value per export.
    fn gauge(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&Export) -> f64,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for e in &self.0 {
            let l = label(e);
            m.encode_family(&l)?.encode_gauge(&value(e))?;
        }
        Ok(())
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Exports {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.counter(
            &mut enc,
            "writes",
            "Write requests (WRITE, WRITE_ZEROES, TRIM) completed.",
            |e| load(&e.counters.writes),
        )?;
        self.counter(
            &mut enc,
            "written_bytes",
            "Bytes written by WRITE requests.",
            |e| load(&e.counters.written_bytes),
        )?;
        self.counter(&mut enc, "reads", "Read requests completed.", |e| {
            load(&e.counters.reads)
        })?;
        self.counter(
            &mut enc,
            "flushes",
            "FLUSH requests completed (device and ledger durable).",
            |e| load(&e.counters.flushes),
        )?;
        self.counter(
            &mut enc,
            "errors",
            "Requests answered with an error.",
            |e| load(&e.counters.errors),
        )?;
        self.counter(
            &mut enc,
            "read_mismatches",
            "Blocks a client read that did not hold their latest generation.",
            |e| load(&e.counters.read_mismatches),
        )?;
        self.counter(
            &mut enc,
            "suspects_dropped",
            "Stale blocks a read found but the detection queue had no room to classify.",
            |e| load(&e.counters.suspects_dropped),
        )?;
        self.counter(
            &mut enc,
            "scrub_blocks",
            "Blocks the scrubber has read and checked.",
            |e| load(&e.counters.scrub_blocks),
        )?;
        self.counter(
            &mut enc,
            "scrub_passes",
            "Completed scrub passes over the whole device.",
            |e| load(&e.counters.scrub_passes),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "findings",
                "Lost writes detected while serving (reads and scrubs), classified as verify does.",
                None,
                MetricType::Counter,
            )?;
            for e in &self.0 {
                for k in Kind::ALL {
                    let l = KindLabel {
                        export: e.name().to_string(),
                        kind: k.name().to_string(),
                    };
                    let v = load(&e.counters.findings[k as usize]);
                    m.encode_family(&l)?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        self.gauge(
            &mut enc,
            "findings_open",
            "Findings in the findings log not yet cleared by a passing verification.",
            |e| e.findings_log().map_or(0, |f| f.still_open().len()) as f64,
        )?;
        self.gauge(
            &mut enc,
            "scrub_progress_ratio",
            "How far the scrubber's current pass has come (0 to 1).",
            |e| {
                let blocks = e.size().div_ceil(e.block_size() as u64).max(1);
                load(&e.counters.scrub_position) as f64 / blocks as f64
            },
        )?;
        self.gauge(
            &mut enc,
            "journal_bytes",
            "Bytes in the ledger's journal segments.",
            |e| e.ledger().map_or(0, |l| l.journal_bytes()) as f64,
        )?;
        self.gauge(
            &mut enc,
            "clients",
            "Client connections in transmission.",
            |e| load(&e.counters.clients) as f64,
        )?;
        enc.encode_descriptor(
            "log_lines_dropped",
            "Log lines lost because stderr was full, closed or failing (the service went on).",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&crate::logsink::dropped(), None)?;
        let mut m = enc.encode_descriptor(
            "flush_duration_seconds",
            "Time a FLUSH took: the device's fdatasync and the ledger's flush record.",
            None,
            MetricType::Histogram,
        )?;
        for e in &self.0 {
            let h = &e.counters.flush_duration;
            let counts: Vec<u64> = h.buckets.iter().map(load).collect();
            let mut buckets: Vec<(f64, u64)> = FLUSH_BUCKETS
                .iter()
                .copied()
                .zip(counts.iter().copied())
                .collect();
            buckets.push((f64::INFINITY, counts[FLUSH_BUCKETS.len()]));
            let l = label(e);
            m.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                load(&h.sum_nanos) as f64 / 1e9,
                counts.iter().sum(),
                &buckets,
                None::<&HashMap<usize, _>>,
            )?;
        }
        Ok(())
    }
}

/// The reload figures as metrics: counters by outcome, and when the last one ran and how.
#[derive(Debug)]
struct ReloadMetrics(ReloadStatus);

impl Collector for ReloadMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct OutcomeLabel {
            outcome: String,
        }
        let mut m = enc.encode_descriptor(
            "reloads",
            "Configuration reloads (SIGHUP or `lostwrite reload`), applied or refused.",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("applied", self.0.applied), ("refused", self.0.refused)] {
            let l = OutcomeLabel {
                outcome: outcome.into(),
            };
            m.encode_family(&l)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        if let Some(last) = &self.0.last {
            enc.encode_descriptor(
                "last_reload_timestamp_seconds",
                "When the last reload ended (Unix time).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(last.unix_micros as f64 / 1e6))?;
            enc.encode_descriptor(
                "last_reload_applied",
                "1 when the last reload was applied, 0 when it was refused (the log and /status.json say why).",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(last.applied))?;
        }
        Ok(())
    }
}

/// The text exposition of every export's metrics.
pub fn render(exports: &[Arc<Export>]) -> String {
    render_with(exports, &ReloadStatus::default())
}

/// The text exposition of every export's metrics and of the reloads.
fn render_with(exports: &[Arc<Export>], reloads: &ReloadStatus) -> String {
    let mut registry = Registry::with_prefix("lostwrite");
    registry.register_collector(Box::new(Exports(exports.to_vec())));
    registry.register_collector(Box::new(ReloadMetrics(reloads.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The route that answers [`LiveStatus`] as JSON.
pub const STATUS_PATH: &str = "/status.json";

/// The body of `GET /status.json`: the live figures of every export the service opened.
/// Fields may be added, never renamed; a reader takes missing ones as their defaults, so a
/// `status` of one version can read a service of another.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveStatus {
    /// One entry per open export, in the order of the configuration.
    pub exports: Vec<ExportStatus>,
    /// The exports of the configuration that could not be opened (at start or at the last
    /// reload), and why.
    pub not_served: Vec<NotServed>,
    /// What configuration reloads did.
    pub reloads: ReloadStatus,
}

/// Configuration reloads since the service started, as `/status.json` gives them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadStatus {
    /// Reloads applied.
    pub applied: u64,
    /// Reloads refused (nothing changed).
    pub refused: u64,
    /// The last one.
    pub last: Option<LastReload>,
}

/// How the last reload ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastReload {
    /// When it ended (RFC 3339).
    pub time: String,
    /// The same instant, microseconds since the Unix epoch.
    pub unix_micros: i64,
    /// Whether it was applied.
    pub applied: bool,
    /// Why it was refused, or what went wrong in applying it.
    pub reason: Option<String>,
}

/// What reloads did, kept by the host and read by the endpoint.
#[derive(Debug, Default)]
pub struct Reloads(Mutex<ReloadStatus>);

impl Reloads {
    /// Counts one reload that ended now.
    pub fn record(&self, applied: bool, reason: Option<String>) {
        let now = crate::clock::now();
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if applied {
            s.applied += 1;
        } else {
            s.refused += 1;
        }
        s.last = Some(LastReload {
            time: rfc3339(now),
            unix_micros: now,
            applied,
            reason,
        });
    }

    /// The figures now.
    pub fn status(&self) -> ReloadStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The route that asks for a reload (POST) and answers its outcome.
pub const RELOAD_PATH: &str = "/reload";

/// How long the reload route waits for the service's answer; a reload drains connections for
/// at most the server's grace period per export it removes or restarts, so this is generous.
pub const RELOAD_WAIT: Duration = Duration::from_secs(300);

/// A reload's outcome as the service answers it: whether it was applied, and its JSON.
pub type ReloadAnswer = (bool, String);

/// A request for a reload: where to send the answer.
pub type ReloadAsk = crossbeam_channel::Sender<ReloadAnswer>;

/// An export of the configuration that is not served: it could not be opened at start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NotServed {
    /// The export's name.
    pub export: String,
    /// Its device (path or URI).
    pub device: String,
    /// Why it could not be opened.
    pub reason: String,
}

impl NotServed {
    /// The line `/healthz` and the log give it.
    pub fn line(&self) -> String {
        format!(
            "export {:?} ({}) is NOT served: {}",
            self.export, self.device, self.reason
        )
    }
}

/// One client connection in transmission, as `/status.json` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientStatus {
    /// The server's number for the connection (its log lines say `connection N`).
    pub id: u64,
    /// A TCP address (`HOST:PORT`), or `unix socket`.
    pub peer: String,
    /// When it entered transmission (RFC 3339).
    pub connected: String,
    /// Requests read on it.
    pub requests: u64,
    /// Bytes it asked to read.
    pub read_bytes: u64,
    /// Bytes it sent to write.
    pub written_bytes: u64,
}

/// One export's live figures, read from its counters when asked (as `/metrics` reads them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExportStatus {
    /// The export's name (empty for `serve DEVICE` without `--export`).
    pub export: String,
    /// Client connections in transmission now.
    pub clients: u64,
    /// The ledger's write session, when one is open.
    pub session: Option<u64>,
    /// When that session began (RFC 3339).
    pub session_opened: Option<String>,
    /// Whether that session is strict (`journal_sync = "strict"`: every change durable before
    /// its reply).
    pub session_strict: Option<bool>,
    /// The connections in transmission now, oldest first.
    pub connections: Vec<ClientStatus>,
    /// When the last FLUSH completed (RFC 3339), if one has since the export opened.
    pub last_flush: Option<String>,
    /// How long that FLUSH took, in seconds.
    pub last_flush_seconds: Option<f64>,
    /// Write requests (WRITE, WRITE_ZEROES, TRIM) completed.
    pub writes: u64,
    /// Read requests completed.
    pub reads: u64,
    /// FLUSH requests completed.
    pub flushes: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Findings in the findings log not yet cleared.
    pub findings_open: u64,
    /// Stale blocks reads found that the detection queue had no room to classify, since the
    /// export opened (`status` adds those of earlier sessions from the findings log).
    pub stale_reads_unclassified: u64,
    /// Bytes in the ledger's journal segments.
    pub journal_bytes: u64,
    /// Why the export cannot record, when it cannot (what `/healthz` says of it).
    pub failure: Option<String>,
}

/// The live figures of every export, and the exports that are `down`.
pub fn live_status(exports: &[Arc<Export>], down: &[NotServed]) -> LiveStatus {
    LiveStatus {
        reloads: ReloadStatus::default(),
        exports: exports
            .iter()
            .map(|e| ExportStatus {
                export: e.name().to_string(),
                clients: load(&e.counters.clients),
                session: e.ledger().and_then(|l| l.session_id()),
                session_opened: e.ledger().map(|l| rfc3339(l.opened())),
                session_strict: e.ledger().map(|l| l.strict()),
                connections: e
                    .counters
                    .connections
                    .list()
                    .iter()
                    .map(|k| ClientStatus {
                        id: k.id,
                        peer: k.peer.clone(),
                        connected: rfc3339(k.connected),
                        requests: load(&k.requests),
                        read_bytes: load(&k.read_bytes),
                        written_bytes: load(&k.written_bytes),
                    })
                    .collect(),
                last_flush: match e.counters.last_flush.load(Ordering::Relaxed) {
                    0 => None,
                    t => Some(rfc3339(t)),
                },
                last_flush_seconds: (e.counters.last_flush.load(Ordering::Relaxed) != 0)
                    .then(|| load(&e.counters.last_flush_nanos) as f64 / 1e9),
                stale_reads_unclassified: load(&e.counters.suspects_dropped),
                writes: load(&e.counters.writes),
                reads: load(&e.counters.reads),
                flushes: load(&e.counters.flushes),
                errors: load(&e.counters.errors),
                findings_open: e.findings_log().map_or(0, |f| f.still_open().len()) as u64,
                journal_bytes: e.ledger().map_or(0, |l| l.journal_bytes()),
                failure: failure(e),
            })
            .collect(),
        not_served: down.to_vec(),
    }
}

/// Why one export cannot record, if it cannot.
fn failure(e: &Export) -> Option<String> {
    e.ledger()
        .and_then(|l| l.session_failure())
        .or_else(|| e.device_failure())
}

/// Why exports cannot record, one line each; empty when all is well.
pub fn health(exports: &[Arc<Export>]) -> Vec<String> {
    exports
        .iter()
        .filter_map(|e| Some(format!("export {:?}: {}", e.name(), failure(e)?)))
        .collect()
}

/// The HTTP endpoint, bound but not yet serving (so a port in use is found before any ledger
/// is opened).
pub struct MetricsListener {
    server: tiny_http::Server,
    addr: String,
}

impl MetricsListener {
    /// Listens on `addr` (HOST:PORT; port 0 picks one).
    pub fn bind(addr: &str) -> crate::Result<MetricsListener> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            crate::Error::Usage(format!("--metrics {addr}: cannot listen there: {e}"))
        })?;
        let bound = server
            .server_addr()
            .to_ip()
            .map_or(addr.to_string(), |a| a.to_string());
        Ok(MetricsListener {
            server,
            addr: bound,
        })
    }

    /// The address it listens on (the port filled in when 0 was asked for).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Serves `/metrics`, `/healthz` and `/status.json` for `exports`; `down` names configured
    /// exports that could not be opened (health and the status route report them). `/reload`
    /// sends its requests to `asks`, and the figures of reloads come from `reloads`.
    pub fn start(
        self,
        exports: Vec<Arc<Export>>,
        down: Vec<NotServed>,
        reloads: Arc<Reloads>,
        asks: crossbeam_channel::Sender<ReloadAsk>,
    ) -> crate::Result<MetricsServer> {
        let server = Arc::new(self.server);
        let published = Arc::new(RwLock::new(Published { exports, down }));
        let (s, p) = (server.clone(), published.clone());
        let handle = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&s, &p, &reloads, &asks))
            .map_err(|e| crate::Error::io(&self.addr, "starting the metrics thread", e))?;
        Ok(MetricsServer {
            server,
            published,
            handle: Some(handle),
        })
    }
}

/// What the endpoint reports on; a reload replaces it.
struct Published {
    exports: Vec<Arc<Export>>,
    down: Vec<NotServed>,
}

/// The HTTP endpoint, serving.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    published: Arc<RwLock<Published>>,
    handle: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Reports on `exports` and `down` from now on (after a reload).
    pub fn publish(&self, exports: Vec<Arc<Export>>, down: Vec<NotServed>) {
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = Published { exports, down };
    }

    /// Stops listening and lets go of the exports.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    server: &tiny_http::Server,
    published: &RwLock<Published>,
    reloads: &Reloads,
    asks: &crossbeam_channel::Sender<ReloadAsk>,
) {
    use tiny_http::{Header, Method, Response};
    let text =
        |ct: &str| Header::from_bytes(&b"Content-Type"[..], ct.as_bytes()).expect("a valid header");
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        if (req.method(), path.as_str()) == (&Method::Post, RELOAD_PATH) {
            // A reload may take a while (draining connections): scrapes go on meanwhile.
            let asks = asks.clone();
            let json = text("application/json");
            let spawned = std::thread::Builder::new()
                .name("metrics-reload".into())
                .spawn(move || {
                    let (code, body) = ask_reload(&asks);
                    let _ = req.respond(
                        Response::from_string(body + "\n")
                            .with_status_code(code)
                            .with_header(json),
                    );
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot start a thread for a reload request: {e}");
            }
            continue;
        }
        let p = published.read().unwrap_or_else(|p| p.into_inner());
        let (exports, down) = (&p.exports, &p.down);
        let r = match (req.method(), path.as_str()) {
            (Method::Get, "/metrics") => {
                Response::from_string(render_with(exports, &reloads.status()))
                    .with_header(text("text/plain; version=0.0.4; charset=utf-8"))
            }
            (Method::Get, "/healthz") => {
                let mut bad: Vec<String> = down.iter().map(NotServed::line).collect();
                bad.extend(health(exports));
                if bad.is_empty() {
                    Response::from_string("ok\n").with_header(text("text/plain"))
                } else {
                    Response::from_string(bad.join("\n") + "\n")
                        .with_status_code(503)
                        .with_header(text("text/plain"))
                }
            }
            (Method::Get, STATUS_PATH) => {
                let mut live = live_status(exports, down);
                live.reloads = reloads.status();
                let body = serde_json::to_string(&live)
                    .expect("plain numbers and strings always serialise");
                Response::from_string(body + "\n").with_header(text("application/json"))
            }
            (Method::Get, _) => Response::from_string(format!(
                "not found: try /metrics, /healthz or {STATUS_PATH} (or POST {RELOAD_PATH})\n"
            ))
            .with_status_code(404),
            _ => Response::from_string(format!("only GET, and POST {RELOAD_PATH}\n"))
                .with_status_code(405),
        };
        drop(p);
        // A scraper that hung up is its own problem.
        let _ = req.respond(r);
    }
}

/// Asks the service for a reload and waits for its outcome: the HTTP status and JSON body.
fn ask_reload(asks: &crossbeam_channel::Sender<ReloadAsk>) -> (u16, String) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let fail = |why: String| {
        (
            503,
            serde_json::json!({ "applied": false, "reason": why }).to_string(),
        )
    };
    if asks.send(tx).is_err() {
        return fail("the service is stopping; nothing was reloaded".into());
    }
    match rx.recv_timeout(RELOAD_WAIT) {
        Ok((true, body)) => (200, body),
        Ok((false, body)) => (409, body),
        Err(_) => fail(format!(
            "the service did not answer within {} s; its log says whether the reload ran",
            RELOAD_WAIT.as_secs()
        )),
    }
}
