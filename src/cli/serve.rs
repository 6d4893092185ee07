//! `lostwrite serve DEVICE` or `lostwrite serve --config FILE`: the write-journal sidecar. An
//! NBD server in front of one device, or of every export a TOML file lists (one process per
//! host), recording every write in each export's ledger; with detection of stale reads, a
//! background scrubber, an alert hook and Prometheus metrics. SIGTERM or SIGINT ends it
//! cleanly; SIGHUP (or `lostwrite reload`, through the metrics endpoint) re-reads the
//! `--config` file and applies it without a restart.
//!
//! This file only turns the flags (or the `--config` file) into a [`ServeConfig`], starts a
//! [`Host`] with it, hands it reloads, and stops it at a signal: the host (src/host/) owns the
//! server's life. What belongs to the process stays here: the signal handlers (a second signal
//! exits at once) and systemd's notifications.

use super::parse_duration;
use lostwrite::device::CacheMode;
use lostwrite::host::{Closed, ExportSpec, Host, JournalSync, Reloaded, ServeConfig, Started};
use lostwrite::nbd::proto::MAX_NAME;
use lostwrite::service::OnMismatch;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        "journal_sync", "cache", "block_size", "device_moved", "threads", "tls_cert", "metrics",
        "scrub_rate", "scrub_interval", "on_finding", "on_finding_interval", "no_record",
        "retain", "retain_bytes", "keep_data", "keep_data_dir",
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
    /// How the device uses the host's page cache (qemu's names): writeback, or none for
    /// O_DIRECT (a file or block device; refused, naming why, where direct I/O is impossible).
    #[arg(long, value_enum, default_value_t = CacheMode::Writeback)]
    cache: CacheMode,
    /// Block size of a ledger created by this command [default: 4096]; an existing ledger keeps
    /// its own, and a different value here is refused.
    #[arg(long, value_name = "BYTES")]
    block_size: Option<u64>,
    /// Accept a device whose identity differs from the ledger's (same disk, moved or copied).
    #[arg(long)]
    device_moved: bool,
    /// Worker threads executing requests [default: 4 per core, at least 8; at least 32 in
    /// front of an NBD upstream or with --cache none].
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
    /// Keep the contents of written blocks, compressed, for this long (e.g. 7d) or within
    /// this many bytes (an upper-case unit: 512M, 10G), so `repair` can give lost writes back
    /// (docs/OPERATIONS.md, "Keeping data").
    #[arg(long, value_name = "DURATION|BYTES", value_parser = lostwrite::host::config::parse_keep)]
    keep_data: Option<lostwrite::ledger::kept::Keep>,
    /// Keep the data log in this directory (another failure domain than the device, as for the
    /// ledger) instead of data/ in the ledger; the ledger's `data` becomes a link to it.
    #[arg(long, value_name = "DIR", requires = "keep_data")]
    keep_data_dir: Option<PathBuf>,
    /// Serve without recording anything (to measure what the ledger costs; nothing is
    /// verifiable afterwards).
    #[arg(long, hide = true)]
    no_record: bool,
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
            serve_what_opens: false,
            export: vec![ExportSpec {
                name: self.export,
                device,
                ledger: self.ledger,
                read_only: self.read_only,
                on_mismatch: self.on_mismatch,
                journal_sync: self.journal_sync,
                cache: self.cache,
                block_size: self.block_size,
                device_moved: self.device_moved,
                scrub_rate: self.scrub_rate,
                scrub_interval: self.scrub_interval,
                retain: self.retain,
                retain_bytes: self.retain_bytes,
                keep_data: self.keep_data,
                keep_data_dir: self.keep_data_dir,
                no_record: self.no_record,
            }],
        })
    }
}

/// Turns the flags or the config file into a host, serves until a signal, then stops it: exit
/// status 0 when every export closed cleanly, 1 when one did not.
pub fn run(a: Args) -> anyhow::Result<i32> {
    // Reloads re-read this file wherever the working directory goes; absolute in messages.
    let path = a
        .config
        .as_ref()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
    let config = match &a.config {
        Some(p) => lostwrite::host::config::read_config(p)?,
        None => a.into_config()?,
    };
    let bound = Host::bind(config)?;
    let (stop, hup) = watch_signals()?;
    let mut host = match bound.start(&stop)? {
        Started::Serving(host) => host,
        Started::Interrupted(_) => return Ok(0),
    };
    let mut asks = host.reload_asks().clone();
    let sig = match host.interrupted() {
        Some(s) => s,
        None => {
            sd_notify("READY=1");
            loop {
                crossbeam_channel::select! {
                    recv(stop) -> s => break s.unwrap_or(0),
                    recv(hup) -> _ => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        reload(&mut host, path.as_deref());
                    }
                    recv(asks) -> ask => {
                        let Ok(ask) = ask else {
                            // Without a metrics endpoint nothing can ask, and a disconnected
                            // channel is always ready: selecting on it would spin this thread.
                            asks = crossbeam_channel::never();
                            continue;
                        };
                        tracing::info!("reload asked for through the metrics endpoint");
                        let r = reload(&mut host, path.as_deref());
                        let body = serde_json::to_string(&r).unwrap_or_default();
                        let _ = ask.send((r.applied, body));
                    }
                }
            }
        }
    };
    sd_notify("STOPPING=1");
    tracing::info!(
        "signal {sig}: finishing requests in flight and closing the ledger within {} s (a second signal exits at once, leaving the session unclosed)",
        STOP_BOUND.as_secs()
    );
    let closed = host.stop()?;
    Ok(if closed.iter().all(Closed::is_clean) {
        0
    } else {
        1
    })
}

/// Re-reads the `--config` file and applies it, telling systemd while it does; without one
/// there is nothing to re-read.
fn reload(host: &mut Host, config: Option<&Path>) -> Reloaded {
    let Some(path) = config else {
        let r = Reloaded {
            config: "the command line".into(),
            reason: Some(
                "serve was started without --config: there is no file to re-read; restart it to change its flags".into(),
            ),
            ..Reloaded::default()
        };
        tracing::warn!("{}", r.line());
        return r;
    };
    sd_notify("RELOADING=1");
    let r = host.reload(path);
    sd_notify("READY=1");
    r
}

/// How long after SIGTERM anything still waits for an NBD upstream.
const UPSTREAM_STOP_GRACE: Duration = Duration::from_secs(20);

/// What docs/OPERATIONS.md promises: SIGTERM ends `serve` within this (plus the local disk's
/// own sync time), whatever clients and upstreams do.
const STOP_BOUND: Duration = Duration::from_secs(30);

/// Starts a thread that turns SIGTERM and SIGINT into a message on the first returned channel,
/// and SIGHUP into one on the second (several before a reload runs make one reload). From the
/// first stop signal on, nothing waits for an NBD upstream for ever (connections being made
/// give up at once, requests after [`UPSTREAM_STOP_GRACE`]); a second one exits at once.
type Signals = (
    crossbeam_channel::Receiver<i32>,
    crossbeam_channel::Receiver<()>,
);

fn watch_signals() -> anyhow::Result<Signals> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (hup_tx, hup_rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for s in signals.forever() {
                if s == signal_hook::consts::SIGHUP {
                    let _ = hup_tx.try_send(());
                    continue;
                }
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
    Ok((rx, hup_rx))
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
