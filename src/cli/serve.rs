//! `lostwrite serve DEVICE` or `lostwrite serve --config FILE`: the write-journal sidecar. An
//! NBD server in front of one device, or of every export a TOML file lists (one process per
//! host), recording every write in each export's ledger; with detection of stale reads, a
//! background scrubber, an alert hook and Prometheus metrics. SIGTERM or SIGINT ends it
//! cleanly.

use super::parse_duration;
use lostwrite::block::{validate_block_size, DEFAULT_BLOCK_SIZE};
use lostwrite::device::BlockDevice;
use lostwrite::ledger::compact::Retention;
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use lostwrite::metrics::MetricsListener;
use lostwrite::nbd::proto::MAX_NAME;
use lostwrite::server::listener::Listener;
use lostwrite::server::{Config, Server};
use lostwrite::service::alert::Alerter;
use lostwrite::service::detect::Detector;
use lostwrite::service::retain::Retainer;
use lostwrite::service::scrub::{ScrubOptions, Scrubber};
use lostwrite::service::{Export, ExportOptions, OnMismatch};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// When a record must be durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalSync {
    /// At every FLUSH and FUA (group commit): a host crash may lose the journal tail after the
    /// last flush, which verify reports as `uncertain`.
    #[default]
    Flush,
    /// Before every device write: nothing is ever uncertain, at the cost of a journal sync per
    /// write.
    Strict,
}

/// Flags of `serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The device: a regular file, a block device, or an NBD export
    /// (nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT).
    #[arg(value_name = "DEVICE", required_unless_present = "config")]
    device: Option<String>,
    /// The ledger directory [default: DEVICE.ledger beside the device].
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
    /// Serve every export listed in this TOML file (docs/OPERATIONS.md shows one); everything
    /// else is set there too.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "device", "ledger", "socket", "listen", "export", "read_only", "on_mismatch",
        "journal_sync", "block_size", "device_moved", "threads", "tls_cert", "metrics",
        "scrub_rate", "scrub_interval", "on_finding", "on_finding_interval", "no_record",
        "retain", "retain_bytes",
    ])]
    config: Option<PathBuf>,
    /// Listen on this unix socket (mode 0600) [default: DEVICE.sock].
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Listen on TCP instead (use a loopback or private address: NBD has no authentication
    /// without TLS).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Export name (clients asking for the empty name get it too).
    #[arg(long, value_name = "NAME", default_value = "")]
    export: String,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
    /// What a read of a block that lost its latest write does: log it, or refuse the read
    /// with EIO. Either way it is classified and kept in the ledger's findings log.
    #[arg(long, value_enum, default_value_t = OnMismatch::Log)]
    on_mismatch: OnMismatch,
    /// When journal records are made durable.
    #[arg(long, value_enum, default_value_t = JournalSync::Flush)]
    journal_sync: JournalSync,
    /// Block size of a ledger created by this command [default: 4096]; an existing ledger keeps
    /// its own, and a different value here is refused.
    #[arg(long, value_name = "BYTES")]
    block_size: Option<u64>,
    /// Accept a device whose identity differs from the ledger's (same disk, moved or copied).
    #[arg(long)]
    device_moved: bool,
    /// Worker threads executing requests [default: 4 per core, at least 8; at least 32 in
    /// front of an NBD upstream].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Require TLS (NBD STARTTLS, TLS 1.3) with this certificate chain (PEM); nothing, not even
    /// the export list, is offered to a client before TLS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (and /healthz).
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<String>,
    /// Scrub the device in the background at this many MiB/s, reading the media (O_DIRECT).
    #[arg(long, value_name = "MIB_PER_S")]
    scrub_rate: Option<f64>,
    /// Time from the start of one scrub pass to the next, e.g. 24h, 30m, 0s for back to back
    /// [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "scrub_rate")]
    scrub_interval: Option<Duration>,
    /// Run `sh -c CMD` with every new finding as JSON on standard input (to page someone).
    #[arg(long, value_name = "CMD")]
    on_finding: Option<String>,
    /// Run the --on-finding command at most once per this long; findings in between are
    /// gathered into the next run.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    on_finding_interval: Duration,
    /// Keep the journal's record-by-record history for this long (e.g. 30d); older history is
    /// folded into each block's latest change (docs/OPERATIONS.md, "Retention").
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retain: Option<Duration>,
    /// Keep the journal within about this many bytes (e.g. 10G), folding the oldest history.
    #[arg(long, value_name = "BYTES", value_parser = super::parse_size)]
    retain_bytes: Option<u64>,
    /// Serve without recording anything (to measure what the ledger costs; nothing is
    /// verifiable afterwards).
    #[arg(long, hide = true)]
    no_record: bool,
}

