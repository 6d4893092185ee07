//! `lostwrite status [DEVICE] [--json]`: what a ledger describes and where it stands.

use super::resolve_ledger;
use lostwrite::clock::rfc3339;
use lostwrite::ledger::history::{self, SessionEnd};
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, OpenOptions, LOCK_FILE};
use serde_json::json;
use std::collections::HashSet;
use std::path::PathBuf;

/// Flags of `status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The device whose ledger to show.
    #[arg(value_name = "DEVICE")]
    device: Option<String>,
    /// The ledger directory.
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let dir = resolve_ledger(a.device.as_deref(), a.ledger.as_ref())?;
    let l = Ledger::open(&dir, None, OpenOptions::new(Access::Live))?;
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
    let records = hist.end.next_lsn - 1;
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
    let crashed = hist.sessions.values().filter(|s| s.crashed()).count();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ledger": dir.display().to_string(),
                "device": meta.identity.path,
                "device_size": meta.device_size,
                "block_size": meta.block_size,
                "blocks_total": geo.block_count(),
                "blocks_tracked": tracked,
                "blocks_untracked": untracked,
                "blocks_unknown": unknown,
                "created": rfc3339(meta.created),
                "baseline": hist.baseline.map(|(_, t)| rfc3339(t)),
                "journal_segments": hist.end.segments.len(),
                "journal_bytes": journal_bytes,
                "records": records,
                "sessions": hist.sessions.len() - 1,
                "sessions_crashed": crashed,
                "last_session": last_desc,
                "service_running": l.is_live_view(),
            }))?
        );
        return Ok(0);
    }
    println!("ledger   {}", dir.display());
    println!(
        "device   {} ({} bytes, {} blocks of {} bytes)",
        meta.identity.path,
        meta.device_size,
        geo.block_count(),
        meta.block_size
    );
    println!("created  {} by {}", rfc3339(meta.created), meta.software);
    match hist.baseline {
        Some((_, t)) => println!("baseline {}", rfc3339(t)),
        None => println!("baseline none (blocks are tracked from their first write through serve)"),
    }
    println!(
        "blocks   {tracked} tracked, {untracked} untracked, {unknown} unknown (failed writes)"
    );
    println!(
        "journal  {} segment(s), {} bytes, {records} records",
        hist.end.segments.len(),
        journal_bytes
    );
    println!(
        "sessions {} ({crashed} crashed){}",
        hist.sessions.len() - 1,
        last_desc
            .map(|d| format!("; last: {d}"))
            .unwrap_or_default()
    );
    Ok(0)
}
