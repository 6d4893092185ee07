//! The repair plan: for every block `verify` fails, which source holds the generation the
//! ledger expects (the first, in the order given, whose bytes have its checksum), the runs of
//! consecutive blocks that come from one source, and for the rest why they cannot come back.
//! Building it writes nothing. Its serde form is `repair --json`'s `plan` (docs/REPAIR.md).

use super::source::{Lookup, Source, Want};
use crate::block::{self, Geometry};
use crate::device::{BlockDevice, ReadMode};
use crate::error::Result;
use crate::findings::classify::Kind;
use crate::findings::Finding;
use crate::ledger::history::{self, Event};
use crate::ledger::record::Generation;
use crate::ledger::state::BlockState;
use crate::ledger::Ledger;
use crate::verify::report::{read_line, Report};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Wanted blocks asked of a source at once (bounds the bytes held in memory).
const LOOKUP_BATCH: usize = 256;

/// Batches looked up at once: reads in flight, for a source whose scattered blocks would
/// otherwise be read one media access at a time.
const LOOKUP_THREADS: usize = 16;

/// One source as the plan lists it.
#[derive(Clone, Debug, Serialize)]
pub struct SourceInfo {
    /// Its number in the plan: 1 for the first `--from`.
    pub source: usize,
    /// Path, URI or name.
    pub name: String,
    /// How it was read (devices only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadMode>,
    /// Why it was not read with O_DIRECT, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_note: Option<String>,
    /// About the source as a whole (a size that differs from the device's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Blocks it will give back.
    pub blocks: u64,
}

/// Why one source was not used for one block.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Refusal {
    /// The source's number.
    pub source: usize,
    /// The reason, as a sentence fragment ("holds generation 5 of 7").
    pub reason: String,
    /// The block's generation the source holds, when its checksum matched one the history
    /// knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds_generation: Option<Generation>,
}

/// One failing block.
#[derive(Clone, Debug, Serialize)]
pub struct BlockPlan {
    /// Block number.
    pub block: u64,
    /// Byte offset on the device.
    pub offset: u64,
    /// What verify called it.
    pub kind: Kind,
    /// The generation the ledger expects.
    pub expected_generation: Generation,
    /// Its checksum (hex).
    pub expected_crc: String,
    /// The source that holds it, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<usize>,
    /// Sources that did not (tried before the one used, or all of them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refusal>,
    #[serde(skip)]
    pub(super) crc: u32,
}

/// Consecutive blocks that come back from one source.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Run {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// Number of blocks.
    pub blocks: u64,
    /// The source's number.
    pub source: usize,
}

/// What comes back to one owner (with `--files`).
#[derive(Clone, Debug, Serialize)]
pub struct FilePlan {
    /// "whole disk", "partition 2", ...
    pub region: String,
    /// What owns the blocks (file, directory, inode-table, free, ... as `report --files`).
    pub owner: &'static str,
    /// Its path, where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Byte ranges within the file `[start, end)` that come back.
    pub back: Vec<(u64, u64)>,
    /// Byte ranges within the file that do not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_back: Vec<(u64, u64)>,
    /// Its blocks that come back.
    pub blocks_back: u64,
    /// Its blocks that do not.
    pub blocks_not_back: u64,
}

/// The whole plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// The device as given.
    pub device: String,
    /// How the device was read by the verification the plan starts from.
    pub read: ReadMode,
    /// Why not with O_DIRECT, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_note: Option<String>,
    /// Ledger directory.
    pub ledger: String,
    /// Block size.
    pub block_size: u32,
    /// `--strict`: unflushed and uncertain blocks fail, and are repaired, too.
    pub strict: bool,
    /// The sources, in the order they are tried.
    pub sources: Vec<SourceInfo>,
    /// Blocks verify fails.
    pub failing: u64,
    /// Of them, those a source holds.
    pub repairable: u64,
    /// Of them, those no source holds.
    pub unrepairable: u64,
    /// The repairable blocks as runs, in block order.
    pub runs: Vec<Run>,
    /// Every failing block, in block order.
    pub blocks: Vec<BlockPlan>,
    /// With `--files`: what comes back per file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FilePlan>>,
    /// Anything else worth saying (a source of another size, the mapping's notes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Decides, for every failing finding of `report`, which of `sources` holds its expected
