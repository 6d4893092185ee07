//! A server's whole life, above the server and the metrics endpoint and below the command
//! line: [`Host`] checks a [`ServeConfig`], binds its listeners, opens its exports, starts what
//! runs beside them (online detection, scrubbers, retention, the alert hook, metrics) and the
//! NBD [`Server`], and stops all of it in one fixed order, reporting how each export ended
//! ([`Closed`]). `serve` and `demo` both start their servers here.
//!
//! Starting has two steps. [`Host::bind`] does everything that can fail for reasons of
//! configuration or of the host (bad values, TLS files, a socket or port in use) before any
//! ledger is opened: a session begun and then abandoned would count as a crash and weaken later
//! verdicts. [`Bound::start`] then opens the exports and starts serving.
//!
//! Signals are the process's business, not the host's: the CLI installs its handlers (and the
//! second signal's exit, and systemd's notifications), then hands [`Bound::start`] the channel
//! they feed. The host only polls it between exports, so a signal during start ends the start
//! (exports already open are closed cleanly by [`Host::stop`]); a library that installed
//! process-wide signal handlers would surprise any other program embedding it, and `demo` has
//! none to install.
//!
//! The exports are a collection the host owns (each with the helpers that run for it), not a
//! fixed wiring: [`Host::reload`] opens, closes and restarts exports of a running host, and
//! publishes the new list to the server and the metrics endpoint. A reload is asked for
//! through [`Host::reload_asks`] (the metrics endpoint's `POST /reload`) or by the CLI's
//! SIGHUP; the host itself never reads a signal.
//!
//! The files: `mod.rs` (starting and stopping), [`config`] (what to serve, and its text forms),
//! `open.rs` (opening one export), [`reload`] (a new configuration on a running host),
//! [`closed`] (what a stop reports).

pub mod closed;
pub mod config;
mod open;
pub mod reload;

pub use closed::{Closed, Outcome, Summary};
pub use config::{ExportSpec, JournalSync, ServeConfig};
pub use reload::Reloaded;

use crate::error::{Error, Result};
use crate::metrics::{MetricsListener, MetricsServer, NotServed, ReloadAsk, Reloads};
use crate::server::listener::Listener;
use crate::server::{Config, Server};
use crate::service::alert::Alerter;
use crate::service::detect::Detector;
use crate::service::retain::Retainer;
use crate::service::scrub::{ScrubOptions, Scrubber};
use crate::service::Export;
use config::show_duration;
use crossbeam_channel::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A host whose configuration is checked and whose listeners (and metrics endpoint) are bound;
/// no ledger is open yet.
pub struct Bound {
    config: ServeConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    scrub: Vec<Option<ScrubOptions>>,
    alert_interval: Duration,
    listeners: Vec<Listener>,
    metrics: Option<MetricsListener>,
}

/// How a start ended.
// Made once per process and unpacked at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Started {
    /// Serving (perhaps only some of the exports: see [`ServeConfig::serve_what_opens`]).
    Serving(Host),
    /// A signal arrived before any export was open: nothing is served, and nothing needs
    /// closing. The signal's number.
    Interrupted(i32),
}

/// A running server and everything that runs beside it.
pub struct Host {
    server: Server,
    exports: Vec<Hosted>,
    /// Exports of the configuration that are not served, and why.
    down: Vec<NotServed>,
    /// The configuration served now (the last one applied).
    config: ServeConfig,
    alerter: Option<Alerter>,
    metrics: Option<MetricsServer>,
    reloads: Arc<Reloads>,
    asks: Receiver<ReloadAsk>,
    interrupted: Option<i32>,
}

/// One export as its host serves it: its settings, the export and the helpers that run for it.
struct Hosted {
    spec: ExportSpec,
    export: Arc<Export>,
    detector: Option<Detector>,
    scrubber: Option<Scrubber>,
    retainer: Option<Retainer>,
}

