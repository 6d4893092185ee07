//! Opening one export for serving: its device (claimed), its ledger (created without a baseline
//! when there is none, with a warning saying what that means), the ledger's write session, and
//! the [`Export`] around them. Everything here may fail for reasons of one disk alone, which is
//! why the host calls it once per export and decides what a failure means.

use super::config::{ExportSpec, JournalSync};
use crate::block::{validate_block_size, DEFAULT_BLOCK_SIZE};
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::ledger::kept;
use crate::ledger::state::BlockState;
use crate::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use crate::service::{Export, ExportOptions};

/// Opens one export's device and ledger and begins its session.
pub(super) fn open_export(spec: &ExportSpec) -> Result<Export> {
    let bs = validate_block_size(spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE as u64))?;
    let dev = crate::device::open_with(&spec.device, !spec.read_only, spec.cache)
        .map_err(|e| read_only_hint(spec, e))?;
    if spec.cache == crate::device::CacheMode::None {
        tracing::info!(
            "{}: --cache none: read and written with O_DIRECT, past the host's page cache",
            spec.device
        );
    }
    // Read-only, it still judges every read against its ledger: a writer beside it would make
    // every block it writes look stale. A shared claim keeps writers out, not other readers.
    if spec.read_only && !spec.no_record {
        dev.claim()?;
    }
    let ledger = if spec.no_record {
        tracing::warn!("--no-record: writes are NOT recorded; nothing served now can be verified");
        None
    } else {
        let dir = spec.ledger_dir()?;
        if !dir.exists() {
            Ledger::create(&dir, dev.identity(), dev.size(), bs, None)?;
            let blocks = dev.size().div_ceil(bs as u64);
            tracing::warn!(
                "created ledger {} without a baseline: the device's {blocks} blocks are untracked until written through this service. To track every block from the start, stop now, remove {} and run `lostwrite init --baseline {}`",
                dir.display(),
                dir.display(),
                spec.device
            );
        }
        let mut opts = OpenOptions::new(Access::Write);
        opts.device_moved = spec.device_moved;
        opts.segment_bytes = spec.retention().segment_bytes();
        let l = LedgerWriter::open(&dir, Some((dev.identity(), dev.size())), opts)?;
        if spec.block_size.is_some() && l.geometry().block_size != bs {
            return Err(Error::Usage(format!(
                "--block-size {bs}: the ledger {} uses {}-byte blocks, and a ledger's block size cannot change; drop --block-size, or make a new ledger elsewhere with `lostwrite init --block-size {bs}`",
                dir.display(),
                l.geometry().block_size
            )));
        }
        for w in &l.recovery().warnings {
            tracing::warn!("{w}");
        }
        let mut l = l.begin_session(spec.journal_sync == JournalSync::Strict)?;
        if let Some(keep) = spec.keep_data {
            let data = kept::place(&dir, spec.keep_data_dir.as_deref())?;
            for w in l.keep_data(&data, keep)? {
                tracing::warn!("{w}");
            }
            tracing::info!(
                "{}: keeping written data in {} ({})",
                spec.device,
                std::fs::canonicalize(&data).unwrap_or(data).display(),
                super::config::show_keep(keep)
            );
        }
        let session = l.id();
        let geo = l.geometry();
        let untracked = (0..geo.block_count())
            .filter(|&b| !matches!(l.state(b), BlockState::Tracked { .. }))
            .count();
        tracing::info!(
            "ledger {}: session {session}, {} blocks of {} bytes, {untracked} not tracked yet{}",
            dir.display(),
            geo.block_count(),
            geo.block_size,
            if l.recovery().previous_clean {
                ""
            } else {
                "; the previous session did not end cleanly"
            }
        );
        Some(l)
    };
    Ok(Export::new(
        Box::new(dev),
        ledger,
        ExportOptions {
            name: spec.name.clone(),
            read_only: spec.read_only,
            on_mismatch: spec.on_mismatch,
        },
    ))
}

/// A device that cannot be opened for writing but can be for reading (immutable, on a read-only
/// file system, or without write permission) may be what the operator meant to serve read-only.
fn read_only_hint(spec: &ExportSpec, e: Error) -> Error {
    use nix::libc::{EACCES, EPERM, EROFS};
    let denied = matches!(e.raw_os_error(), Some(EPERM | EACCES | EROFS));
    if spec.read_only || !denied || std::fs::File::open(&spec.device).is_err() {
        return e;
    }
    Error::Usage(format!(
        "{e}; it can be opened for reading only (immutable, a read-only file system, or no write permission): serve it with --read-only (read_only = true in a config), or make it writable (chattr -i, remount, chmod)"
    ))
}
