//! `lostwrite verify DEVICE [--json] [--jobs N] [--strict] [--cached]`: exit 0 when no failing
//! finding, 1 with failing findings, 2 on trouble (including a damaged ledger). The device is
//! read with O_DIRECT unless `--cached`; the output says how it was read.

use super::Target;
use lostwrite::device::BlockDevice;
use lostwrite::findings::log::clear_verified;
use lostwrite::ledger::{Access, Ledger, OpenOptions};
use lostwrite::verify::{self, report::Outcome};

/// Flags of `verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Print one JSON object (the contract's shape) instead of the human report.
    #[arg(long)]
    json: bool,
    /// Scan threads [default: all cores].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Fail on `unflushed` and `uncertain` too.
    #[arg(long)]
    strict: bool,
    /// The device's identity differs from the ledger's but it holds the same disk (moved,
    /// copied or restored).
    #[arg(long)]
    device_moved: bool,
    /// Read through the host's page cache (faster when it is hot, but newer cached data can
    /// hide a loss on the media below; by default the media is read with O_DIRECT).
    #[arg(long)]
    cached: bool,
    /// Findings shown in the human table.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_rows: usize,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.jobs == Some(0) {
        anyhow::bail!("--jobs 0: give at least 1 scan thread");
    }
    let dir = a.target.ledger_dir()?;
    let dev = lostwrite::device::open(&a.target.device, false)?;
    let mut opts = OpenOptions::new(Access::Read);
    opts.device_moved = a.device_moved;
    let ledger = Ledger::open(&dir, Some((dev.identity(), dev.size())), opts)?;
    let cached = lostwrite::device::CachedReads(&dev);
    let reader: &dyn BlockDevice = if a.cached { &cached } else { &dev };
    let report = verify::run(
        &ledger,
        reader,
        &verify::Options {
            jobs: a.jobs.unwrap_or_else(lostwrite::scan::default_jobs),
            strict: a.strict,
            progress: !a.json,
        },
    )?;
    // A copy passing says nothing about the device the findings were made on; a cached read
    // cannot clear what the media lost (the scrubber read past the cache); a damaged ledger
    // judged against a rebuilt view settles nothing.
    let clear = if a.device_moved {
        Ok(0)
    } else if a.cached || report.result == Outcome::LedgerDamaged {
        tracing::info!(
            "open findings and unclassified stale reads are kept: only a verification of the media with a sound ledger settles them"
        );
        Ok(0)
    } else {
        clear_verified(&dir, &ledger, &report.findings)
    };
    match clear {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} open findings cleared: their blocks verify now"),
        // The verdict stands without the bookkeeping (a read-only copy of a ledger, say).
        Err(e) => tracing::warn!("open findings not updated: {e}"),
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.human(a.max_rows));
    }
    Ok(match report.result {
        // Nothing was verified: exit 0 would certify a device nobody checked.
        Outcome::LedgerDamaged | Outcome::NothingTracked => 2,
        Outcome::Findings => 1,
        Outcome::Clean => 0,
    })
}