/// The `--config` file: the listener and host-wide settings, then one `[[export]]` table each.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Unix socket to listen on.
    pub socket: Option<PathBuf>,
    /// TCP HOST:PORT to listen on (instead of, or with, the socket).
    pub listen: Option<String>,
    /// Prometheus endpoint HOST:PORT.
    pub metrics: Option<String>,
    /// Alert hook command.
    pub on_finding: Option<String>,
    /// Least time between hook runs, e.g. "60s".
    #[serde(default, deserialize_with = "de_duration")]
    pub on_finding_interval: Option<Duration>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA for client certificates (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// How long an NBD upstream may take to connect or answer, e.g. "30s" (the global
    /// --upstream-timeout flag, which this overrides).
    #[serde(default, deserialize_with = "de_duration")]
    pub upstream_timeout: Option<Duration>,
    /// The exports.
    #[serde(default)]
    pub export: Vec<ExportSpec>,
}

/// One export of a config file (or of the command line).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// Name clients ask for (required, and not empty, in a config file; on the command line
    /// it defaults to the empty name).
    #[serde(default)]
    pub name: String,
    /// Device path or NBD URI.
    pub device: String,
    /// Ledger directory [default: DEVICE.ledger].
    pub ledger: Option<PathBuf>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// "log" or "error".
    #[serde(default)]
    pub on_mismatch: OnMismatch,
    /// "flush" or "strict".
    #[serde(default)]
    pub journal_sync: JournalSync,
    /// Block size of a ledger made now.
    pub block_size: Option<u64>,
    /// Accept a device whose identity differs from the ledger's.
    #[serde(default)]
    pub device_moved: bool,
    /// Scrub rate in MiB/s.
    pub scrub_rate: Option<f64>,
    /// Time between scrub pass starts, e.g. "24h".
    #[serde(default, deserialize_with = "de_duration")]
    pub scrub_interval: Option<Duration>,
    /// Journal history to keep, e.g. "30d".
    #[serde(default, deserialize_with = "de_duration")]
    pub retain: Option<Duration>,
    /// Journal bytes to keep, e.g. "10G" or 10737418240.
    #[serde(default, deserialize_with = "de_size")]
    pub retain_bytes: Option<u64>,
    /// Do not record (benchmarks only).
    #[serde(skip)]
    pub no_record: bool,
}

impl ExportSpec {
    /// The retention it asks for.
    pub fn retention(&self) -> Retention {
        Retention {
            age: self.retain,
            bytes: self.retain_bytes,
        }
    }
}

impl Args {
    /// The command line as a one-export config.
    fn into_config(self) -> anyhow::Result<ServeConfig> {
        let device = self.device.expect("clap requires DEVICE without --config");
        if self.export.len() > MAX_NAME {
            anyhow::bail!(
                "--export: a name of {} bytes is longer than NBD allows ({MAX_NAME} bytes); give a shorter one",
                self.export.len()
            );
        }
        if device.contains("://") && self.socket.is_none() && self.listen.is_none() {
            anyhow::bail!(
                "{device}: an NBD URI has no path to put a socket beside; give --socket PATH or --listen HOST:PORT"
            );
        }
        let socket = match (&self.socket, &self.listen) {
            (None, None) => Some(PathBuf::from(format!("{device}.sock"))),
            (s, _) => s.clone(),
        };
        Ok(ServeConfig {
            socket,
            listen: self.listen,
            metrics: self.metrics,
            on_finding: self.on_finding,
            on_finding_interval: Some(self.on_finding_interval),
            threads: self.threads,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_client_ca: self.tls_client_ca,
            upstream_timeout: None,
            export: vec![ExportSpec {
                name: self.export,
                device,
                ledger: self.ledger,
                read_only: self.read_only,
                on_mismatch: self.on_mismatch,
                journal_sync: self.journal_sync,
                block_size: self.block_size,
                device_moved: self.device_moved,
                scrub_rate: self.scrub_rate,
                scrub_interval: self.scrub_interval,
                retain: self.retain,
                retain_bytes: self.retain_bytes,
                no_record: self.no_record,
            }],
        })
    }
}

