//! `lostwrite ledger check|dump|compact|export-block`: the ledger itself, and the contents its
//! data log keeps (`serve --keep-data`).

use super::resolve_ledger;
use lostwrite::clock::rfc3339;
use lostwrite::ledger::check::check;
use lostwrite::ledger::compact::Retention;
use lostwrite::ledger::kept::KeptData;
use lostwrite::ledger::record::Record;
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// Flags of `ledger`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    op: Op,
}

/// Where the ledger is.
#[derive(clap::Args, Debug)]
struct Where {
    /// The device whose ledger it is (the ledger is DEVICE.ledger unless --ledger is given).
    #[arg(value_name = "DEVICE")]
    device: Option<String>,
    /// The ledger directory.
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Op {
    /// Validate every frame, the segment chain, the state table (against a full replay of the
    /// journal) and the baseline; name the file and offset of any damage. Exit 1 when damaged.
    Check {
        #[command(flatten)]
        at: Where,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Repair what can be repaired: truncate a torn journal tail, move bytes found after the
        /// journal's clean end aside (to SEGMENT.foreign-OFFSET), and rewrite a damaged or
        /// missing state table from the journal.
        #[arg(long)]
        repair: bool,
    },
    /// Print the journal's records.
    Dump {
        #[command(flatten)]
        at: Where,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only records with this LSN or later.
        #[arg(long, value_name = "LSN", default_value_t = 1)]
        from: u64,
        /// Only records about this block (and session/flush markers).
        #[arg(long, value_name = "BLOCK")]
        block: Option<u64>,
    },
    /// Write the kept contents of one block (`serve --keep-data`) to standard output or a
    /// file: its latest generation, or --generation G. Only bytes whose data-log entry verifies
    /// (BLAKE3) and whose CRC-32 is the one the ledger records for that generation are written.
    /// Exit 1 when the data log does not hold them.
    ExportBlock {
        #[command(flatten)]
        at: Where,
        /// The block (numbered from 0).
        #[arg(long, value_name = "BLOCK")]
        block: u64,
        /// Which generation [default: the latest, the one the device should hold].
        #[arg(long, value_name = "GENERATION")]
        generation: Option<u32>,
        /// Write the bytes to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// List the block's kept generations instead of writing bytes.
        #[arg(long)]
        list: bool,
    },
    /// Fold journal history older than --retain, or beyond --retain-bytes, into each block's
    /// latest change, and delete the folded segments (offline: not while `serve` holds the
    /// ledger; a running service compacts with its own --retain).
    Compact {
        #[command(flatten)]
        at: Where,
        /// Keep every record younger than this, e.g. 30d (0s folds everything).
        #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
        retain: Option<std::time::Duration>,
        /// Keep the journal within this many bytes, e.g. 10G.
        #[arg(long, value_name = "BYTES", value_parser = super::parse_size)]
        retain_bytes: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    match a.op {
        Op::Check { at, json, repair } => {
            let dir = resolve_ledger(at.device.as_deref(), at.ledger.as_ref())?;
            if repair {
                let mut opts = OpenOptions::new(Access::Write);
                opts.repair = true;
                let mut l = LedgerWriter::open(&dir, None, opts)?;
                for w in &l.recovery().warnings {
                    errln!("repair: {w}");
                }
                l.rebuild_state()?;
                drop(l);
                errln!("repair: state table rewritten from the journal");
            }
            let rep = check(&dir)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rep)?);
            } else {
                for n in &rep.notes {
                    outln!("note: {n}");
                }
                for w in &rep.warnings {
                    outln!("warning: {w}");
                }
                for p in &rep.problems {
                    outln!("DAMAGED {} at offset {}: {}", p.file, p.offset, p.what);
                }
                if let Some(k) = &rep.kept {
                    outln!(
                        "data log {}: {} segments, {} bytes, {} entries verified{}",
                        k.dir,
                        k.segments,
                        k.bytes,
                        k.entries,
                        k.window
                            .as_ref()
                            .map(|(a, b)| format!(", written {a} .. {b}"))
                            .unwrap_or_default()
                    );
                }
                if rep.problems.is_empty() {
                    outln!(
                        "ledger {} is sound: {} segments, {} records, {} state entries match a replay of the journal",
                        dir.display(),
                        rep.segments,
                        rep.records,
                        rep.blocks
                    );
                } else {
                    outln!(
                        "ledger {} has {} problem{}; `lostwrite ledger check --repair` rebuilds a damaged or missing state table from the journal and moves bytes found after the journal's clean end aside; other damage to the journal, baseline, compacted history or metadata needs a copy of the ledger",
                        dir.display(),
                        rep.problems.len(),
                        if rep.problems.len() == 1 { "" } else { "s" }
                    );
                }
            }
            Ok(if rep.problems.is_empty() { 0 } else { 1 })
        }
        Op::Dump {
            at,
            json,
            from,
            block,
        } => {
            let dir = resolve_ledger(at.device.as_deref(), at.ledger.as_ref())?;
            let l = Ledger::open(&dir, None, OpenOptions::new(Access::Live))?;
            let geo = l.geometry();
            if let Some(b) = block.filter(|&b| b >= geo.block_count()) {
                anyhow::bail!(
                    "--block {b}: beyond the device's {} blocks of {} bytes (blocks are numbered from 0)",
                    geo.block_count(),
                    geo.block_size
                );
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut err: Option<std::io::Error> = None;
            if let Some(f) = l.fold().filter(|_| !json) {
                writeln!(
                    out,
                    "# records through LSN {} ({}) are compacted: {} blocks' latest changes in {}",
                    f.header.through_lsn,
                    rfc3339(f.header.through_time),
                    f.header.entry_count,
                    f.path.display()
                )?;
            }
            l.scan_journal(from, &mut |e| {
                let about = e.record.block().or(e.record.repaired());
                if block.is_some() && about.is_some() && about != block {
                    return Ok(());
                }
                let line = if json {
                    serde_json::json!({
                        "lsn": e.lsn,
                        "time": rfc3339(e.time),
                        "kind": e.record.kind(),
                        "record": e.record,
                    })
                    .to_string()
                } else {
                    format!("{:>10}  {}  {}", e.lsn, rfc3339(e.time), describe(e.record))
                };
                if err.is_none() {
                    if let Err(e) = writeln!(out, "{line}") {
                        err = Some(e);
                    }
                }
                Ok(())
            })?;
            if let Some(e) = err {
                return Err(e.into());
            }
            out.flush()?;
            Ok(damaged(&l))
        }
        Op::ExportBlock {
            at,
            block,
            generation,
            output,
            list,
        } => {
            let dir = resolve_ledger(at.device.as_deref(), at.ledger.as_ref())?;
            export_block(&dir, block, generation, output, list)
        }
        Op::Compact {
            at,
            retain,
            retain_bytes,
            json,
        } => {
            let dir = resolve_ledger(at.device.as_deref(), at.ledger.as_ref())?;
            compact(
                &dir,
                Retention {
                    age: retain,
                    bytes: retain_bytes,
                },
                json,
            )
        }
    }
}

