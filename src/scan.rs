//! Reading a whole device in parallel: workers claim fixed-size chunks in order, read them from
//! the media ([`BlockDevice::read_media`]: O_DIRECT where the device allows it) into their own
//! aligned buffer, and hand whole blocks to a visitor that folds them into per-worker state
//! (ripgrep's habit: clone per-thread state, merge at the end). Used by the baseline scan and
//! by `verify`; wrap the device in [`crate::device::CachedReads`] to read the page cache.

use crate::block::Geometry;
use crate::device::{AlignedBuf, BlockDevice, ReadMode};
use crate::error::{Error, Result};
use indicatif::ProgressBar;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes read per request (rounded to whole blocks).
pub const CHUNK_BYTES: u64 = 1 << 20;

/// Number of worker threads to use when the user did not say: all cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Calls `visit(state, first_block, data)` for every chunk of the device, `data` holding whole
/// blocks (a partial last block is padded with zeroes), from `jobs` threads. Returns each
/// worker's state.
pub fn parallel<S, M, V>(
    dev: &dyn BlockDevice,
    geo: Geometry,
    jobs: usize,
    progress: Option<&ProgressBar>,
    make: M,
    visit: V,
) -> Result<Vec<S>>
where
    S: Send,
    M: Fn() -> S + Sync,
    V: Fn(&mut S, u64, &[u8]) + Sync,
{
    let bs = geo.block_size as u64;
    let chunk = (CHUNK_BYTES / bs).max(1) * bs;
    let chunks = geo.device_size.div_ceil(chunk);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let jobs = jobs.clamp(1, chunks.max(1) as usize);
    // Only a cached read leaves pages behind worth dropping; after a direct read, dropping
    // would evict what other processes cached.
    let cached = dev.media_read().mode == ReadMode::Cached;
    let states = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut state = make();
                    // Chunks start block-aligned (a multiple of 4096 bytes), so a whole chunk
                    // is read with O_DIRECT straight into this buffer; only a last chunk of an
                    // odd length is bounced.
                    let mut aligned = AlignedBuf::new(chunk as usize);
                    let buf = aligned.as_mut_slice();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunks {
                            break;
                        }
                        let offset = i * chunk;
                        let len = (geo.device_size - offset).min(chunk) as usize;
                        if let Err(e) = dev.read_media(&mut buf[..len], offset) {
                            stop.store(true, Ordering::Relaxed);
                            let mut slot = error.lock().unwrap_or_else(|p| p.into_inner());
                            slot.get_or_insert(Error::io(
                                dev.name(),
                                format!(
                                    "reading {len} bytes at offset {offset} (block {})",
                                    offset / bs
                                ),
                                e,
                            ));
                            break;
                        }
                        let whole = (len as u64).div_ceil(bs) as usize * bs as usize;
                        buf[len..whole].fill(0);
                        visit(&mut state, offset / bs, &buf[..whole]);
                        if cached {
                            dev.done_with(offset, len as u64);
                        }
                        if let Some(p) = progress {
                            p.inc(len as u64);
                        }
                    }
                    state
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan worker panicked"))
            .collect::<Vec<S>>()
    });
    match error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(states),
    }
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (piped, in tests, in CI).
pub fn progress_bar(total_bytes: u64, what: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total_bytes);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