/// Reads and checks a `--config` file.
pub fn read_config(path: &Path) -> anyhow::Result<ServeConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
    let c: ServeConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
    if c.export.is_empty() {
        anyhow::bail!(
            "--config {}: no [[export]] tables; list at least one (name, device, ledger)",
            path.display()
        );
    }
    if c.upstream_timeout.is_some_and(|t| t.is_zero()) {
        anyhow::bail!(
            "--config {}: upstream_timeout must be longer than zero (e.g. \"30s\")",
            path.display()
        );
    }
    if c.socket.is_none() && c.listen.is_none() {
        anyhow::bail!(
            "--config {}: say where to listen: socket = \"PATH\" or listen = \"HOST:PORT\"",
            path.display()
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, e) in c.export.iter().enumerate() {
        let which = format!(
            "--config {}: [[export]] number {} (device {:?})",
            path.display(),
            i + 1,
            e.device
        );
        let n = e.name.as_str();
        if n.is_empty() {
            anyhow::bail!(
                "{which} has no name; give it one (name = \"disk1\"): clients ask for an export by name"
            );
        }
        if n.len() > MAX_NAME {
            anyhow::bail!(
                "{which}: its name of {} bytes is longer than NBD allows ({MAX_NAME} bytes); give a shorter one",
                n.len()
            );
        }
        if !names.insert(n) {
            anyhow::bail!("{which}: export name {n:?} is used twice");
        }
    }
    Ok(c)
}

/// Opens one export's device and ledger and begins its session.
fn open_export(spec: &ExportSpec) -> anyhow::Result<Export> {
    let bs = validate_block_size(spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE as u64))?;
    let dev = lostwrite::device::open(&spec.device, !spec.read_only)
        .map_err(|e| read_only_hint(spec, e))?;
    // Read-only, it still judges every read against its ledger: a writer beside it would make
    // every block it writes look stale. A shared claim keeps writers out, not other readers.
    if spec.read_only && !spec.no_record {
        dev.claim()?;
    }
    let ledger = if spec.no_record {
        tracing::warn!("--no-record: writes are NOT recorded; nothing served now can be verified");
        None
    } else {
        let dir = super::resolve_ledger(Some(&spec.device), spec.ledger.as_ref())?;
        if !dir.exists() {
            Ledger::create(&dir, dev.identity(), dev.size(), bs, None)?;
            let blocks = dev.size().div_ceil(bs as u64);
            tracing::warn!(
                "created ledger {} without a baseline: the device's {blocks} blocks are untracked until written through this service. To track every block from the start, stop now, remove {} and run `lostwrite init --baseline {}`",
                dir.display(),
                dir.display(),
                spec.device
            );
        }
        let mut opts = OpenOptions::new(Access::Write);
        opts.device_moved = spec.device_moved;
        opts.segment_bytes = spec.retention().segment_bytes();
        let l = LedgerWriter::open(&dir, Some((dev.identity(), dev.size())), opts)?;
        if spec.block_size.is_some() && l.geometry().block_size != bs {
            anyhow::bail!(
                "--block-size {bs}: the ledger {} uses {}-byte blocks, and a ledger's block size cannot change; drop --block-size, or make a new ledger elsewhere with `lostwrite init --block-size {bs}`",
                dir.display(),
                l.geometry().block_size
            );
        }
        for w in &l.recovery().warnings {
            tracing::warn!("{w}");
        }
        let l = l.begin_session(spec.journal_sync == JournalSync::Strict)?;
        let session = l.id();
        let geo = l.geometry();
        let untracked = (0..geo.block_count())
            .filter(|&b| !matches!(l.state(b), BlockState::Tracked { .. }))
            .count();
        tracing::info!(
            "ledger {}: session {session}, {} blocks of {} bytes, {untracked} not tracked yet{}",
            dir.display(),
            geo.block_count(),
            geo.block_size,
            if l.recovery().previous_clean {
                ""
            } else {
                "; the previous session did not end cleanly"
            }
        );
        Some(l)
    };
    Ok(Export::new(
        Box::new(dev),
        ledger,
        ExportOptions {
            name: spec.name.clone(),
            read_only: spec.read_only,
            on_mismatch: spec.on_mismatch,
        },
    ))
}