fn compact(dir: &std::path::Path, keep: Retention, json: bool) -> anyhow::Result<i32> {
    if keep.is_none() {
        anyhow::bail!(
            "say how much history to keep: --retain DURATION (e.g. 30d; 0s folds everything) and/or --retain-bytes BYTES (e.g. 10G)"
        );
    }
    let l = LedgerWriter::open(dir, None, OpenOptions::new(Access::Write))?;
    for w in &l.recovery().warnings {
        errln!("compact: {w}");
    }
    let before = l.journal_bytes();
    let now = lostwrite::clock::now();
    // Offline, the segment last written may be folded too, so it is sealed (the next writer
    // appends to a new one); the limits then decide what is folded.
    if keep.age.is_some() || keep.bytes.is_some_and(|b| b < before) {
        l.seal_segment()?;
    }
    let done = l.compact_all(keep, now)?;
    let folded: u64 = done.iter().map(|c| c.segments.1 - c.segments.0 + 1).sum();
    let after = l.journal_bytes();
    let fold = l.fold();
    drop(l);
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "ledger": dir.display().to_string(),
                "journal_bytes_before": before,
                "journal_bytes_after": after,
                "segments_folded": folded,
                "compacted_through_lsn": fold.as_ref().map(|f| f.header.through_lsn),
                "compacted_through_time": fold.as_ref().map(|f| rfc3339(f.header.through_time)),
                "compacted_blocks": fold.as_ref().map(|f| f.header.entry_count),
                "folded_now": !done.is_empty(),
            })
        );
    } else if done.is_empty() {
        outln!(
            "ledger {}: nothing to fold (the journal's {before} bytes are all within the retention)",
            dir.display()
        );
    } else {
        let f = fold.as_ref().expect("a compaction installs a fold");
        outln!(
            "ledger {}: folded {} journal segment(s); journal {before} -> {after} bytes; history through LSN {} ({}) is now each block's latest change ({} blocks)",
            dir.display(),
            folded,
            f.header.through_lsn,
            rfc3339(f.header.through_time),
            f.header.entry_count
        );
    }
    Ok(0)
}

