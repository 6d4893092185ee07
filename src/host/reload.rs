//! A new configuration on a running host, without a restart: [`Host::reload`] re-reads the
//! `--config` file, compares it with what is served (export by export, by name) and applies
//! the difference. New exports open; removed ones drain (requests already read are answered,
//! then their connections close) and close their ledger session cleanly; changed ones (any
//! setting differs) drain and reopen alone; connections to unchanged exports are not touched.
//!
//! It is all or nothing where it can be: everything that can be checked or opened before
//! anything is switched is, and a failure there changes nothing (a file that does not parse, a
//! changed host-wide setting, a device named twice, a device that moves from one export to
//! another in one reload, a new export whose device another process holds). A changed export
//! whose device and ledger stay the same can only reopen once its old self has closed (the one
//! process that owns a device is this one); should that reopen fail, its old settings are
//! reopened and the outcome says so.

use super::config::{read_config, ExportSpec, ServeConfig};
use super::{close, hosted, label, open, scrub_options, sole, Host, Hosted};
use crate::error::Result;
use crate::metrics::NotServed;
use crate::server::Server;
use crate::service::scrub::ScrubOptions;
use crate::service::Export;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// What a reload did, as the log, `POST /reload` and `lostwrite reload` report it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reloaded {
    /// The configuration file read.
    pub config: String,
    /// Whether it was applied; when not, nothing changed.
    pub applied: bool,
    /// Why it was refused, or what failed in applying it.
    pub reason: Option<String>,
    /// Exports opened (new ones, and ones that could not be opened before).
    pub opened: Vec<String>,
    /// Exports drained and closed.
    pub closed: Vec<String>,
    /// Exports whose settings changed, drained and reopened.
    pub restarted: Vec<String>,
    /// Exports left as they were (their connections untouched).
    pub unchanged: Vec<String>,
    /// Exports of the configuration that are not served now, and why.
    pub not_served: Vec<NotServed>,
}

impl Reloaded {
    /// The log line that sums it up.
    pub fn line(&self) -> String {
        if !self.applied {
            return format!(
                "reload of {} refused, nothing changed: {}",
                self.config,
                self.reason.as_deref().unwrap_or("?")
            );
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        format!(
            "reload of {} applied: opened {}; closed {}; restarted {}; {} unchanged{}",
            self.config,
            list(&self.opened),
            list(&self.closed),
            list(&self.restarted),
            self.unchanged.len(),
            self.reason
                .as_ref()
                .map(|r| format!("; BUT {r}"))
                .unwrap_or_default()
        )
    }
}

/// How one export of the new configuration relates to what runs.
enum Plan {
    /// Runs with the same settings.
    Same,
    /// New, or configured before but not served: opened before anything switches.
    Open,
    /// Changed, with another device and ledger: the new one opens beside the old.
    Beside,
    /// Changed, keeping its device or ledger: the old one closes, then the new one opens.
    InPlace,
}

impl Host {
    /// Re-reads the configuration at `path` and applies it (see the module's description).
    /// Logs what it did, counts it for the metrics endpoint, and returns it.
    pub fn reload(&mut self, path: &Path) -> Reloaded {
        let mut r = Reloaded {
            config: path.display().to_string(),
            ..Reloaded::default()
        };
        match self.try_reload(path, &mut r) {
            Ok(()) => r.applied = true,
            Err(why) => {
                r = Reloaded {
                    config: r.config,
                    reason: Some(why),
                    ..Reloaded::default()
                };
            }
        }
        if r.applied && r.reason.is_none() {
            tracing::info!("{}", r.line());
        } else {
            tracing::error!("{}", r.line());
        }
        r.not_served = self.down.clone();
        self.reloads.record(r.applied, r.reason.clone());
        r
    }

