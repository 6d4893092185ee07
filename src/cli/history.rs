//! `lostwrite history DEVICE BLOCK... [--json]`: every generation of some blocks, with time,
//! durability and session, and which generation the device holds now (read from the media with
//! O_DIRECT unless `--cached`).

use super::Target;
use lostwrite::block;
use lostwrite::clock::rfc3339;
use lostwrite::device::BlockDevice;
use lostwrite::ledger::history::{self, SessionEnd, SessionInfo};
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, OpenOptions};
use serde_json::json;
use std::collections::HashSet;

/// Flags of `history`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Block numbers (in the ledger's block size).
    #[arg(value_name = "BLOCK", required = true)]
    blocks: Vec<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Accept a device whose identity differs from the ledger's.
    #[arg(long)]
    device_moved: bool,
    /// Name the file, directory or filesystem structure that owns each block (ext2/3/4).
    #[arg(long)]
    files: bool,
    /// Read what the device holds now through the host's page cache (by default the media is
    /// read with O_DIRECT).
    #[arg(long)]
    cached: bool,
}

fn session_end(s: &SessionInfo) -> String {
    match s.end {
        SessionEnd::Clean { time, .. } => format!("closed cleanly {}", rfc3339(time)),
        SessionEnd::Crashed => format!("crashed (last record {})", rfc3339(s.last_time)),
        SessionEnd::Running => "running".into(),
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let dir = a.target.ledger_dir()?;
    let dev = lostwrite::device::open(&a.target.device, false).ok();
    let mut opts = OpenOptions::new(Access::Live);
    opts.device_moved = a.device_moved;
    opts.skim = true;
    let ident = dev.as_ref().map(|d| (d.identity(), d.size()));
    let mut ledger = Ledger::open(&dir, ident, opts)?;
    // A skimming open checks no state table page: these blocks' pages are checked here, and a
    // failing one sends the reading through a full open, which rebuilds the table and says so.
    // (A live view judges no page: the running service reseals them as it goes.)
    if !ledger.is_live_view() && ledger.page_damage(&a.blocks).is_some() {
        drop(ledger);
        opts.skim = false;
        ledger = Ledger::open(&dir, ident, opts)?;
    }
    let geo = ledger.geometry();
    for &b in &a.blocks {
        if b >= geo.block_count() {
            anyhow::bail!(
                "block {b}: beyond the device's {} blocks of {} bytes (blocks are numbered from 0)",
                geo.block_count(),
                geo.block_size
            );
        }
    }
    let wanted: HashSet<u64> = a.blocks.iter().copied().collect();
    let mut notes = Vec::new();
    let owners = match (&dev, a.files) {
        (Some(d), true) => {
            let items: Vec<lostwrite::forensics::Item> = a
                .blocks
                .iter()
                .map(|&b| (geo.offset(b), None, None))
                .collect();
            lostwrite::forensics::map_blocks(&ledger, d, &a.target.device, &items, &mut notes)?.2
        }
        (None, true) => anyhow::bail!(
            "--files: the device {} cannot be read here, so its filesystem cannot be examined",
            a.target.device
        ),
        _ => vec![Vec::new(); a.blocks.len()],
    };
    let hist = history::collect(&ledger, &wanted, &HashSet::new())?;
    let zero = ledger.zero_crc();
    let mut out_blocks = Vec::new();
    let mut text = String::new();
    if ledger.is_live_view() {
        text.push_str("(the ledger is held by a running service: this is its journal so far)\n");
    }
    let cached = dev.as_ref().map(|d| lostwrite::device::CachedReads(d));
    let reader: Option<&dyn BlockDevice> = match (&dev, &cached) {
        (Some(_), Some(c)) if a.cached => Some(c),
        (Some(d), _) => Some(d),
        _ => None,
    };
    let mut buf = vec![0u8; geo.block_size as usize];
    for (&b, files) in a.blocks.iter().zip(&owners) {
        let events = hist.events.get(&b).cloned().unwrap_or_default();
        let now = ledger.state(b);
        let holds = reader.and_then(|d| {
            let n = geo.bytes_in(b);
            d.read_media(&mut buf[..n], geo.offset(b)).ok()?;
            Some(block::checksum_padded(&buf[..n], geo.block_size))
        });
        let held_gen = holds.and_then(|c| {
            events
                .iter()
                .rev()
                .find(|e| e.crc(zero) == Some(c))
                .map(|e| e.generation)
        });
        let state = match now {
            BlockState::Tracked { generation, crc } => {
                format!("tracked at generation {generation} (crc {crc:08x})")
            }
            BlockState::Untracked { generation } => {
                format!("untracked (last generation {generation})")
            }
            BlockState::Unknown { generation } => {
                format!("unknown: the write of generation {generation} failed")
            }
        };
        text.push_str(&format!("block {b} (offset {}): {state}\n", geo.offset(b)));
        for f in files {
            let bytes = f
                .bytes
                .map(|(s, e)| format!(", bytes {s}-{}", e - 1))
                .unwrap_or_default();
            text.push_str(&format!(
                "  owner [{}] {}{bytes}: {}\n",
                f.region, f.owner, f.symptom
            ));
        }
        text.push_str(&format!(
            "  {:>6} {:>10}  {:<27} {:>7}  {:<8} {:<8}  DURABLE\n",
            "GEN", "LSN", "TIME", "SESSION", "CHANGE", "CRC"
        ));
        for e in &events {
            text.push_str(&format!(
                "  {:>6} {:>10}  {:<27} {:>7}  {:<8} {:<8}  {}\n",
                e.generation,
                e.lsn,
                rfc3339(e.time),
                e.session,
                e.change.name(),
                e.crc(zero).map_or("-".into(), |c| format!("{c:08x}")),
                if e.durable { "yes" } else { "no" }
            ));
        }
        if events.is_empty() {
            text.push_str("  (no recorded generations)\n");
        }
        let repairs = hist.repairs.get(&b).cloned().unwrap_or_default();
        for r in &repairs {
            text.push_str(&format!(
                "  repaired: gen {} (crc {:08x}) written back by `lostwrite repair` {} (LSN {})\n",
                r.generation,
                r.crc,
                rfc3339(r.time),
                r.lsn
            ));
        }
        match (holds, held_gen) {
            (None, _) => text.push_str("  device: not readable here\n"),
            (Some(_), Some(g)) if Some(g) == events.last().map(|e| e.generation) => {
                text.push_str(&format!("  device holds generation {g} (the latest)\n"))
            }
            (Some(_), Some(g)) => text.push_str(&format!(
                "  device holds generation {g}, an OLDER generation (run `lostwrite verify`)\n"
            )),
            (Some(c), None) => text.push_str(&format!(
                "  device holds contents (crc {c:08x}) matching no recorded generation of this block\n"
            )),
        }
        out_blocks.push(json!({
            "block": b,
            "offset": geo.offset(b),
            "state": state,
            "generations": events.iter().map(|e| json!({
                "generation": e.generation,
                "lsn": e.lsn,
                "time": rfc3339(e.time),
                "session": e.session,
                "change": e.change.name(),
                "crc": e.crc(zero).map(|c| format!("{c:08x}")),
                "durable": e.durable,
            })).collect::<Vec<_>>(),
            "repairs": repairs.iter().map(|r| json!({
                "generation": r.generation,
                "lsn": r.lsn,
                "time": rfc3339(r.time),
                "crc": format!("{:08x}", r.crc),
            })).collect::<Vec<_>>(),
            "device_crc": holds.map(|c| format!("{c:08x}")),
            "files": files,
            "device_holds_generation": held_gen,
        }));
    }
    // Asked after the reads: the note counts what a cache drop could not take.
    let read = reader.map(|r| r.media_read());
    if let Some(r) = &read {
        let line = lostwrite::verify::report::read_line(r.mode, r.note.as_deref());
        text.insert_str(0, &format!("{line}\n"));
    }
    let used: HashSet<u64> = hist.events.values().flatten().map(|e| e.session).collect();
    let mut sessions = Vec::new();
    for s in hist
        .sessions
        .values()
        .filter(|s| used.contains(&s.id) && s.id != 0)
    {
        text.push_str(&format!(
            "session {}: opened {}, {}{}\n",
            s.id,
            rfc3339(s.open_time),
            session_end(s),
            if s.strict {
                ", strict journal sync"
            } else {
                ""
            }
        ));
        sessions.push(json!({
            "session": s.id,
            "opened": rfc3339(s.open_time),
            "end": session_end(s),
            "strict": s.strict,
            "flushes": s.flush_count(),
        }));
    }
    if let Some((lsn, t)) = hist.compacted {
        notes.push(format!(
            "history through LSN {lsn} ({}) is compacted: of it, each block keeps only its latest change (the first generation listed)",
            rfc3339(t)
        ));
    }
    // Segments answered from their summaries were not read: say so, and who reads them all.
    let skipped = hist.end.segments.iter().filter(|s| s.from_summary).count();
    if skipped > 0 {
        notes.push(format!(
            "{skipped} of the {} journal segments were not read: their summaries say they hold no change of these blocks, so damage inside them is not looked for here (`lostwrite ledger check` reads every segment)",
            hist.end.segments.len()
        ));
    }
    for n in &notes {
        text.push_str(&format!("note: {n}\n"));
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ledger": dir.display().to_string(),
                "read": read.as_ref().map(|r| r.mode),
                "read_note": read.as_ref().and_then(|r| r.note.clone()),
                "block_size": geo.block_size,
                "blocks": out_blocks,
                "sessions": sessions,
                "compacted_through_lsn": hist.compacted.map(|c| c.0),
                "compacted_through_time": hist.compacted.map(|c| rfc3339(c.1)),
                "journal_segments": hist.end.segments.len(),
                "segments_not_read": skipped,
            }))?
        );
    } else {
        out!("{text}");
    }
    Ok(super::ledger::damaged(&ledger))
}
