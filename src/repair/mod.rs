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