/// `ledger export-block`: the kept bytes of a block's generation, only when the ledger records
/// a write of that generation with their CRC-32.
fn export_block(
    dir: &std::path::Path,
    block: u64,
    generation: Option<u32>,
    output: Option<PathBuf>,
    list: bool,
) -> anyhow::Result<i32> {
    let l = Ledger::open(dir, None, OpenOptions::new(Access::Live))?;
    let geo = l.geometry();
    if block >= geo.block_count() {
        anyhow::bail!(
            "--block {block}: beyond the device's {} blocks of {} bytes (blocks are numbered from 0)",
            geo.block_count(),
            geo.block_size
        );
    }
    let Some(kept) = KeptData::open(dir)? else {
        errln!(
            "lostwrite: {} keeps no data (no data log: serve it with --keep-data)",
            dir.display()
        );
        return Ok(1);
    };
    if list {
        for (g, crc, lsn, t) in kept.kept_of(block) {
            outln!(
                "block {block} gen {g} crc {crc:08x} lsn {lsn} kept {}",
                rfc3339(t)
            );
        }
        return Ok(0);
    }
    // The generation and CRC-32 come from the ledger's own records, never from the data log.
    let current = match l.state(block) {
        BlockState::Tracked { generation: g, crc } => Some((g, crc)),
        _ => None,
    };
    let wanted = match generation {
        None => current,
        Some(g) if current.is_some_and(|(cg, _)| cg == g) => current,
        Some(g) => {
            let mut found = None;
            l.scan_journal(1, &mut |e| {
                if let Record::Write {
                    block: b,
                    generation: wg,
                    crc,
                } = *e.record
                {
                    if b == block && wg == g {
                        found = Some((g, crc));
                    }
                }
                Ok(())
            })?;
            found
        }
    };
    let Some((g, crc)) = wanted else {
        errln!(
            "lostwrite: the ledger holds no write of block {block}{}: nothing to look for (a zeroed, trimmed or untracked block, or history folded by retention)",
            generation.map(|g| format!(" generation {g}")).unwrap_or_default()
        );
        return Ok(1);
    };
    match kept.find(block, g, crc)? {
        Some(bytes) => {
            match &output {
                Some(p) => std::fs::write(p, &bytes)
                    .map_err(|e| anyhow::anyhow!("{}: writing: {e}", p.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
            }
            errln!(
                "block {block} generation {g} (crc {crc:08x}): {} bytes from the data log",
                bytes.len()
            );
            Ok(0)
        }
        None => {
            let damaged = kept.damage().iter().any(|d| !d.torn);
            errln!(
                "lostwrite: the data log holds no verified copy of block {block} generation {g} (crc {crc:08x}): written before --keep-data or outside its window{}",
                if damaged {
                    ", or in a damaged entry (`lostwrite ledger check` names it)"
                } else {
                    ""
                }
            );
            Ok(1)
        }
    }
}

/// Says on stderr that the ledger's state table is damaged (the output was made from a view
/// rebuilt from the journal) and gives the exit status: 2 when damaged.
pub fn damaged(l: &Ledger) -> i32 {
    match l.state_damage() {
        Some(d) => {
            errln!("lostwrite: ledger damaged: {d}");
            2
        }
        None => 0,
    }
}

fn describe(r: &Record) -> String {
    match r {
        Record::SessionOpen(o) => format!(
            "session-open {} (previous {}; {} journal sync; pid {}; {})",
            o.session,
            if o.previous_clean { "clean" } else { "CRASHED" },
            if o.strict { "strict" } else { "flush" },
            o.pid,
            o.software
        ),
        Record::SessionClose { session } => format!("session-close {session}"),
        Record::Baseline { blocks } => format!("baseline of {blocks} blocks"),
        Record::Write {
            block,
            generation,
            crc,
        } => format!("write block {block} gen {generation} crc {crc:08x}"),
        Record::Zero { block, generation } => format!("zero block {block} gen {generation}"),
        Record::Trim { block, generation } => format!("trim block {block} gen {generation}"),
        Record::Failed { block, generation } => {
            format!("FAILED write of block {block} gen {generation}")
        }
        Record::Flush {
            session,
            covers,
            extra,
        } => {
            if extra.is_empty() {
                format!("flush (session {session}): durable through LSN {covers}")
            } else {
                format!(
                    "flush (session {session}): durable through LSN {covers} and {} later ranges",
                    extra.len()
                )
            }
        }
        Record::Durable { first, last } => format!("fua: LSN {first}..={last} durable"),
        Record::FlushIntent {
            session,
            covers,
            extra,
        } => {
            if extra.is_empty() {
                format!("flush intent (session {session}): through LSN {covers} once confirmed")
            } else {
                format!(
                    "flush intent (session {session}): through LSN {covers} and {} later ranges once confirmed",
                    extra.len()
                )
            }
        }
        Record::FlushConfirm { session, intent } => {
            format!("flush confirmed (session {session}): intents through LSN {intent} hold")
        }
        Record::Repair {
            block,
            generation,
            crc,
        } => format!("repair of block {block}: gen {generation} (crc {crc:08x}) written back"),
    }
}
