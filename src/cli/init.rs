//! `lostwrite init DEVICE [--block-size BYTES] [--baseline [--cached]]`. Claims the device
//! while it works (a device being served cannot be given a second ledger); the baseline is
//! read from the media with O_DIRECT unless `--cached`.

use super::Target;
use lostwrite::block::{validate_block_size, DEFAULT_BLOCK_SIZE};
use lostwrite::ledger::{BaselineSource, Ledger};
use std::time::Instant;

/// Flags of `init`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Block size in bytes: a power of two from 512 to 1048576.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BLOCK_SIZE as u64)]
    block_size: u64,
    /// Scan the device now and record every block as generation 0 (otherwise blocks are
    /// untracked until written through `serve`).
    #[arg(long)]
    baseline: bool,
    /// Scan threads [default: all cores].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Read the baseline through the host's page cache (faster when it is hot; by default the
    /// media is read with O_DIRECT).
    #[arg(long, requires = "baseline")]
    cached: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let bs = validate_block_size(a.block_size)?;
    let dir = a.target.ledger_dir()?;
    let dev = lostwrite::device::open(&a.target.device, false)?;
    // A ledger made while another process writes the device would be wrong from the start.
    dev.claim()?;
    use lostwrite::device::BlockDevice;
    let cached = lostwrite::device::CachedReads(&dev);
    let reader: &dyn BlockDevice = if a.cached { &cached } else { &dev };
    let size = dev.size();
    let blocks = size.div_ceil(bs as u64);
    let started = Instant::now();
    let pb;
    let src = if a.baseline {
        pb = lostwrite::scan::progress_bar(size, "baseline");
        Some(BaselineSource {
            device: reader,
            jobs: a.jobs.unwrap_or_else(lostwrite::scan::default_jobs).max(1),
            progress: Some(&pb),
        })
    } else {
        None
    };
    Ledger::create(&dir, dev.identity(), size, bs, src)?;
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "created ledger {} for {} ({blocks} blocks of {bs} bytes)",
        dir.display(),
        dev.identity().path
    );
    if a.baseline {
        outln!(
            "baseline: {blocks} blocks recorded as generation 0 in {secs:.2} s ({:.0} MiB/s)",
            size as f64 / (1 << 20) as f64 / secs.max(1e-9)
        );
        let r = reader.media_read();
        outln!(
            "{}",
            lostwrite::verify::report::read_line(r.mode, r.note.as_deref())
        );
    } else {
        outln!(
            "no baseline: the {blocks} blocks are untracked until written through `lostwrite serve`; `lostwrite init --baseline` tracks them all from the start"
        );
    }
    Ok(0)
}