impl Host {
    /// Checks `config` and binds its listeners and metrics endpoint; opens nothing.
    pub fn bind(config: ServeConfig) -> Result<Bound> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(crate::server::tls::server_config(
                c,
                k,
                config.tls_client_ca.as_deref(),
            )?),
            (None, None) => None,
            _ => return Err(Error::Usage("TLS needs both tls_cert and tls_key".into())),
        };
        let scrub = config
            .export
            .iter()
            .map(scrub_options)
            .collect::<Result<Vec<_>>>()?;
        let alert_interval = config
            .on_finding_interval
            .unwrap_or(Duration::from_secs(60));
        let mut listeners = Vec::new();
        if let Some(path) = &config.socket {
            listeners.push(
                Listener::unix(path)
                    .map_err(|e| Error::Usage(format!("socket {}: {e}", path.display())))?,
            );
        }
        if let Some(addr) = &config.listen {
            match Listener::tcp(addr) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    cleanup(&listeners);
                    return Err(Error::Usage(format!("listen {addr}: {e}")));
                }
            }
        }
        let metrics = match config.metrics.as_deref().map(MetricsListener::bind) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                cleanup(&listeners);
                return Err(e);
            }
        };
        if let Some(t) = config.upstream_timeout {
            crate::nbd::client::set_timeout(t);
        }
        Ok(Bound {
            config,
            tls,
            scrub,
            alert_interval,
            listeners,
            metrics,
        })
    }

    /// [`Host::bind`], then [`Bound::start`].
    pub fn start(config: ServeConfig, stop: &Receiver<i32>) -> Result<Started> {
        Host::bind(config)?.start(stop)
    }

    /// The signal that arrived while it started, if one did: the caller should stop it at
    /// once rather than wait for another.
    pub fn interrupted(&self) -> Option<i32> {
        self.interrupted
    }

    /// The exports it serves, in the order of its configuration.
    pub fn exports(&self) -> impl Iterator<Item = &Arc<Export>> {
        self.exports.iter().map(|h| &h.export)
    }

    /// Reload requests from the metrics endpoint's `POST /reload`: each is answered (by
    /// whoever calls [`Host::reload`]) on the channel it carries.
    pub fn reload_asks(&self) -> &Receiver<ReloadAsk> {
        &self.asks
    }

    /// Stops serving and closes every export, in this order: the server (requests already
    /// read are answered), the scrubbers, the retainers, the metrics endpoint, online
    /// detection (findings still queued are classified), the alert hook (its last run made),
    /// and then each export's device and ledger (its closing line logged). Returns how each
    /// export ended; an error only if an export is still in use, which would be a bug.
    pub fn stop(self) -> Result<Vec<Closed>> {
        let Host {
            server,
            mut exports,
            alerter,
            metrics,
            ..
        } = self;
        drop(server.shutdown());
        for s in exports.iter_mut().filter_map(|h| h.scrubber.take()) {
            s.stop();
        }
        for r in exports.iter_mut().filter_map(|h| h.retainer.take()) {
            r.stop();
        }
        if let Some(m) = metrics {
            m.stop();
        }
        for d in exports.iter_mut().filter_map(|h| h.detector.take()) {
            d.finish();
        }
        if let Some(a) = alerter {
            a.finish();
        }
        let mut closed = Vec::new();
        for h in exports {
            closed.push(close(sole(h.export)?));
        }
        Ok(closed)
    }
}