    /// The reload itself: an error is a refusal (nothing changed).
    fn try_reload(&mut self, path: &Path, r: &mut Reloaded) -> std::result::Result<(), String> {
        let new = read_config(path).map_err(|e| e.to_string().trim_end().to_string())?;
        host_wide(&self.config, &new)?;
        let scrub: Vec<Option<ScrubOptions>> = new
            .export
            .iter()
            .map(scrub_options)
            .collect::<Result<_>>()
            .map_err(|e| e.to_string())?;
        named_once(&new.export)?;
        let running: HashMap<&str, &Hosted> = self
            .exports
            .iter()
            .map(|h| (h.spec.name.as_str(), h))
            .collect();
        let plans: Vec<Plan> = new
            .export
            .iter()
            .map(|s| match running.get(s.name.as_str()) {
                None => Plan::Open,
                Some(h) if h.spec == *s => Plan::Same,
                Some(h) if !shares(&h.spec, s) => Plan::Beside,
                Some(_) => Plan::InPlace,
            })
            .collect();
        let kept: HashSet<&str> = new
            .export
            .iter()
            .zip(&plans)
            .filter(|(_, p)| matches!(p, Plan::Same))
            .map(|(s, _)| s.name.as_str())
            .collect();
        // One process owns a device: a device that an export gives up and another takes in
        // the same reload would be claimed before it is let go.
        for (s, p) in new.export.iter().zip(&plans) {
            if matches!(p, Plan::Same) {
                continue;
            }
            for h in self.exports.iter().filter(|h| h.spec.name != s.name) {
                if !kept.contains(h.spec.name.as_str()) && shares(&h.spec, s) {
                    return Err(format!(
                        "export {:?} would take device {} (or ledger) that export {:?} gives up in the same reload; reload once without it (closing {:?}), then again with it",
                        s.name, s.device, h.spec.name, h.spec.name
                    ));
                }
            }
        }
        let retry: HashSet<&str> = self.down.iter().map(|d| d.export.as_str()).collect();

        // Devices another process holds are found before any ledger opens, so that a refused
        // reload does not leave even an empty session in another export's ledger.
        for (s, p) in new.export.iter().zip(&plans) {
            if matches!(p, Plan::Open | Plan::Beside) && !retry.contains(s.name.as_str()) {
                let dev = crate::device::open(&s.device, !s.read_only)
                    .map_err(|e| format!("{}: {e}", label(&s.name)))?;
                if s.read_only && !s.no_record {
                    dev.claim()
                        .map_err(|e| format!("{}: {e}", label(&s.name)))?;
                }
            }
        }
        // Everything that can be opened before anything switches is opened now.
        let mut early: HashMap<String, Arc<Export>> = HashMap::new();
        let mut down = Vec::new();
        for (s, p) in new.export.iter().zip(&plans) {
            if !matches!(p, Plan::Open | Plan::Beside) {
                continue;
            }
            match open::open_export(s) {
                Ok(e) => {
                    early.insert(s.name.clone(), Arc::new(e));
                }
                // An export that could not be opened before may still fail: the others go on.
                Err(e) if retry.contains(s.name.as_str()) => {
                    let why = NotServed {
                        export: s.name.clone(),
                        device: s.device.clone(),
                        reason: e.to_string(),
                    };
                    tracing::error!("{}", why.line());
                    down.push(why);
                }
                Err(e) => {
                    for (_, opened) in early.drain() {
                        if let Ok(e) = sole(opened) {
                            close(e);
                        }
                    }
                    return Err(format!("{}: {e}", label(&s.name)));
                }
            }
        }

        // The switch: from here on nothing is refused.
        let mut old: Vec<Option<Hosted>> = std::mem::take(&mut self.exports)
            .into_iter()
            .map(Some)
            .collect();
        let mut take = |name: &str| {
            old.iter_mut()
                .find(|h| h.as_ref().is_some_and(|h| h.spec.name == name))
                .and_then(Option::take)
        };
        let mut next: Vec<Option<Hosted>> = Vec::new();
        let mut in_place = Vec::new();
        for ((s, p), opts) in new.export.iter().zip(&plans).zip(&scrub) {
            match p {
                Plan::Same => {
                    r.unchanged.push(s.name.clone());
                    next.push(take(&s.name));
                }
                Plan::Open | Plan::Beside => {
                    next.push(early.remove(&s.name).map(|e| {
                        if matches!(p, Plan::Open) {
                            r.opened.push(s.name.clone());
                        } else {
                            r.restarted.push(s.name.clone());
                        }
                        hosted(s.clone(), e, *opts, self.alerter.as_ref())
                    }));
                }
                Plan::InPlace => {
                    in_place.push(next.len());
                    next.push(None);
                }
            }
        }
        self.publish(&next, &down);
        // Retiring: what the new configuration drops, and the old selves of changed exports,
        // all at once (each may wait for its clients to take their last replies).
        let old: Vec<Hosted> = old.into_iter().flatten().collect();
        let old_specs: HashMap<String, ExportSpec> = old
            .iter()
            .map(|h| (h.spec.name.clone(), h.spec.clone()))
            .collect();
        let server = &self.server;
        let ended: Vec<(String, bool)> = std::thread::scope(|sc| {
            let running: Vec<_> = old
                .into_iter()
                .map(|h| {
                    let name = h.spec.name.clone();
                    (name, sc.spawn(move || retire(server, h)))
                })
                .collect();
            running
                .into_iter()
                .map(|(name, t)| (name, t.join().unwrap_or(false)))
                .collect()
        });
        let mut failures = Vec::new();
        for (name, closed) in ended {
            if !new.export.iter().any(|s| s.name == name) {
                r.closed.push(name.clone());
            }
            if !closed {
                failures.push(format!(
                    "{} did not close cleanly (see the log)",
                    label(&name)
                ));
            }
        }
        // Changed exports that keep their device or ledger reopen now that their old selves
        // have let go; should the new settings fail, the old ones are reopened.
        for i in in_place {
            let (s, opts) = (&new.export[i], scrub[i]);
            match open::open_export(s) {
                Ok(e) => {
                    r.restarted.push(s.name.clone());
                    next[i] = Some(hosted(s.clone(), Arc::new(e), opts, self.alerter.as_ref()));
                }
                Err(e) => {
                    let was = &old_specs[&s.name];
                    failures.push(format!(
                        "{} could not reopen with its new settings ({e}); ",
                        label(&s.name)
                    ));
                    let back = open::open_export(was);
                    let last = failures.last_mut().expect("just pushed");
                    match back {
                        Ok(e) => {
                            last.push_str("its old settings were reopened");
                            let o = scrub_options(was).ok().flatten();
                            next[i] =
                                Some(hosted(was.clone(), Arc::new(e), o, self.alerter.as_ref()));
                        }
                        Err(e2) => {
                            last.push_str(&format!(
                                "reopening its old settings failed too ({e2}): it is NOT served"
                            ));
                            down.push(NotServed {
                                export: s.name.clone(),
                                device: s.device.clone(),
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            }
        }
        self.publish(&next, &down);
        self.exports = next.into_iter().flatten().collect();
        self.down = down;
        self.config = ServeConfig {
            export: self.exports.iter().map(|h| h.spec.clone()).collect(),
            ..new
        };
        if !failures.is_empty() {
            r.reason = Some(failures.join("; "));
        }
        Ok(())
    }

    /// Offers `next` (in the configuration's order) to clients and to the metrics endpoint.
    fn publish(&self, next: &[Option<Hosted>], down: &[NotServed]) {
        let list: Vec<Arc<Export>> = next.iter().flatten().map(|h| h.export.clone()).collect();
        self.server.publish(list.clone());
        if let Some(m) = &self.metrics {
            m.publish(list, down.to_vec());
        }
    }
}

/// Ends one export that is no longer published: its connections drain, its helpers stop, and
/// its session closes. Whether it closed cleanly.
fn retire(server: &Server, mut h: Hosted) -> bool {
    let n = server.drain(&h.export);
    tracing::info!(
        "{}: removed or changed by a reload; {n} connection(s) drained",
        label(&h.spec.name)
    );
    if let Some(s) = h.scrubber.take() {
        s.stop();
    }
    if let Some(r) = h.retainer.take() {
        r.stop();
    }
    if let Some(d) = h.detector.take() {
        d.finish();
    }
    match sole(h.export) {
        Ok(e) => close(e).is_clean(),
        Err(e) => {
            tracing::error!("{e}");
            false
        }
    }
}

/// Host-wide settings (listeners, TLS, metrics, workers, the alert hook) are fixed while the
/// host runs: a reload that changes one is refused, naming it.
fn host_wide(old: &ServeConfig, new: &ServeConfig) -> std::result::Result<(), String> {
    let changed = [
        ("socket", old.socket != new.socket),
        ("listen", old.listen != new.listen),
        ("metrics", old.metrics != new.metrics),
        ("on_finding", old.on_finding != new.on_finding),
        (
            "on_finding_interval",
            old.on_finding_interval != new.on_finding_interval,
        ),
        ("threads", old.threads != new.threads),
        ("tls_cert", old.tls_cert != new.tls_cert),
        ("tls_key", old.tls_key != new.tls_key),
        ("tls_client_ca", old.tls_client_ca != new.tls_client_ca),
        (
            "upstream_timeout",
            old.upstream_timeout != new.upstream_timeout,
        ),
    ];
    let keys: Vec<&str> = changed.iter().filter(|c| c.1).map(|c| c.0).collect();
    if keys.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} changed: a reload changes exports only; restart serve for host-wide settings (docs/OPERATIONS.md, \"Restarting and upgrading under running VMs\")",
        keys.join(", ")
    ))
}

/// Each device and each ledger belongs to one export of a configuration.
fn named_once(specs: &[ExportSpec]) -> std::result::Result<(), String> {
    for (i, a) in specs.iter().enumerate() {
        for b in &specs[..i] {
            if shares(a, b) {
                return Err(format!(
                    "exports {:?} and {:?} both name device {} (or the same ledger); one process owns a device, and one export serves it",
                    b.name, a.name, a.device
                ));
            }
        }
    }
    Ok(())
}

/// Whether two exports name the same device or the same ledger.
fn shares(a: &ExportSpec, b: &ExportSpec) -> bool {
    a.device == b.device || matches!((a.ledger_dir(), b.ledger_dir()), (Ok(x), Ok(y)) if x == y)
}