/// generation. Reads each source only at the failing blocks.
pub fn build(ledger: &Ledger, report: &Report, sources: &[&dyn Source]) -> Result<Plan> {
    let geo = ledger.geometry();
    let zero = ledger.zero_crc();
    let failing: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.kind.fails(report.strict))
        .collect();
    let wanted: HashSet<u64> = failing.iter().map(|f| f.block).collect();
    let hist = history::collect(ledger, &wanted, &HashSet::new())?;
    let mut blocks: Vec<BlockPlan> = failing
        .iter()
        .map(|f| {
            let crc = match ledger.state(f.block) {
                BlockState::Tracked { crc, .. } => crc,
                // Findings are made of tracked blocks only.
                _ => zero,
            };
            BlockPlan {
                block: f.block,
                offset: f.offset,
                kind: f.kind,
                expected_generation: f.expected_generation,
                expected_crc: format!("{crc:08x}"),
                source: None,
                refused: Vec::new(),
                crc,
            }
        })
        .collect();
    let mut infos = Vec::new();
    let mut notes = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let n = i + 1;
        let pending: Vec<usize> = (0..blocks.len())
            .filter(|&k| blocks[k].source.is_none())
            .collect();
        let mut given = 0;
        for (k, verdict) in lookup_all(geo, zero, *src, &blocks, &pending, &hist.events) {
            match verdict {
                Ok(()) => {
                    blocks[k].source = Some(n);
                    given += 1;
                }
                Err((reason, holds_generation)) => blocks[k].refused.push(Refusal {
                    source: n,
                    reason,
                    holds_generation,
                }),
            }
        }
        // Asked after the reads: how they went.
        let read = src.media_read();
        let note = src.note(geo);
        if let Some(note) = &note {
            notes.push(format!("source {n}: {note}"));
        }
        infos.push(SourceInfo {
            source: n,
            name: src.label(),
            read: read.as_ref().map(|r| r.mode),
            read_note: read.and_then(|r| r.note),
            note,
            blocks: given,
        });
    }
    let repairable = blocks.iter().filter(|b| b.source.is_some()).count() as u64;
    Ok(Plan {
        device: report.device.clone(),
        read: report.read,
        read_note: report.read_note.clone(),
        ledger: report.ledger.clone(),
        block_size: geo.block_size,
        strict: report.strict,
        sources: infos,
        failing: blocks.len() as u64,
        repairable,
        unrepairable: blocks.len() as u64 - repairable,
        runs: runs(&blocks),
        blocks,
        files: None,
        notes,
    })
}

/// What one source holds for each of the `pending` blocks, judged: batches of blocks are
/// looked up by several threads at once, since scattered reads of a backup wait on the media
/// one at a time otherwise.
fn lookup_all(
    geo: Geometry,
    zero: u32,
    src: &dyn Source,
    blocks: &[BlockPlan],
    pending: &[usize],
    events: &HashMap<u64, Vec<Event>>,
) -> Vec<(usize, Verdict)> {
    let batches: Vec<&[usize]> = pending.chunks(LOOKUP_BATCH).collect();
    let next = AtomicUsize::new(0);
    let empty = Vec::new();
    let work = || {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(batch) = batches.get(i) else {
                return out;
            };
            let wants: Vec<Want> = batch.iter().map(|&k| want(&blocks[k])).collect();
            for ((&k, w), look) in batch.iter().zip(&wants).zip(src.lookup(geo, &wants)) {
                let ev = events.get(&w.block).unwrap_or(&empty);
                out.push((k, judge(geo, zero, w, look, ev)));
            }
        }
    };
    let threads = LOOKUP_THREADS.min(batches.len());
    let mut all: Vec<(usize, Verdict)> = if threads <= 1 {
        work()
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    all.sort_unstable_by_key(|v| v.0);
    all
}

/// A block's verdict from one source: usable, or why not (and the generation it holds).
type Verdict = std::result::Result<(), (String, Option<Generation>)>;

fn want(b: &BlockPlan) -> Want {
    Want {
        block: b.block,
        generation: b.expected_generation,
        crc: b.crc,
    }
}

/// Whether `look` is the wanted generation: its checksum equals the expected one (and, where
/// zeroes are expected, it is zeroes). Otherwise the reason, and the generation of this block
/// it holds when its checksum is one the history knows.
pub(super) fn judge(geo: Geometry, zero: u32, w: &Want, look: Lookup, events: &[Event]) -> Verdict {
    let bytes = match look {
        Lookup::Bytes(b) => b,
        Lookup::Missing(why) => return Err((why, None)),
    };
    if bytes.len() != geo.bytes_in(w.block) {
        return Err((
            format!(
                "gave {} bytes for a block of {}",
                bytes.len(),
                geo.bytes_in(w.block)
            ),
            None,
        ));
    }
    let crc = block::checksum_padded(&bytes, geo.block_size);
    if crc == w.crc && (w.crc != zero || block::is_zero(&bytes)) {
        return Ok(());
    }
    let held = events
        .iter()
        .rev()
        .find(|e| e.crc(zero) == Some(crc))
        .map(|e| e.generation);
    match held {
        Some(g) => Err((format!("holds generation {g} of {}", w.generation), Some(g))),
        None if crc == w.crc => Err((
            "holds different contents with the expected checksum (not the zeroes expected)".into(),
            None,
        )),
        None => Err((format!("holds different contents (crc {crc:08x})"), None)),
    }
}

