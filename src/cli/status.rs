//! `lostwrite status [DEVICE] [--json]` or `lostwrite status --config FILE`: what each ledger
//! describes and where it stands: blocks, journal, sessions, the last flush, the scrubber, the
//! open findings, and, when the service publishes metrics, what it serves now: each export's
//! connections, its session, its last FLUSH and how long it took, or why it is not served (read
//! as JSON from the service's `/status.json`, see `lostwrite::metrics::LiveStatus`).

use super::resolve_ledger;
use lostwrite::clock::rfc3339;
use lostwrite::findings::log as findings;
use lostwrite::ledger::history::{self, SessionEnd};
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, OpenOptions, LOCK_FILE};
use lostwrite::metrics::{ExportStatus, LiveStatus, STATUS_PATH};
use lostwrite::service::scrub::ScrubState;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flags of `status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The device whose ledger to show.
    #[arg(value_name = "DEVICE")]
    device: Option<String>,
    /// The ledger directory.
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
    /// Every export of a `serve --config` file (with live figures from its metrics endpoint).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["device", "ledger"])]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let (targets, live): (Vec<(String, PathBuf)>, _) = match &a.config {
        Some(p) => {
            let c = lostwrite::host::config::read_config(p)?;
            let mut t = Vec::new();
            for e in &c.export {
                t.push((
                    e.name.clone(),
                    resolve_ledger(Some(&e.device), e.ledger.as_ref())?,
                ));
            }
            (t, c.metrics.and_then(|addr| live(&addr)))
        }
        None => (
            vec![(
                String::new(),
                resolve_ledger(a.device.as_deref(), a.ledger.as_ref())?,
            )],
            None,
        ),
    };
    let mut all = Vec::new();
    let mut status = 0;
    for (name, dir) in &targets {
        let figures = live
            .as_ref()
            .and_then(|l| l.exports.iter().find(|e| e.export == *name));
        let down = live
            .as_ref()
            .and_then(|l| l.not_served.iter().find(|e| e.export == *name))
            .map(|n| n.reason.clone());
        match one(dir, name, figures) {
            Ok(mut v) => {
                v["not_served"] = json!(down);
                if !v["ledger_damage"].is_null() {
                    status = 2;
                }
                all.push(v)
            }
            // With many exports, one unreadable ledger must not hide the others.
            Err(e) if a.config.is_some() => {
                status = 2;
                all.push(json!({"export": name, "ledger": dir.display().to_string(), "error": format!("{e:#}"), "not_served": down}));
            }
            Err(e) => return Err(e),
        }
    }
    if a.json {
        let out = if a.config.is_some() {
            Value::Array(all)
        } else {
            all.remove(0)
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (i, v) in all.iter().enumerate() {
            if i > 0 {
                outln!();
            }
            out!("{}", human(v));
        }
        if let Some(r) = live.as_ref().map(|l| &l.reloads) {
            out!("{}", reloads_line(r));
        }
    }
    Ok(status)
}

/// What the server's reloads did, for the end of the human form ("" when there were none).
fn reloads_line(r: &lostwrite::metrics::ReloadStatus) -> String {
    let Some(last) = &r.last else {
        return String::new();
    };
    format!(
        "\nreloads  {} applied, {} refused; the last at {}: {}\n",
        r.applied,
        r.refused,
        last.time,
        match (last.applied, &last.reason) {
            (true, None) => "applied".to_string(),
            (true, Some(why)) => format!("applied, except: {why}"),
            (false, why) => format!("refused: {}", why.as_deref().unwrap_or("no reason given")),
        }
    )
}

/// How long `status` waits for a running service's figures, all told; a service that does not
/// answer by then is shown without them.
const LIVE_DEADLINE: Duration = Duration::from_secs(5);
/// The most a `/status.json` answer may hold (a few hundred bytes per export).
const LIVE_MAX_BYTES: usize = 4 << 20;

/// The live figures of the service whose metrics endpoint is `addr`, if it answers in time.
fn live(addr: &str) -> Option<LiveStatus> {
    // Every wait on the service has a deadline: a hung or foreign listener must not hang
    // `status`, which is what an operator runs when something already seems wrong.
    let deadline = Instant::now() + LIVE_DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut s = addr
        .to_socket_addrs()
        .ok()?
        .find_map(|a| TcpStream::connect_timeout(&a, left()?).ok())?;
    s.set_write_timeout(Some(left()?)).ok()?;
    write!(s, "GET {STATUS_PATH} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(left()?)).ok()?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
        if raw.len() > LIVE_MAX_BYTES {
            return None;
        }
    }
    // An HTTP/1.0 request gets a plain body (no chunking) that ends with the connection.
    let text = std::str::from_utf8(&raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

fn one(dir: &Path, export: &str, live: Option<&ExportStatus>) -> anyhow::Result<Value> {
    let l = Ledger::open(dir, None, OpenOptions::new(Access::Live))?;
    let meta = l.meta();
    let geo = l.geometry();
    let hist = history::collect(&l, &HashSet::new(), &HashSet::new())?;
    let (mut tracked, mut untracked, mut unknown) = (0u64, 0u64, 0u64);
    for b in 0..geo.block_count() {
        match l.state(b) {
            BlockState::Tracked { .. } => tracked += 1,
            BlockState::Untracked { .. } => untracked += 1,
            BlockState::Unknown { .. } => unknown += 1,
        }
    }
    let journal_bytes: u64 = hist.end.segments.iter().map(|s| s.file_len).sum();
    let records = hist.end.next_lsn - 1 - hist.compacted.map_or(0, |c| c.0);
    let last = hist.sessions.values().next_back().filter(|s| s.id != 0);
    let writer = if l.is_live_view() {
        std::fs::read_to_string(dir.join(LOCK_FILE))
            .ok()
            .map(|s| s.trim().to_string())
    } else {
        None
    };
    let last_desc = last.map(|s| {
        let end = match s.end {
            SessionEnd::Clean { time, .. } => format!("closed cleanly {}", rfc3339(time)),
            SessionEnd::Crashed => format!("CRASHED (last record {})", rfc3339(s.last_time)),
            SessionEnd::Running => format!(
                "running (pid {})",
                writer.clone().unwrap_or_else(|| "?".into())
            ),
        };
        format!("session {} opened {}, {end}", s.id, rfc3339(s.open_time))
    });
    let last_flush = hist
        .sessions
        .values()
        .flat_map(|s| s.flushes.iter())
        .map(|&(_, t)| t)
        .max()
        .map(rfc3339);
    let crashed = hist.sessions.values().filter(|s| s.crashed()).count();
    let scrub = ScrubState::load(dir);
    let scrubbed = dir.join(lostwrite::service::scrub::SCRUB_FILE).exists();
    let (entries, _) = findings::read(dir)?;
    let open = findings::open_findings(&entries);
    let (unclassified, unclassified_last) = findings::unclassified_since_verify(&entries);
    let open_list: Vec<Value> = open
        .values()
        .take(20)
        .map(|f| json!({"block": f.block, "kind": f.kind, "detail": f.detail()}))
        .collect();
    let clients = live.map(|e| e.clients);
    let kept = lostwrite::ledger::kept::glance(dir)?;
    Ok(json!({
        // What the running service says of it now (`/status.json`), when it answered.
        "live": live,
        "export": export,
        "ledger": dir.display().to_string(),
        "ledger_damage": l.state_damage(),
        // The damage is said once, above; these are the other notes (a torn tail).
        "ledger_warnings": l.recovery().warnings.iter().filter(|w| !w.starts_with("state table ")).collect::<Vec<_>>(),
        "device": meta.identity.path,
        "device_size": meta.device_size,
        "block_size": meta.block_size,
        "blocks_total": geo.block_count(),
        "blocks_tracked": tracked,
        "blocks_untracked": untracked,
        "blocks_unknown": unknown,
        "created": rfc3339(meta.created),
        "software": meta.software,
        "baseline": hist.baseline.map(|(_, t)| rfc3339(t)),
        "journal_segments": hist.end.segments.len(),
        "journal_bytes": journal_bytes,
        "records": records,
        "kept_data": kept.map(|k| json!({
            "dir": k.dir.display().to_string(),
            "segments": k.segments,
            "bytes": k.bytes,
            "from": k.window.map(|w| rfc3339(w.0)),
            "to": k.window.map(|w| rfc3339(w.1)),
        })),
        "compacted_through_lsn": hist.compacted.map(|c| c.0),
        "compacted_through": hist.compacted.map(|c| rfc3339(c.1)),
        "sessions": hist.sessions.len() - 1,
        "sessions_crashed": crashed,
        "last_session": last_desc,
        "last_flush": last_flush,
        "service_running": l.is_live_view(),
        "clients": clients,
        "scrub": scrubbed.then(|| json!({
            "passes": scrub.passes,
            "progress": scrub.next_block as f64 / geo.block_count().max(1) as f64,
            "pass_started": scrub.pass_started.map(rfc3339),
            "last_pass_ended": scrub.last_pass_ended.map(rfc3339),
        })),
        "findings_open": open.len(),
        "stale_reads_unclassified": unclassified,
        "stale_reads_unclassified_last": unclassified_last.map(rfc3339),
        "findings": open_list,
    }))
}

fn human(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut o = String::new();
    let not_served = v["not_served"]
        .as_str()
        .map(|why| format!("NOT SERVED {why}\n"))
        .unwrap_or_default();
    if let Some(e) = v.get("error") {
        return format!(
            "export   {}\n{not_served}ledger   {}\nERROR    {}\n",
            s("export"),
            s("ledger"),
            e.as_str().unwrap_or("")
        );
    }
    if !s("export").is_empty() {
        o += &format!("export   {}\n", s("export"));
    }
    o += &not_served;
    let live = &v["live"];
    o += &format!("ledger   {}\n", s("ledger"));
    if let Some(d) = v["ledger_damage"].as_str() {
        o += &format!("DAMAGED  {d}\n");
    }
    for w in v["ledger_warnings"].as_array().into_iter().flatten() {
        o += &format!("warning  {}\n", w.as_str().unwrap_or(""));
    }
    o += &format!(
        "device   {} ({} bytes, {} blocks of {} bytes)\n",
        s("device"),
        n("device_size"),
        n("blocks_total"),
        n("block_size")
    );
    o += &format!("created  {} by {}\n", s("created"), s("software"));
    o += &match v["baseline"].as_str() {
        Some(t) => format!("baseline {t}\n"),
        None => "baseline none (blocks are tracked from their first write through serve)\n".into(),
    };
    o += &format!(
        "blocks   {} tracked, {} untracked, {} unknown (failed writes)\n",
        n("blocks_tracked"),
        n("blocks_untracked"),
        n("blocks_unknown")
    );
    o += &format!(
        "journal  {} segment(s), {} bytes, {} records{}\n",
        n("journal_segments"),
        n("journal_bytes"),
        n("records"),
        match v["compacted_through"].as_str() {
            Some(t) => format!(
                "; history through LSN {} ({t}) compacted",
                n("compacted_through_lsn")
            ),
            None => String::new(),
        }
    );
    let k = &v["kept_data"];
    if k.is_object() {
        o += &format!(
            "data     {} segment(s), {} bytes kept in {}{}\n",
            k["segments"].as_u64().unwrap_or(0),
            k["bytes"].as_u64().unwrap_or(0),
            k["dir"].as_str().unwrap_or(""),
            match (k["from"].as_str(), k["to"].as_str()) {
                (Some(a), Some(b)) => format!(", written {a} .. {b}"),
                _ => String::new(),
            }
        );
    }
    o += &format!(
        "sessions {} ({} crashed){}\n",
        n("sessions"),
        n("sessions_crashed"),
        v["last_session"]
            .as_str()
            .map(|d| format!("; last: {d}"))
            .unwrap_or_default()
    );
    if let Some(id) = live["session"].as_u64() {
        o += &format!(
            "serving  session {id} opened {}, {}\n",
            live["session_opened"].as_str().unwrap_or("?"),
            if live["session_strict"].as_bool() == Some(true) {
                "strict (every change durable before its reply)"
            } else {
                "not strict (changes durable at FLUSH)"
            }
        );
    }
    o += &match (
        live["last_flush"].as_str(),
        live["last_flush_seconds"].as_f64(),
    ) {
        (Some(t), Some(took)) => format!("flushed  {t} (took {})\n", show_seconds(took)),
        _ => format!(
            "flushed  {}\n",
            v["last_flush"].as_str().unwrap_or("never through serve")
        ),
    };
    if let Some(c) = v["clients"].as_u64() {
        o += &format!("clients  {c}\n");
    }
    for c in live["connections"].as_array().into_iter().flatten() {
        o += &format!(
            "  connection {} from {} since {}: {} requests, {} bytes read, {} bytes written\n",
            c["id"],
            c["peer"].as_str().unwrap_or("?"),
            c["connected"].as_str().unwrap_or("?"),
            c["requests"],
            c["read_bytes"],
            c["written_bytes"]
        );
    }
    let sc = &v["scrub"];
    o += &if sc.is_null() {
        "scrub    never\n".to_string()
    } else {
        format!(
            "scrub    {} passes done; current pass {:.1}%{}\n",
            sc["passes"],
            sc["progress"].as_f64().unwrap_or(0.0) * 100.0,
            sc["last_pass_ended"]
                .as_str()
                .map(|t| format!("; last pass ended {t}"))
                .unwrap_or_default()
        )
    };
    // Only what reads and the scrubber saw while serving: say so, or a "0 open" reads as a
    // clean device that nobody verified.
    o +=
        &format!(
        "findings {} open, seen online by reads{} (only `lostwrite verify` judges every block)\n",
        n("findings_open"),
        if sc.is_null() { "" } else { " and the scrubber" }
    );
    if let Some(why) = live["failure"].as_str() {
        o += &format!("FAILING  {why}\n");
    }
    if n("stale_reads_unclassified") > 0 {
        o += &format!(
            "WARNING  {} stale reads were not classified (detection queue full; last {}): run `lostwrite verify`\n",
            n("stale_reads_unclassified"),
            s("stale_reads_unclassified_last")
        );
    }
    for f in v["findings"].as_array().into_iter().flatten() {
        o += &format!(
            "  block {}: {} ({})\n",
            f["block"],
            f["kind"].as_str().unwrap_or(""),
            f["detail"].as_str().unwrap_or("")
        );
    }
    o
}

/// A duration in seconds as a person reads it: `850 µs`, `3.2 ms`, `1.25 s`.
fn show_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}
