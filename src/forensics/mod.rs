//! Forensics: from findings to what an operator needs after an incident — the time window of
//! the lost writes, a histogram of them, the files and directories that own the damaged blocks
//! with the symptom their users will see, and a timeline picture ([`plot`]). The file mapping
//! reads the partition table ([`partition`]) and the LVM2 physical volumes in it ([`lvm`]:
//! logical volumes become regions, `lvregions.rs` decides how each is read, also across PVs; [`lvview`] serves one whose pieces lie apart as one run of
//! bytes), recognises each region's filesystem and asks
//! debugfs about ext2/3/4 ([`ext4`]) or xfs_db about XFS ([`xfs`]) through one seam ([`fs`]);
//! any other filesystem is named by its magic, or as unknown, never guessed at.
//!
//! One file per job: `report.rs` holds the report, its options and [`build`]; `window.rs` the
//! incident window and histogram; `owners.rs` the mapping of blocks to their owners
//! ([`map_blocks`]); `affected.rs` the per-owner sums and which free blocks are suspect; `freeproof.rs` which
//! free blocks are proven free at every generation the ledger saw;
//! `symptom.rs` the words for what a user sees; `packages.rs` the packages owning damaged files;
//! `render.rs` the human form ([`ForensicReport::human`]); [`fleet`] the report over many disks;
//! `view.rs` the nbdfuse views that let debugfs read an NBD export and xfs_db a copy-on-write
//! view of a region. Their public items are re-exported here.

pub mod deadline;
pub mod ext4;
pub mod fleet;
pub mod fs;
pub mod lvm;
pub mod lvview;
pub mod owner;
pub mod partition;
pub mod plot;
pub mod view;
pub mod xfs;

mod affected;
mod freeproof;
mod le;
mod lvmtext;
mod lvregions;
mod owners;
mod packages;
mod render;
mod report;
mod symptom;
mod window;

pub use affected::Affected;
pub use owners::{map_blocks, FileRef, Item, MappedFinding, RegionInfo};
pub use packages::{Package, RegionPackages};
pub use report::{build, ForensicReport, Options};
pub use window::{lost_points, Bin, IncidentWindow, LostPoint};