impl Bound {
    /// Opens the exports, polling `stop` between them (a signal ends the start), and starts
    /// detection, scrubbers, retention, the alert hook, metrics and the server. Without
    /// [`ServeConfig::serve_what_opens`], an export that cannot open fails the start; with it,
    /// the start fails only if none opens.
    pub fn start(self, stop: &Receiver<i32>) -> Result<Started> {
        let Bound {
            config,
            tls,
            scrub,
            alert_interval,
            listeners,
            metrics,
        } = self;
        // A signal during start ends the start: exports already open are closed cleanly.
        let mut early = None;
        let stopped = |early: &mut Option<i32>| {
            if let Ok(s) = stop.try_recv() {
                *early = Some(s);
            }
            early.is_some()
        };
        let mut opened = Vec::new();
        let mut down = Vec::new();
        for (spec, scrub_opts) in config.export.iter().zip(scrub) {
            if stopped(&mut early) {
                break;
            }
            match open::open_export(spec) {
                Err(e) if stopped(&mut early) => {
                    tracing::warn!("export {:?} ({}) not opened: {e}", spec.name, spec.device);
                    break;
                }
                Ok(e) => opened.push((spec.clone(), Arc::new(e), scrub_opts)),
                // With many disks, one that cannot be opened must not keep the others offline.
                Err(e) if config.serve_what_opens => {
                    let why = NotServed {
                        export: spec.name.clone(),
                        device: spec.device.clone(),
                        reason: e.to_string(),
                    };
                    tracing::error!("{}", why.line());
                    down.push(why);
                }
                Err(e) => {
                    cleanup(&listeners);
                    return Err(e);
                }
            }
        }
        if opened.is_empty() {
            cleanup(&listeners);
            if let Some(s) = early {
                tracing::info!("signal {s} during start: stopped before serving anything");
                return Ok(Started::Interrupted(s));
            }
            return Err(Error::Usage(
                "no export could be opened (see the errors above)".into(),
            ));
        }
        let alerter = config
            .on_finding
            .as_ref()
            .map(|cmd| Alerter::start(cmd.clone(), alert_interval));
        let exports: Vec<Hosted> = opened
            .into_iter()
            .map(|(spec, e, opts)| hosted(spec, e, opts, alerter.as_ref()))
            .collect();
        let served: Vec<Arc<Export>> = exports.iter().map(|h| h.export.clone()).collect();
        let reloads = Arc::new(Reloads::default());
        let (ask, asks) = crossbeam_channel::unbounded();
        let metrics = match metrics {
            Some(m) => {
                tracing::info!("metrics on http://{}/metrics", m.addr());
                Some(m.start(served.clone(), down.clone(), reloads.clone(), ask)?)
            }
            None => None,
        };
        for e in &served {
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
        if served.iter().any(|e| !e.quick_writes()) {
            // Workers mostly wait for an upstream's replies or the media (--cache none): enough
            // of them to keep a deep queue.
            server_config.workers = server_config.workers.max(32);
        }
        if let Some(t) = config.threads {
            server_config.workers = t.max(1);
        }
        server_config.tls = tls;
        let server = Server::start(served, listeners, server_config);
        Ok(Started::Serving(Host {
            server,
            exports,
            down,
            config,
            alerter,
            metrics,
            reloads,
            asks,
            interrupted: early,
        }))
    }
}

/// A spec's scrub rate and interval, checked.
fn scrub_options(spec: &ExportSpec) -> Result<Option<ScrubOptions>> {
    Ok(match spec.scrub_rate {
        Some(r) if !(r >= 1.0 / 1024.0 && r.is_finite()) => {
            return Err(Error::Usage(format!(
                "scrub rate {r} MiB/s for {}: give at least 1/1024 MiB/s",
                spec.device
            )))
        }
        Some(r) => Some(ScrubOptions {
            rate: (r * (1u64 << 20) as f64) as u64,
            interval: spec
                .scrub_interval
                .unwrap_or(Duration::from_secs(24 * 3600)),
        }),
        None => None,
    })
}

/// Starts what runs beside one open export: online detection, its scrubber and its retention.
fn hosted(
    spec: ExportSpec,
    e: Arc<Export>,
    scrub: Option<ScrubOptions>,
    alerter: Option<&Alerter>,
) -> Hosted {
    let mut h = Hosted {
        detector: e
            .ledger()
            .is_some()
            .then(|| Detector::start(&e, alerter.map(|a| a.sink()))),
        scrubber: None,
        retainer: None,
        export: e.clone(),
        spec,
    };
    if let Some(o) = scrub {
        match Scrubber::start(&e, o) {
            Ok(s) => h.scrubber = Some(s),
            Err(err) => tracing::error!("{}: NOT scrubbed: {err}", label(e.name())),
        }
        tracing::info!(
            "{}: scrubbing at {:.1} MiB/s, a pass every {}",
            label(e.name()),
            o.rate as f64 / (1u64 << 20) as f64,
            show_duration(o.interval)
        );
    }
    let keep = h.spec.retention();
    let keeping_data = e.ledger().is_some_and(|l| l.kept().is_some());
    if (keep.is_none() && !keeping_data) || e.ledger().is_none() {
        return h;
    }
    match Retainer::start(&e, keep) {
        Ok(r) if keep.is_none() => h.retainer = Some(r),
        Ok(r) => {
            tracing::info!(
                "{}: retaining {}{}{} of journal history",
                label(e.name()),
                keep.age.map(show_duration).unwrap_or_default(),
                if keep.age.is_some() && keep.bytes.is_some() {
                    " and at most "
                } else {
                    ""
                },
                keep.bytes.map(|b| format!("{b} bytes")).unwrap_or_default()
            );
            h.retainer = Some(r);
        }
        Err(err) => tracing::error!("{}: NO retention: {err}", label(e.name())),
    }
    h
}

/// How long an export that has left the server may still be referenced by a worker finishing
/// its last reply.
const LAST_REPLY: Duration = Duration::from_secs(5);

/// The export itself, once nothing else holds it: the server, the metrics endpoint and the
/// helpers must have let it go (a worker may still be dropping its last job).
fn sole(mut e: Arc<Export>) -> Result<Export> {
    let until = Instant::now() + LAST_REPLY;
    loop {
        match Arc::try_unwrap(e) {
            Ok(e) => return Ok(e),
            Err(back) if Instant::now() < until => {
                e = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(back) => {
                return Err(Error::Usage(format!(
                "{} is still in use after its connections ended (a bug); its session is left open",
                label(back.name())
            )))
            }
        }
    }
}

/// Closes one export whose server and helpers have stopped, and logs its closing line.
fn close(e: Export) -> Closed {
    let summary = Summary::of(&e);
    let name = e.name().to_string();
    let label = label(&name);
    let failure = e.ledger().and_then(|l| l.session_failure());
    let outcome = match (e.close(), failure) {
        (Err(err), _) => {
            tracing::error!("{label}: closing: {err}");
            Outcome::CloseFailed(err)
        }
        (Ok(()), None) => {
            tracing::info!("{label} closed cleanly: {summary}");
            Outcome::Clean
        }
        (Ok(()), Some(why)) => {
            tracing::error!(
                "{label}: the session is left unclosed, so the next start and `verify` treat it as a crash: {why}; {summary}"
            );
            Outcome::Unclosed(why)
        }
    };
    Closed {
        name,
        summary,
        outcome,
    }
}

/// Removes the unix sockets of listeners that will not serve.
fn cleanup(listeners: &[Listener]) {
    listeners.iter().for_each(|l| l.cleanup());
}

/// An export as log lines name it: `export "web1"`, or `the unnamed export`.
fn label(name: &str) -> String {
    if name.is_empty() {
        "the unnamed export".into()
    } else {
        format!("export {name:?}")
    }
}
