//! Writing a plan: each run's blocks are read again from their source and checked again
//! against the expected checksum (a source may have changed since the plan), written to the
//! device at their offsets (through O_DIRECT when the device was opened for it), the device
//! synced, and only then recorded in the ledger as repairs. A crash at any point leaves
//! repaired blocks that verify, with or without their record, and blocks not yet written as
//! they were: running the repair again finishes it.

use super::plan::{judge, Plan};
use super::source::{Lookup, Source, Want};
use crate::device::{AlignedBuf, BlockDevice, DIRECT_ALIGN};
use crate::error::{Error, Result};
use crate::ledger::record::Generation;
use crate::ledger::LedgerWriter;
use serde::Serialize;

/// Most blocks written (and then synced and recorded) at once.
const BATCH_BYTES: u64 = 1 << 20;

/// What applying a plan did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Applied {
    /// Blocks written back and recorded.
    pub written: u64,
    /// Blocks the plan gave a source for that it no longer held, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// A planned block not written.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// Block.
    pub block: u64,
    /// Why (its source's answer on the second read).
    pub reason: String,
}

/// Writes every repairable block of `plan` to `dev` and records it in `writer`'s journal.
pub fn apply(
    writer: &LedgerWriter,
    dev: &dyn BlockDevice,
    plan: &Plan,
    sources: &[&dyn Source],
) -> Result<Applied> {
    let geo = writer.geometry();
    let zero = writer.zero_crc();
    let per_batch = (BATCH_BYTES / geo.block_size as u64).max(1);
    let mut done = Applied::default();
    let wants: Vec<(Want, usize)> = plan
        .blocks
        .iter()
        .filter_map(|b| {
            b.source.map(|s| {
                (
                    Want {
                        block: b.block,
                        generation: b.expected_generation,
                        crc: b.crc,
                    },
                    s,
                )
            })
        })
        .collect();
    // A batch of blocks is written, synced once and recorded with one append.
    for batch in wants.chunks(per_batch as usize) {
        let mut good: Vec<(Want, Vec<u8>)> = Vec::new();
        // Each source is asked for its own blocks of the batch (in block order).
        let mut i = 0;
        while i < batch.len() {
            let src = batch[i].1;
            let mut n = 1;
            while i + n < batch.len() && batch[i + n].1 == src {
                n += 1;
            }
            let asked: Vec<Want> = batch[i..i + n].iter().map(|w| w.0).collect();
            i += n;
            let source = sources.get(src - 1).ok_or_else(|| {
                Error::Usage(format!("the plan names source {src}, which was not given"))
            })?;
            for (w, look) in asked.iter().zip(source.lookup(geo, &asked)) {
                let bytes = match &look {
                    Lookup::Bytes(b) => b.clone(),
                    Lookup::Missing(_) => Vec::new(),
                };
                match judge(geo, zero, w, look, &[]) {
                    Ok(()) => good.push((*w, bytes)),
                    Err((why, _)) => {
                        tracing::warn!(
                            "block {}: source {src} {why} now; not written (it did when planned)",
                            w.block
                        );
                        done.skipped.push(Skipped {
                            block: w.block,
                            reason: format!("source {src} {why} now"),
                        });
                    }
                }
            }
        }
        if good.is_empty() {
            continue;
        }
        good.sort_unstable_by_key(|g| g.0.block);
        write_runs(dev, geo, &good)?;
        dev.flush()
            .map_err(|e| Error::io(dev.name(), "fdatasync of the device after repair writes", e))?;
        let records: Vec<(u64, Generation, u32)> = good
            .iter()
            .map(|(w, _)| (w.block, w.generation, w.crc))
            .collect();
        writer.record_repairs(&records)?;
        done.written += records.len() as u64;
        tracing::debug!(
            "repaired {} blocks from block {}",
            records.len(),
            records[0].0
        );
    }
    Ok(done)
}

/// Writes each run of consecutive blocks in `good` with one aligned write.
fn write_runs(
    dev: &dyn BlockDevice,
    geo: crate::block::Geometry,
    good: &[(Want, Vec<u8>)],
) -> Result<()> {
    let mut i = 0;
    while i < good.len() {
        let first = good[i].0.block;
        let mut n = 1;
        while i + n < good.len() && good[i + n].0.block == first + n as u64 {
            n += 1;
        }
        let len: usize = good[i..i + n].iter().map(|g| g.1.len()).sum();
        let mut buf = AlignedBuf::new(len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN);
        let data = &mut buf.as_mut_slice()[..len];
        let mut at = 0;
        for (_, bytes) in &good[i..i + n] {
            data[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        }
        let off = geo.offset(first);
        dev.write_at(data, off, false).map_err(|e| {
            Error::io(
                dev.name(),
                format!("writing {n} repaired blocks at offset {off}"),
                e,
            )
        })?;
        i += n;
    }
    Ok(())
}