/// A device that cannot be opened for writing but can be for reading (immutable, on a read-only
/// file system, or without write permission) may be what the operator meant to serve read-only.
fn read_only_hint(spec: &ExportSpec, e: lostwrite::Error) -> anyhow::Error {
    use nix::libc::{EACCES, EPERM, EROFS};
    let denied = matches!(e.raw_os_error(), Some(EPERM | EACCES | EROFS));
    if spec.read_only || !denied || std::fs::File::open(&spec.device).is_err() {
        return e.into();
    }
    anyhow::anyhow!(
        "{e}; it can be opened for reading only (immutable, a read-only file system, or no write permission): serve it with --read-only (read_only = true in a config), or make it writable (chattr -i, remount, chmod)"
    )
}

/// A byte count in a config file: an integer, or a string as the command line reads one.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => super::parse_size(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A duration in a config file, read as the command line reads one ("30s", "24h").
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let (config, many) = match &a.config {
        Some(p) => (read_config(p)?, true),
        None => (a.into_config()?, false),
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(lostwrite::server::tls::server_config(
            c,
            k,
            config.tls_client_ca.as_deref(),
        )?),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
    };
    // Everything that can fail for reasons of configuration or of the host (bad values, a
    // socket or port in use) is checked before any ledger is opened: a session begun and then
    // abandoned would count as a crash and weaken later verdicts.
    let mut scrub = Vec::new();
    for spec in &config.export {
        scrub.push(match spec.scrub_rate {
            Some(r) if !(r >= 1.0 / 1024.0 && r.is_finite()) => anyhow::bail!(
                "scrub rate {r} MiB/s for {}: give at least 1/1024 MiB/s",
                spec.device
            ),
            Some(r) => Some(ScrubOptions {
                rate: (r * (1u64 << 20) as f64) as u64,
                interval: spec
                    .scrub_interval
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            }),
            None => None,
        });
    }
    let alert_interval = config
        .on_finding_interval
        .unwrap_or(Duration::from_secs(60));
    let mut listeners = Vec::new();
    let cleanup = |ls: &[Listener]| ls.iter().for_each(|l| l.cleanup());
    if let Some(path) = &config.socket {
        listeners.push(
            Listener::unix(path).map_err(|e| anyhow::anyhow!("socket {}: {e}", path.display()))?,
        );
    }
    if let Some(addr) = &config.listen {
        match Listener::tcp(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                cleanup(&listeners);
                anyhow::bail!("listen {addr}: {e}");
            }
        }
    }
    let metrics_listener = match config.metrics.as_deref().map(MetricsListener::bind) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            cleanup(&listeners);
            return Err(e.into());
        }
    };
    if let Some(t) = config.upstream_timeout {
        lostwrite::nbd::client::set_timeout(t);
    }
    let stop = watch_signals()?;
    // A signal during start ends the start: exports already open are closed cleanly.
    let mut early = None;
    let stopped = |early: &mut Option<i32>| {
        if let Ok(s) = stop.try_recv() {
            *early = Some(s);
        }
        early.is_some()
    };
    let mut exports = Vec::new();
    let mut scrub_of = Vec::new();
    let mut retain_of = Vec::new();
    let mut down = Vec::new();
    for (spec, scrub_opts) in config.export.iter().zip(scrub) {
        if stopped(&mut early) {
            break;
        }
        match open_export(spec) {
            Err(e) if stopped(&mut early) => {
                tracing::warn!("export {:?} ({}) not opened: {e}", spec.name, spec.device);
                break;
            }
            Ok(e) => {
                exports.push(Arc::new(e));
                scrub_of.push(scrub_opts);
                retain_of.push(spec.retention());
            }
            // With many disks, one that cannot be opened must not keep the others offline.
            Err(e) if many => {
                let why = format!(
                    "export {:?} ({}) is NOT served: {e}",
                    spec.name, spec.device
                );
                tracing::error!("{why}");
                down.push(why);
            }
            Err(e) => {
                cleanup(&listeners);
                return Err(e);
            }
        }
    }
    if exports.is_empty() {
        cleanup(&listeners);
        if let Some(s) = early {
            tracing::info!("signal {s} during start: stopped before serving anything");
            return Ok(0);
        }
        anyhow::bail!("no export could be opened (see the errors above)");
    }
    let alerter = config
        .on_finding
        .as_ref()
        .map(|cmd| Alerter::start(cmd.clone(), alert_interval));
    let detectors: Vec<Detector> = exports
        .iter()
        .filter(|e| e.ledger().is_some())
        .map(|e| Detector::start(e, alerter.as_ref().map(|a| a.sink())))
        .collect();
    let mut scrubbers = Vec::new();
    for (e, opts) in exports.iter().zip(&scrub_of) {
        if let Some(o) = opts {
            match Scrubber::start(e, *o) {
                Ok(s) => scrubbers.push(s),
                Err(err) => tracing::error!("{}: NOT scrubbed: {err}", label(e.name())),
            }
            tracing::info!(
                "{}: scrubbing at {:.1} MiB/s, a pass every {}",
                label(e.name()),
                o.rate as f64 / (1u64 << 20) as f64,
                super::show_duration(o.interval)
            );
        }
    }
    let mut retainers = Vec::new();
    for (e, keep) in exports.iter().zip(&retain_of) {
        if keep.is_none() || e.ledger().is_none() {
            continue;
        }
        match Retainer::start(e, *keep) {
            Ok(r) => {
                tracing::info!(
                    "{}: retaining {}{}{} of journal history",
                    label(e.name()),
                    keep.age.map(super::show_duration).unwrap_or_default(),
                    if keep.age.is_some() && keep.bytes.is_some() {
                        " and at most "
                    } else {
                        ""
                    },
                    keep.bytes.map(|b| format!("{b} bytes")).unwrap_or_default()
                );
                retainers.push(r);
            }
            Err(err) => tracing::error!("{}: NO retention: {err}", label(e.name())),
        }
    }
    let metrics = match metrics_listener {
        Some(m) => {
            tracing::info!("metrics on http://{}/metrics", m.addr());
            Some(m.start(exports.clone(), down)?)
        }
        None => None,
    };
    for e in &exports {
        tracing::info!(
            "serving {} as {}{}",
            e.device_name(),
            label(e.name()),
            if e.read_only() { " (read-only)" } else { "" }
        );
    }
    for l in &listeners {
        if tls.is_none() && !l.loopback_only() {
            tracing::warn!(
                "{} is not a loopback address and TLS is off: anyone who can reach it can read and overwrite the device, unauthenticated and unencrypted. Give --tls-cert and --tls-key (tls_cert, tls_key in a config), or listen on a loopback address or a unix socket",
                l.describe()
            );
        }
        tracing::info!(
            "listening on {}{}",
            l.describe(),
            match (&tls, &config.tls_client_ca) {
                (Some(_), Some(_)) => ", TLS required, client certificates required",
                (Some(_), None) => ", TLS required",
                _ => "",
            }
        );
    }
    let mut server_config = Config::default();
    if exports.iter().any(|e| !e.quick_writes()) {
        // Workers mostly wait for the upstream's replies: enough of them to keep a deep queue.
        server_config.workers = server_config.workers.max(32);
    }
    if let Some(t) = config.threads {
        server_config.workers = t.max(1);
    }
    server_config.tls = tls;
    let server = Server::start(exports, listeners, server_config);
    let sig = match early {
        Some(s) => s,
        None => {
            sd_notify("READY=1");
            stop.recv().unwrap_or(0)
        }
    };
    sd_notify("STOPPING=1");
    tracing::info!(
        "signal {sig}: finishing requests in flight and closing the ledger within {} s (a second signal exits at once, leaving the session unclosed)",
        STOP_BOUND.as_secs()
    );
    let exports = server.shutdown();
    for s in scrubbers {
        s.stop();
    }
    for r in retainers {
        r.stop();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    for d in detectors {
        d.finish();
    }
    if let Some(a) = alerter {
        a.finish();
    }
    let mut status = 0;
    for e in exports {
        let e =
            Arc::try_unwrap(e).map_err(|_| anyhow::anyhow!("export still in use at shutdown"))?;
        let c = &e.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let unclassified = match load(&c.suspects_dropped) {
            0 => String::new(),
            n => format!(
                " ({n} of them unclassified, the detection queue being full: run `lostwrite verify`)"
            ),
        };
        let logs = match lostwrite::logsink::dropped() {
            0 => String::new(),
            n => format!(", {n} log lines dropped (stderr full, closed or failing)"),
        };
        let summary = format!(
            "{} writes ({} bytes), {} reads, {} flushes, {} stale reads{unclassified}, {} findings, {} errors{logs}",
            load(&c.writes),
            load(&c.written_bytes),
            load(&c.reads),
            load(&c.flushes),
            load(&c.read_mismatches),
            c.findings.iter().map(load).sum::<u64>(),
            load(&c.errors),
        );
        let name = label(e.name());
        let failure = e.ledger().and_then(|l| l.session_failure());
        if let Err(err) = e.close() {
            tracing::error!("{name}: closing: {err}");
            status = 1;
            continue;
        }
        match failure {
            None => tracing::info!("{name} closed cleanly: {summary}"),
            Some(why) => {
                tracing::error!(
                    "{name}: the session is left unclosed, so the next start and `verify` treat it as a crash: {why}; {summary}"
                );
                status = 1;
            }
        }
    }
    Ok(status)
}

