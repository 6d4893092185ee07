//! Repair: giving lost writes back. For every block `verify` fails, the ledger knows which
//! generation should be there and its checksum; this module finds those bytes in other copies
//! of the disk ([`Source`]: a backup image, a snapshot, a replica, an NBD export of any of
//! them), accepting a block only where its checksum equals the expected generation's, and
//! plans the repair ([`Plan`]: per block the source, runs of blocks, per file what comes back,
//! what cannot and why). [`apply`] writes the plan: each block written and synced, then
//! recorded in the ledger as a repair. Classification is `verify`'s, reused whole; reading
//! devices is `device`'s; the per-file view is `forensics`' mapping (docs/DESIGN.md,
//! section 6; docs/REPAIR.md).

mod apply;
mod plan;
mod source;

pub use apply::{apply, Applied, Skipped};
pub use plan::{build, BlockPlan, FilePlan, Plan, Refusal, Run, SourceInfo};
pub use source::{DeviceSource, KeptSource, Lookup, Source, Want};

use crate::device::BlockDevice;
use crate::ledger::LedgerWriter;
use crate::verify::{self, report::Outcome, report::Report};

/// What [`repair_and_verify`] did: the plan it followed, what it wrote, and the verification
/// after the writes.
pub struct Repaired {
    /// The plan, made from the verification before the writes.
    pub plan: Plan,
    /// The blocks written back and recorded.
    pub applied: Applied,
    /// The verification after the writes.
    pub after: Report,
}

/// `repair --apply` whole: verifies `dev`, plans from `sources` (with `files`, the device's
/// name, mapped to files as `report --files` maps them), writes and records every repairable
/// block, then verifies again. Refuses to write when the ledger's state table failed its
/// checks: a rebuilt view is not evidence enough to write from.
pub fn repair_and_verify(
    writer: &LedgerWriter,
    dev: &dyn BlockDevice,
    files: Option<&str>,
    sources: &[&dyn Source],
    opts: &verify::Options,
) -> crate::Result<Repaired> {
    let report = verify::run(writer, dev, opts)?;
    if report.result == Outcome::LedgerDamaged {
        return Err(crate::Error::Usage(format!(
            "{}: the ledger's state table failed its checks: nothing is written from a rebuilt view; run `lostwrite ledger check --repair`, then the repair again",
            writer.dir().display()
        )));
    }
    let mut plan = build(writer, &report, sources)?;
    if let Some(name) = files {
        plan.map_files(writer, dev, name)?;
    }
    let applied = apply(writer, dev, &plan, sources)?;
    let after = verify::run(
        writer,
        dev,
        &verify::Options {
            progress: false,
            ..*opts
        },
    )?;
    Ok(Repaired {
        plan,
        applied,
        after,
    })
}
