//! `lostwrite report DEVICE [--since T] [--until T] [--files] [--packages] [--plot FILE.svg]
//! [--json]`:
//! forensics after an incident. Exit status as `verify`'s: 0 when no finding fails, 1 when
//! some do (whatever `--since`/`--until` show: a narrower view does not make the device
//! clean), 2 on trouble, including a damaged ledger.

use super::Target;
use lostwrite::device::BlockDevice;
use lostwrite::findings::Finding;
use lostwrite::forensics::{self, plot};
use lostwrite::ledger::{Access, Ledger, OpenOptions};
use lostwrite::verify::{self, report::Outcome};
use std::path::PathBuf;

/// Flags of `report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Use the findings of an earlier `verify --json` (saved to FILE) instead of scanning now.
    #[arg(long, value_name = "FILE")]
    findings: Option<PathBuf>,
    /// Only lost writes at or after this time (RFC 3339, e.g. 2026-11-25T14:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only lost writes at or before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Name the files, directories and filesystem structures that own the damaged blocks
    /// (ext2/3/4, whole disk or MBR/GPT partitions; needs debugfs from e2fsprogs).
    #[arg(long)]
    files: bool,
    /// Also name the installed packages (dpkg) owning the damaged files, as a list to
    /// reinstall; implies --files.
    #[arg(long)]
    packages: bool,
    /// Write a timeline picture (SVG) here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Accept a device whose identity differs from the ledger's (a copy of the disk).
    #[arg(long)]
    device_moved: bool,
    /// Scan threads [default: all cores].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Read the device through the host's page cache (faster when it is hot, blind to losses
    /// below it; by default the media is read with O_DIRECT).
    #[arg(long)]
    cached: bool,
    /// Affected files shown in the human report.
    #[arg(long, value_name = "N", default_value_t = 40)]
    max_rows: usize,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let parse = |t: &Option<String>| t.as_deref().map(lostwrite::clock::parse).transpose();
    let opts = forensics::Options {
        since: parse(&a.since)?,
        until: parse(&a.until)?,
        files: a.files || a.packages,
        packages: a.packages,
    };
    let dir = a.target.ledger_dir()?;
    let dev = lostwrite::device::open(&a.target.device, false)?;
    let mut oo = OpenOptions::new(Access::Read);
    oo.device_moved = a.device_moved;
    let ledger = Ledger::open(&dir, Some((dev.identity(), dev.size())), oo)?;
    let cached = lostwrite::device::CachedReads(&dev);
    let reader: &dyn BlockDevice = if a.cached { &cached } else { &dev };
    let mut read = None;
    let mut damaged = false;
    let mut untracked = false;
    let findings: Vec<Finding> = match &a.findings {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not the JSON of `lostwrite verify --json`: {e}",
                    path.display()
                )
            })?;
            serde_json::from_value(v["findings"].clone()).map_err(|e| {
                anyhow::anyhow!(
                    "{}: its \"findings\" are not verify's findings: {e}",
                    path.display()
                )
            })?
        }
        None => {
            let r = verify::run(
                &ledger,
                reader,
                &verify::Options {
                    jobs: a.jobs.unwrap_or_else(lostwrite::scan::default_jobs).max(1),
                    strict: false,
                    progress: !a.json,
                },
            )?;
            damaged = r.result == Outcome::LedgerDamaged;
            untracked = r.result == Outcome::NothingTracked;
            read = Some((r.read, r.read_note));
            r.findings
        }
    };
    let failing = findings.iter().any(|f| f.kind.fails(false));
    let mut rep = forensics::build(&ledger, &dev, &a.target.device, findings, &opts)?;
    if let Some((mode, note)) = read {
        rep.read = Some(mode);
        rep.read_note = note;
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, plot::render(&rep, dev.size()))
            .map_err(|e| anyhow::anyhow!("--plot {}: {e}", p.display()))?;
        rep.plot = Some(p.display().to_string());
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        out!("{}", rep.human(a.max_rows));
    }
    // Also with saved findings, which ran no verification: the ledger itself is trouble.
    if let Some(why) = ledger.state_damage() {
        damaged = true;
        tracing::error!("{why}");
    }
    if untracked {
        tracing::error!(
            "nothing was verified: the ledger tracks no block (made without --baseline, and nothing written through serve since)"
        );
    }
    Ok(if damaged || untracked {
        2
    } else if failing {
        1
    } else {
        0
    })
}