/// The repairable blocks as runs of consecutive blocks from one source.
fn runs(blocks: &[BlockPlan]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for b in blocks {
        let Some(s) = b.source else { continue };
        match out.last_mut() {
            Some(r) if r.source == s && r.last + 1 == b.block => {
                r.last = b.block;
                r.blocks += 1;
            }
            _ => out.push(Run {
                first: b.block,
                last: b.block,
                blocks: 1,
                source: s,
            }),
        }
    }
    out
}

impl Plan {
    /// Adds what comes back per file (`--files`): the blocks mapped as `report --files` maps
    /// them, and each owner's byte ranges merged.
    pub fn map_files(
        &mut self,
        ledger: &Ledger,
        dev: &dyn BlockDevice,
        device_path: &str,
    ) -> Result<()> {
        let items: Vec<crate::forensics::Item> = self
            .blocks
            .iter()
            .map(|b| (b.offset, Some(b.kind), None))
            .collect();
        let mut notes = Vec::new();
        let (_, _, owners) =
            crate::forensics::map_blocks(ledger, dev, device_path, &items, &mut notes)?;
        let mut files: Vec<FilePlan> = Vec::new();
        let mut at: HashMap<(String, &'static str, Option<String>), usize> = HashMap::new();
        for (b, refs) in self.blocks.iter().zip(owners) {
            for r in refs {
                let key = (r.region.clone(), r.owner, r.path.clone());
                let i = *at.entry(key).or_insert_with(|| {
                    files.push(FilePlan {
                        region: r.region.clone(),
                        owner: r.owner,
                        path: r.path.clone(),
                        back: Vec::new(),
                        not_back: Vec::new(),
                        blocks_back: 0,
                        blocks_not_back: 0,
                    });
                    files.len() - 1
                });
                let f = &mut files[i];
                let (count, ranges) = if b.source.is_some() {
                    (&mut f.blocks_back, &mut f.back)
                } else {
                    (&mut f.blocks_not_back, &mut f.not_back)
                };
                *count += 1;
                if let Some(range) = r.bytes {
                    ranges.push(range);
                }
            }
        }
        for f in &mut files {
            f.back = merge(std::mem::take(&mut f.back));
            f.not_back = merge(std::mem::take(&mut f.not_back));
        }
        self.notes.extend(notes);
        self.files = Some(files);
        Ok(())
    }

    /// The human rendering: sources, runs, what cannot come back and why, files.
    pub fn human(&self, max_rows: usize) -> String {
        let mut out = String::new();
        writeln!(
            out,
            "repair plan for {}  ledger {}  block size {}",
            self.device, self.ledger, self.block_size
        )
        .ok();
        writeln!(out, "{}", read_line(self.read, self.read_note.as_deref())).ok();
        for s in &self.sources {
            let read = s
                .read
                .map(|m| match &s.read_note {
                    Some(n) => format!(" (read {}: {n})", m.name()),
                    None => format!(" (read {})", m.name()),
                })
                .unwrap_or_default();
            writeln!(
                out,
                "source {}: {}{read}: {} block{}",
                s.source,
                s.name,
                s.blocks,
                plural(s.blocks)
            )
            .ok();
        }
        if self.sources.is_empty() {
            writeln!(out, "no source given (--from IMAGE|URI)").ok();
        }
        writeln!(
            out,
            "failing blocks: {}; repairable: {} in {} run{}; cannot repair: {}",
            self.failing,
            self.repairable,
            self.runs.len(),
            plural(self.runs.len() as u64),
            self.unrepairable
        )
        .ok();
        if !self.runs.is_empty() {
            writeln!(out).ok();
            writeln!(
                out,
                "{:>12}  {:>12}  {:>7}  {:>22}  SOURCE",
                "FIRST", "LAST", "BLOCKS", "BYTES"
            )
            .ok();
            let bs = self.block_size as u64;
            for r in self.runs.iter().take(max_rows) {
                writeln!(
                    out,
                    "{:>12}  {:>12}  {:>7}  {:>22}  {}",
                    r.first,
                    r.last,
                    r.blocks,
                    format!("{}-{}", r.first * bs, (r.last + 1) * bs - 1),
                    r.source
                )
                .ok();
            }
            if self.runs.len() > max_rows {
                writeln!(
                    out,
                    "... and {} more runs (use --json for all)",
                    self.runs.len() - max_rows
                )
                .ok();
            }
        }
        let lost: Vec<&BlockPlan> = self.blocks.iter().filter(|b| b.source.is_none()).collect();
        if !lost.is_empty() {
            writeln!(out).ok();
            writeln!(out, "cannot repair:").ok();
            for b in lost.iter().take(max_rows) {
                let why = if b.refused.is_empty() {
                    "no source given".to_string()
                } else {
                    b.refused
                        .iter()
                        .map(|r| format!("source {} {}", r.source, r.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                writeln!(
                    out,
                    "  block {} ({}, expected gen {} crc {}): {why}",
                    b.block,
                    b.kind.name(),
                    b.expected_generation,
                    b.expected_crc
                )
                .ok();
            }
            if lost.len() > max_rows {
                writeln!(
                    out,
                    "  ... and {} more (use --json for all)",
                    lost.len() - max_rows
                )
                .ok();
            }
        }
        if let Some(files) = &self.files {
            writeln!(out).ok();
            writeln!(out, "files:").ok();
            for f in files {
                let name = f.path.as_deref().unwrap_or("");
                let mut parts = Vec::new();
                if !f.back.is_empty() {
                    parts.push(format!("bytes {} come back", ranges(&f.back)));
                } else if f.blocks_back > 0 {
                    parts.push(format!(
                        "{} block{} come{} back",
                        f.blocks_back,
                        plural(f.blocks_back),
                        if f.blocks_back == 1 { "s" } else { "" }
                    ));
                }
                if !f.not_back.is_empty() {
                    parts.push(format!("bytes {} do NOT come back", ranges(&f.not_back)));
                } else if f.blocks_not_back > 0 {
                    parts.push(format!(
                        "{} block{} NOT come back",
                        f.blocks_not_back,
                        if f.blocks_not_back == 1 {
                            " does"
                        } else {
                            "s do"
                        }
                    ));
                }
                let line = format!("  [{}] {} {name}: {}", f.region, f.owner, parts.join("; "));
                writeln!(out, "{}", line.trim_end()).ok();
            }
        }
        for n in &self.notes {
            writeln!(out, "note: {n}").ok();
        }
        out
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "0-4095, 8192-12287" for half-open ranges.
fn ranges(r: &[(u64, u64)]) -> String {
    r.iter()
        .map(|(s, e)| format!("{s}-{}", e - 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sorted, with touching or overlapping ranges joined.
fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(block: u64, source: Option<usize>) -> BlockPlan {
        BlockPlan {
            block,
            offset: block * 4096,
            kind: Kind::Reverted,
            expected_generation: 2,
            expected_crc: String::new(),
            source,
            refused: Vec::new(),
            crc: 0,
        }
    }

    #[test]
    fn runs_join_consecutive_blocks_of_one_source() {
        let b = [
            plan(1, Some(1)),
            plan(2, Some(1)),
            plan(3, Some(2)),
            plan(4, None),
            plan(5, Some(2)),
            plan(7, Some(2)),
        ];
        let r: Vec<(u64, u64, usize)> = runs(&b)
            .iter()
            .map(|r| (r.first, r.last, r.source))
            .collect();
        assert_eq!(r, vec![(1, 2, 1), (3, 3, 2), (5, 5, 2), (7, 7, 2)]);
    }

    #[test]
    fn only_the_expected_checksum_is_accepted() {
        let geo = Geometry::new(4096, 8192);
        let zero = block::zero_checksum(4096);
        let data = vec![7u8; 4096];
        let w = Want {
            block: 1,
            generation: 3,
            crc: block::checksum(&data),
        };
        assert!(judge(geo, zero, &w, Lookup::Bytes(data.clone()), &[]).is_ok());
        let other = vec![8u8; 4096];
        let (why, g) = judge(geo, zero, &w, Lookup::Bytes(other), &[]).unwrap_err();
        assert!(why.starts_with("holds different contents"), "{why}");
        assert_eq!(g, None);
        assert!(judge(geo, zero, &w, Lookup::Bytes(vec![7u8; 100]), &[]).is_err());
        let zw = Want {
            block: 0,
            generation: 1,
            crc: zero,
        };
        assert!(judge(geo, zero, &zw, Lookup::Bytes(vec![0u8; 4096]), &[]).is_ok());
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge(vec![(8, 12), (0, 4), (4, 8), (20, 24)]),
            vec![(0, 12), (20, 24)]
        );
    }
}
