//! The alert hook (`serve --on-finding CMD`): every new finding is handed to `sh -c CMD` as JSON
//! on standard input, so a host can page someone. At most one run per interval: findings that
//! arrive in between are gathered into the next run, and a run that outlives its time is
//! killed. What goes in:
//!
//! ```text
//! {"host":"storage1","findings":[{"export":"web1","block":12,"kind":"reverted",…}],"dropped":0}
//! ```

use super::detect::Sink;
use crate::findings::Finding;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Findings held for the next run before more are dropped (and counted).
const PENDING: usize = 10_000;

/// How long one run of the command may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

enum Msg {
    Finding(String, Box<Finding>),
    Finish,
}

/// The hook's thread.
pub struct Alerter {
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Alerter {
    /// Starts running `cmd` for findings, at most once per `interval`.
    pub fn start(cmd: String, interval: Duration) -> Alerter {
        let (tx, rx) = bounded(PENDING);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let handle = std::thread::Builder::new()
            .name("on-finding".into())
            .spawn(move || run(&cmd, interval, rx, &d))
            .expect("spawning the alert thread");
        Alerter {
            tx,
            dropped,
            handle: Some(handle),
        }
    }

    /// A sink for a [`super::detect::Detector`]: queues each finding for the hook.
    pub fn sink(&self) -> Sink {
        let (tx, dropped) = (self.tx.clone(), self.dropped.clone());
        Box::new(move |export: &str, f: &Finding| {
            if let Err(TrySendError::Full(_)) =
                tx.try_send(Msg::Finding(export.to_string(), Box::new(f.clone())))
            {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// Runs the hook once more for what is pending (without waiting out the interval), then
    /// stops.
    pub fn finish(mut self) {
        let _ = self.tx.send(Msg::Finish);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Alerter {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.tx.send(Msg::Finish);
            let _ = h.join();
        }
    }
}

fn run(cmd: &str, interval: Duration, rx: Receiver<Msg>, dropped: &AtomicU64) {
    let mut pending: Vec<(String, Box<Finding>)> = Vec::new();
    let mut last_run: Option<Instant> = None;
    loop {
        // Wait for a finding, or, with some pending, until the interval allows a run.
        let wait = match (pending.is_empty(), last_run) {
            (true, _) => Duration::from_secs(3600),
            (false, None) => Duration::ZERO,
            (false, Some(t)) => interval.saturating_sub(t.elapsed()),
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Finding(e, f)) => {
                pending.push((e, f));
                continue;
            }
            Ok(Msg::Finish) | Err(RecvTimeoutError::Disconnected) => {
                if !pending.is_empty() {
                    invoke(cmd, &pending, dropped.swap(0, Ordering::Relaxed));
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) if pending.is_empty() => continue,
            Err(RecvTimeoutError::Timeout) => {}
        }
        invoke(cmd, &pending, dropped.swap(0, Ordering::Relaxed));
        pending.clear();
        last_run = Some(Instant::now());
    }
}

fn invoke(cmd: &str, findings: &[(String, Box<Finding>)], dropped: u64) {
    let list: Vec<serde_json::Value> = findings
        .iter()
        .map(|(export, f)| {
            let mut v = serde_json::to_value(f).expect("findings serialise");
            v["export"] = serde_json::Value::String(export.clone());
            v
        })
        .collect();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let input = serde_json::json!({ "host": host, "findings": list, "dropped": dropped });
    // Its own process group, so a run that overstays is killed with everything it started.
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("--on-finding {cmd:?}: cannot run it: {e}");
            return;
        }
    };
    // Fed from a thread: a hook that does not read its input must not stall this one (the
    // pipe holds 64 KiB). The writer ends when the hook exits or is killed.
    if let Some(mut stdin) = child.stdin.take() {
        let text = input.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => {
                tracing::info!("--on-finding: told about {} finding(s)", findings.len());
                return;
            }
            Ok(Some(st)) => {
                tracing::error!(
                    "--on-finding {cmd:?} failed ({st}) for {} finding(s)",
                    findings.len()
                );
                return;
            }
            Ok(None) if t.elapsed() > RUN_TIMEOUT => {
                let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
                tracing::error!("--on-finding {cmd:?} ran over {RUN_TIMEOUT:?} and was killed");
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::error!("--on-finding {cmd:?}: {e}");
                return;
            }
        }
    }
}
