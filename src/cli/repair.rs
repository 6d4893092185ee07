//! `lostwrite repair DEVICE [--from IMAGE|URI]... [--apply]`: the plan (which source gives each
//! failing block back, what cannot come back and why), and with `--apply` the writes, each
//! recorded in the ledger, then a verification of the result. Exit status as `verify`: 0 when
//! nothing failing remains, 1 when something does (always, without `--apply`, while blocks
//! fail), 2 on trouble — a device in use among it.

use super::Target;
use lostwrite::device::{BlockDevice, CacheMode, Device, FileDevice};
use lostwrite::findings::log::clear_verified;
use lostwrite::ledger::{Access, Ledger, LedgerWriter, OpenOptions};
use lostwrite::repair::{self, DeviceSource, KeptSource, Plan, Source};
use lostwrite::verify::{self, report::Outcome, report::Report};
use std::path::Path;

/// Flags of `repair`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// A copy of the device to take lost generations from: an image file, a block device or an
    /// NBD URI (a backup, a snapshot, a replica). Repeat to try several, in order; a block is
    /// taken only where its checksum equals the generation the ledger expects.
    #[arg(long = "from", value_name = "IMAGE|URI")]
    from: Vec<String>,
    /// Write the repairable blocks (the device must not be in use), record each in the ledger,
    /// then verify again. Without it nothing is written.
    #[arg(long)]
    apply: bool,
    /// Name the files whose byte ranges come back (as `report --files` maps blocks).
    #[arg(long)]
    files: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Do not use the contents `serve --keep-data` kept (asked first otherwise).
    #[arg(long)]
    no_kept_data: bool,
    /// Repair `unflushed` and `uncertain` blocks too (they fail only with --strict).
    #[arg(long)]
    strict: bool,
    /// Scan threads [default: all cores].
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// The device's identity differs from the ledger's but it holds the same disk.
    #[arg(long)]
    device_moved: bool,
    /// Rows shown in the human tables.
    #[arg(long, value_name = "N", default_value_t = 50)]
    max_rows: usize,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.jobs == Some(0) {
        anyhow::bail!("--jobs 0: give at least 1 scan thread");
    }
    let dir = a.target.ledger_dir()?;
    let sources = a
        .from
        .iter()
        .map(|s| DeviceSource::open(s))
        .collect::<Result<Vec<_>, _>>()?;
    // What serve kept is exactly what was written: asked before any other copy.
    let kept = match a.no_kept_data {
        true => None,
        false => KeptSource::open(&dir)?,
    };
    let refs: Vec<&dyn Source> = kept
        .iter()
        .map(|k| k as &dyn Source)
        .chain(sources.iter().map(|s| s as &dyn Source))
        .collect();
    let vopts = verify::Options {
        jobs: a.jobs.unwrap_or_else(lostwrite::scan::default_jobs),
        strict: a.strict,
        progress: !a.json,
    };
    let mut opts = OpenOptions::new(Access::Read);
    opts.device_moved = a.device_moved;
    if !a.apply {
        let dev = lostwrite::device::open(&a.target.device, false)?;
        let ledger = Ledger::open(&dir, Some((dev.identity(), dev.size())), opts)?;
        let report = verify::run(&ledger, &dev, &vopts)?;
        let mut plan = repair::build(&ledger, &report, &refs)?;
        if a.files {
            plan.map_files(&ledger, &dev, &a.target.device)?;
        }
        if a.json {
            let o = Output {
                plan: &plan,
                applied: false,
                written: None,
                write_mode: None,
                write_note: None,
                skipped: &[],
                verify: None,
            };
            outln!("{}", serde_json::to_string_pretty(&o)?);
        } else {
            out!("{}", plan.human(a.max_rows));
            if plan.repairable > 0 {
                outln!(
                    "nothing written: run again with --apply to write the {} repairable block{}",
                    plan.repairable,
                    if plan.repairable == 1 { "" } else { "s" }
                );
            }
        }
        return Ok(status(&report));
    }
    let (dev, direct_note) = open_for_writing(&a.target.device)?;
    let writer = LedgerWriter::open(&dir, Some((dev.identity(), dev.size())), opts)?;
    let files = a.files.then_some(a.target.device.as_str());
    let repair::Repaired {
        plan,
        applied,
        after,
    } = repair::repair_and_verify(&writer, &dev, files, &refs, &vopts)?;
    if applied.written > 0 && !a.device_moved {
        match clear_verified(&dir, &writer, &after.findings) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} open findings cleared: their blocks verify now"),
            Err(e) => tracing::warn!("open findings not updated: {e}"),
        }
    }
    if a.json {
        let o = Output {
            plan: &plan,
            applied: true,
            written: Some(applied.written),
            write_mode: Some(write_mode(&direct_note)),
            write_note: direct_note.as_deref(),
            skipped: &applied.skipped,
            verify: Some(&after),
        };
        outln!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        out!("{}", plan.human(a.max_rows));
        out!("{}", applied_text(&plan, &applied, &direct_note));
        outln!();
        outln!("verify after the repair:");
        out!("{}", after.human(a.max_rows));
    }
    Ok(status(&after))
}