/// How long after SIGTERM anything still waits for an NBD upstream.
const UPSTREAM_STOP_GRACE: Duration = Duration::from_secs(20);

/// What docs/OPERATIONS.md promises: SIGTERM ends `serve` within this (plus the local disk's
/// own sync time), whatever clients and upstreams do.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// Starts a thread that turns SIGTERM and SIGINT into a message on the returned channel. From
/// the first one on, nothing waits for an NBD upstream for ever (connections being made give
/// up at once, requests after [`UPSTREAM_STOP_GRACE`]); a second one exits at once.
fn watch_signals() -> anyhow::Result<crossbeam_channel::Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for s in signals.forever() {
                if seen {
                    tracing::error!(
                        "signal {s} again: exiting without closing the session (the next start treats it as a crash)"
                    );
                    lostwrite::logsink::QueuedStderr::flush(std::time::Duration::from_millis(500));
                    std::process::exit(1);
                }
                seen = true;
                lostwrite::nbd::client::abort_connecting();
                lostwrite::nbd::client::stop_by(UPSTREAM_STOP_GRACE);
                let _ = tx.send(s);
            }
        })?;
    Ok(rx)
}

/// An export as log lines name it: `export "web1"`, or `the unnamed export`.
fn label(name: &str) -> String {
    if name.is_empty() {
        "the unnamed export".into()
    } else {
        format!("export {name:?}")
    }
}

/// Tells systemd (Type=notify) how the service stands; nothing without $NOTIFY_SOCKET.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("sd_notify: {e}");
            return;
        }
    };
    let r = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        // An abstract socket name.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = r {
        tracing::warn!("sd_notify {state}: {e}");
    }
}
