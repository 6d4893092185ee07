//! Creating a ledger: the directory is built under a temporary name (meta, an empty first
//! journal segment, the state table, and with `init --baseline` the baseline file and its
//! record) and renamed into place, so a ledger appears complete or not at all.

use super::baseline::Baseline;
use super::identity::Identity;
use super::meta::{self, Meta};
use super::record::Record;
use super::state::{BlockState, StateHeader, StateTable};
use super::writer::{self, JournalWriter};
use super::{files, segment, Ledger, BASELINE_FILE, JOURNAL_DIR, META_FILE, STATE_FILE};
use crate::block::{self, Geometry};
use crate::clock;
use crate::device::{BlockDevice, DeviceIdentity};
use crate::error::{Error, IoContext, Result};
use std::path::{Path, PathBuf};

/// Where a new ledger's generation 0 comes from.
pub struct BaselineSource<'a> {
    /// The device to scan.
    pub device: &'a dyn BlockDevice,
    /// Scan threads.
    pub jobs: usize,
    /// Progress display.
    pub progress: Option<&'a indicatif::ProgressBar>,
}

impl Ledger {
    /// Creates a new ledger for a device (atomically: it appears complete or not at all), and
    /// with `baseline` records generation 0 of every block.
    pub fn create(
        dir: &Path,
        identity: &DeviceIdentity,
        device_size: u64,
        block_size: u32,
        baseline: Option<BaselineSource<'_>>,
    ) -> Result<()> {
        // An empty directory is used (replaced by the new ledger); anything else is refused.
        let replace_empty = files::creatable(dir)?;
        if device_size == 0 {
            return Err(Error::Usage(format!(
                "{}: the device is empty (0 bytes); there is nothing to track",
                identity.path
            )));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".lostwrite-init-")
            .tempdir_in(&parent)
            .ctx(&parent, "creating a temporary ledger directory")?;
        let t = tmp.path();
        let geometry = Geometry::new(block_size, device_size);
        let meta = Meta {
            ledger_id: random_id()?,
            block_size,
            device_size,
            identity: Identity::of(identity),
            created: clock::now(),
            software: concat!("lostwrite ", env!("CARGO_PKG_VERSION")).into(),
            version: meta::NEW_LEDGER_VERSION,
        };
        let meta_path = t.join(META_FILE);
        std::fs::write(&meta_path, meta.encode()).ctx(&meta_path, "writing ledger metadata")?;
        std::fs::File::open(&meta_path)
            .and_then(|f| f.sync_all())
            .ctx(&meta_path, "fsync")?;
        let jdir = t.join(JOURNAL_DIR);
        std::fs::create_dir(&jdir).ctx(&jdir, "creating journal directory")?;
        writer::create_segment(&jdir, &meta.ledger_id, 1, 1, 0, 0)?;
        let mut header = StateHeader {
            block_size,
            block_count: geometry.block_count(),
            ledger_id: meta.ledger_id,
            checkpoint_lsn: 0,
            checkpoint_pos: (1, segment::HEADER_LEN as u64),
            last_session: 0,
            session_open: false,
            clean: false,
            running: None,
        };
        let state = StateTable::create(&t.join(STATE_FILE), &header)?;
        if let Some(src) = baseline {
            let mut base = Baseline::create(&t.join(BASELINE_FILE), geometry.block_count())?;
            let bs = block_size as usize;
            crate::scan::parallel(
                src.device,
                geometry,
                src.jobs,
                src.progress,
                || (),
                |_, first, data| {
                    for (i, blk) in data.chunks_exact(bs).enumerate() {
                        let b = first + i as u64;
                        let crc = block::checksum(blk);
                        base.set(b, crc);
                        state.set(b, BlockState::Tracked { generation: 0, crc });
                    }
                },
            )?;
            let w = JournalWriter::resume(
                &jdir,
                meta.ledger_id,
                writer::Resume {
                    segment: 1,
                    offset: segment::HEADER_LEN as u64,
                    content_crc: segment_header_crc(&jdir, 1)?,
                    next_lsn: 1,
                },
                0,
                segment::DEFAULT_SEGMENT_BYTES,
            )?;
            let now = clock::now();
            let (lsn, _) = w.append(
                &[Record::Baseline {
                    blocks: geometry.block_count(),
                }],
                now,
            )?;
            w.sync_all()?;
            base.finish(block_size, &meta.ledger_id, now, lsn)?;
            header.checkpoint_lsn = lsn;
            header.checkpoint_pos = w.position();
        }
        state.seal_dirty();
        state.flush()?;
        header.clean = true;
        state.write_header(&header)?;
        writer::sync_dir(t)?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            t,
            nix::fcntl::AT_FDCWD,
            dir,
            // rename(2) replaces only an empty directory, so files put there meanwhile stay.
            if replace_empty {
                nix::fcntl::RenameFlags::empty()
            } else {
                nix::fcntl::RenameFlags::RENAME_NOREPLACE
            },
        )
        .map_err(|e| Error::io(dir, "moving the new ledger into place", e.into()))?;
        // The directory now lives under its final name; nothing is left for TempDir to delete.
        let _ = tmp.keep();
        writer::sync_dir(&parent)?;
        Ok(())
    }
}

/// A fresh ledger id from the kernel's random pool (getrandom(2), blocking until the pool is
/// seeded, so an id drawn early at boot is still unpredictable).
fn random_id() -> Result<[u8; 16]> {
    use rustix::rand::{getrandom, GetRandomFlags};
    let mut id = [0u8; 16];
    let mut filled = 0;
    // A signal can cut the call short or interrupt it; 16 bytes are otherwise drawn at once.
    while filled < id.len() {
        match getrandom(&mut id[filled..], GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::io(
                    "getrandom(2)",
                    "drawing a random ledger id",
                    e.into(),
                ))
            }
        }
    }
    Ok(id)
}

/// Reads the header of a freshly created segment back to seed the running content checksum.
fn segment_header_crc(jdir: &Path, number: u64) -> Result<u32> {
    let p = segment::path(jdir, number);
    let b = std::fs::read(&p).ctx(&p, "reading segment header")?;
    Ok(crc32fast::hash(&b[..segment::HEADER_LEN.min(b.len())]))
}