/// `repair --json`: the plan's fields, then what `--apply` did and the verification after it.
#[derive(serde::Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    written: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_note: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    skipped: &'a [repair::Skipped],
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<&'a Report>,
}

/// The exit status `verify` would give for `report`.
fn status(report: &Report) -> i32 {
    match report.result {
        Outcome::LedgerDamaged | Outcome::NothingTracked => 2,
        Outcome::Findings => 1,
        Outcome::Clean => 0,
    }
}

fn write_mode(direct_note: &Option<String>) -> &'static str {
    match direct_note {
        None => "direct",
        Some(_) => "cached",
    }
}

fn applied_text(plan: &Plan, applied: &repair::Applied, direct_note: &Option<String>) -> String {
    let how = match direct_note {
        None => "with O_DIRECT".to_string(),
        Some(n) => format!("through the page cache ({n})"),
    };
    let mut s = format!(
        "applied: wrote {} of {} repairable block{} {how}, synced the device, and recorded each in the ledger as a repair\n",
        applied.written,
        plan.repairable,
        if plan.repairable == 1 { "" } else { "s" }
    );
    for k in &applied.skipped {
        s.push_str(&format!("  block {} not written: {}\n", k.block, k.reason));
    }
    s
}

/// Opens the device to write the repair: a file or block device with O_DIRECT where it reaches
/// the media (else through the page cache, with the reason), claimed exclusively; an NBD export
/// as it is (its server decides who writes it).
fn open_for_writing(spec: &str) -> anyhow::Result<(Device, Option<String>)> {
    if lostwrite::nbd::uri::is_uri(spec) {
        return Ok((lostwrite::device::open(spec, true)?, None));
    }
    let path = Path::new(spec);
    let (dev, note) = match FileDevice::open_with(path, true, CacheMode::None) {
        Ok(d) => (d, None),
        Err(lostwrite::Error::Usage(why)) => {
            tracing::info!("{why}");
            (
                FileDevice::open(path, true)?,
                Some("O_DIRECT cannot reach the media here".to_string()),
            )
        }
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = dev.claim() {
        let lostwrite::Error::Usage(_) = e else {
            return Err(e.into());
        };
        let who = lostwrite::device::holders(path);
        let who = if who.is_empty() {
            "another process".to_string()
        } else {
            who.join(", ")
        };
        anyhow::bail!(
            "{spec}: the device is in use by {who}: repair --apply writes a device only while nothing else does. If that is `lostwrite serve`, stop it (SIGTERM: it closes its session cleanly) and run the repair again; repairing through a running serve is not supported yet"
        );
    }
    Ok((Device::File(dev), note))
}
