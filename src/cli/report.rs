//! `lostwrite report DEVICE... [--findings FILE]... [--since T] [--until T] [--files]
//! [--packages] [--plot FILE.svg] [--json]`: forensics after an incident, on one disk or on many. One disk
//! (one DEVICE, or one saved findings file) gives its report; several give the fleet report
//! ([`forensics::fleet`]): one incident window across them, the disks ranked, each with its
//! files. Exit status as `verify`'s: 0 when no disk has a failing finding, 1 when one does
//! (whatever `--since`/`--until` show: a narrower view does not make a device clean), 2 on
//! trouble — a damaged ledger, nothing tracked, or a disk that could not be examined (the
//! others are still reported).

use super::resolve_ledger;
use lostwrite::device::BlockDevice;
use lostwrite::findings::Finding;
use lostwrite::forensics::fleet::{self, FleetDisk};
use lostwrite::forensics::{self, plot, ForensicReport};
use lostwrite::ledger::{Access, Ledger, OpenOptions};
use lostwrite::verify::{self, report::Outcome};
use std::path::{Path, PathBuf};

/// Flags of `report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The devices: regular files, block devices, or NBD exports (nbd+unix:///EXPORT?socket=PATH
    /// or nbd://HOST[:PORT]/EXPORT). Several give one report over all of them; each uses its
    /// default ledger, DEVICE.ledger beside it.
    #[arg(value_name = "DEVICE")]
    devices: Vec<String>,
    /// The ledger directory [default: DEVICE.ledger beside the device]; with one disk only.
    #[arg(long, value_name = "DIR")]
    ledger: Option<PathBuf>,
    /// Use the findings of an earlier `verify --json` (saved to FILE) instead of scanning now.
    /// Repeat for several disks: each file names its device and ledger (a DEVICE also given is
    /// not scanned again). With one DEVICE, one FILE holds its findings whatever device it names.
    #[arg(long, value_name = "FILE")]
    findings: Vec<PathBuf>,
    /// Only lost writes at or after this time (RFC 3339, e.g. 2026-11-25T14:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only lost writes at or before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Name the files, directories and filesystem structures that own the damaged blocks
    /// (ext2/3/4 through debugfs, XFS through xfs_db; whole disk, MBR/GPT partitions or LVM2
    /// logical volumes).
    #[arg(long)]
    files: bool,
    /// Also name the installed packages (dpkg, rpm) owning the damaged files, as a list to
    /// reinstall; implies --files.
    #[arg(long)]
    packages: bool,
    /// Write a timeline picture (SVG) here; with several disks, one lane per disk.
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
    /// Affected files shown in the human report [default: 40; with several disks, 10 per disk].
    #[arg(long, value_name = "N")]
    max_rows: Option<usize>,
}

/// A `verify --json` document read back: its findings and the disk it names.
struct Saved {
    path: PathBuf,
    device: Option<String>,
    ledger: Option<PathBuf>,
    findings: Vec<Finding>,
}

/// One disk to examine.
struct Disk {
    device: String,
    /// `--ledger`, or the one a saved findings file names; else beside the device.
    ledger: Option<PathBuf>,
    /// Saved findings instead of a scan.
    saved: Option<Saved>,
}

/// A disk examined: its report, its size (for the picture), whether any finding fails (in
/// view or not), and why its result settles nothing, if it does not.
struct Examined {
    rep: ForensicReport,
    size: u64,
    failing: bool,
    trouble: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let parse = |t: &Option<String>| t.as_deref().map(lostwrite::clock::parse).transpose();
    let opts = forensics::Options {
        since: parse(&a.since)?,
        until: parse(&a.until)?,
        files: a.files || a.packages,
        packages: a.packages,
        other_disks: Vec::new(),
    };
    match (a.devices.len(), a.findings.len()) {
        (0, 0) => anyhow::bail!("give a DEVICE, or a saved `verify --json` with --findings FILE"),
        (1, 0) | (1, 1) | (0, 1) => one_disk(&a, &opts),
        _ => many_disks(&a, &opts),
    }
}

/// Reads back a saved `verify --json`.
fn read_saved(path: &Path) -> anyhow::Result<Saved> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not the JSON of `lostwrite verify --json`: {e}",
            path.display()
        )
    })?;
    let findings = serde_json::from_value(v["findings"].clone()).map_err(|e| {
        anyhow::anyhow!(
            "{}: its \"findings\" are not verify's findings: {e}",
            path.display()
        )
    })?;
    Ok(Saved {
        path: path.to_path_buf(),
        device: v["device"].as_str().map(str::to_string),
        ledger: v["ledger"].as_str().map(PathBuf::from),
        findings,
    })
}

/// Today's report of one disk: one DEVICE (with its saved findings, if given), or one saved
/// findings file and the disk it names.
fn one_disk(a: &Args, opts: &forensics::Options) -> anyhow::Result<i32> {
    let saved = a.findings.first().map(|p| read_saved(p)).transpose()?;
    let disk = match a.devices.first() {
        Some(d) => Disk {
            device: d.clone(),
            ledger: a.ledger.clone(),
            saved,
        },
        None => {
            let s = saved.expect("one findings file");
            let Some(device) = s.device.clone() else {
                anyhow::bail!(
                    "{}: names no device; give the DEVICE too (report --findings FILE DEVICE)",
                    s.path.display()
                );
            };
            Disk {
                device,
                ledger: a.ledger.clone().or_else(|| s.ledger.clone()),
                saved: Some(s),
            }
        }
    };
    let mut e = examine(a, disk, opts)?;
    if let Some(p) = &a.plot {
        std::fs::write(p, plot::render(&e.rep, e.size))
            .map_err(|err| anyhow::anyhow!("--plot {}: {err}", p.display()))?;
        e.rep.plot = Some(p.display().to_string());
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&e.rep)?);
    } else {
        out!("{}", e.rep.human(a.max_rows.unwrap_or(40)));
    }
    if let Some(why) = &e.trouble {
        tracing::error!("{why}");
    }
    Ok(if e.trouble.is_some() {
        2
    } else if e.failing {
        1
    } else {
        0
    })
}

/// Whether `a` and `b` name the same device: the same text, or paths to the same file.
fn same_device(a: &str, b: &str) -> bool {
    a == b
        || match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// The fleet report over every DEVICE and saved findings file.
fn many_disks(a: &Args, opts: &forensics::Options) -> anyhow::Result<i32> {
    if a.ledger.is_some() {
        anyhow::bail!(
            "--ledger names one disk's ledger: with several disks each DEVICE uses DEVICE.ledger beside it and each --findings FILE the ledger it names"
        );
    }
    // Devices in the order given, then the disks only saved findings name.
    let mut disks: Vec<Result<Disk, (String, String)>> = a
        .devices
        .iter()
        .map(|d| {
            Ok(Disk {
                device: d.clone(),
                ledger: None,
                saved: None,
            })
        })
        .collect();
    for path in &a.findings {
        let s = match read_saved(path) {
            Ok(s) => s,
            Err(e) => {
                disks.push(Err((path.display().to_string(), crate::message(&e))));
                continue;
            }
        };
        let Some(device) = s.device.clone() else {
            disks.push(Err((
                path.display().to_string(),
                "names no device (not the JSON of `lostwrite verify --json`?)".into(),
            )));
            continue;
        };
        let ledger = s.ledger.clone();
        match disks.iter_mut().find_map(|d| match d {
            Ok(d) if d.saved.is_none() && same_device(&d.device, &device) => Some(d),
            _ => None,
        }) {
            Some(d) => {
                d.ledger = ledger;
                d.saved = Some(s);
            }
            None => disks.push(Ok(Disk {
                device,
                ledger,
                saved: Some(s),
            })),
        }
    }
    // Each disk's volume groups may have physical volumes on the others.
    let mut opts = opts.clone();
    opts.other_disks = disks
        .iter()
        .filter_map(|d| Some(d.as_ref().ok()?.device.clone()))
        .collect();
    let opts = &opts;
    let mut failing = false;
    let mut troubles = Vec::new();
    let mut fleet_disks = Vec::new();
    for d in disks {
        match d.and_then(|d| {
            let device = d.device.clone();
            examine(a, d, opts).map_err(|e| (device, crate::message(&e)))
        }) {
            Ok(e) => {
                failing |= e.failing;
                if let Some(why) = &e.trouble {
                    troubles.push(format!("{}: {why}", e.rep.device));
                }
                fleet_disks.push(FleetDisk::examined(e.rep, e.trouble));
            }
            Err((device, why)) => {
                troubles.push(format!("{device}: not examined: {why}"));
                fleet_disks.push(FleetDisk::not_read(&device, why));
            }
        }
    }
    let mut rep = fleet::build(fleet_disks, opts);
    if let Some(p) = &a.plot {
        std::fs::write(p, plot::render_fleet(&rep))
            .map_err(|err| anyhow::anyhow!("--plot {}: {err}", p.display()))?;
        rep.plot = Some(p.display().to_string());
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        out!(
            "{}",
            rep.human(a.max_rows.unwrap_or(fleet::DEFAULT_ROWS_PER_DISK))
        );
    }
    for t in &troubles {
        tracing::error!("{t}");
    }
    Ok(if !troubles.is_empty() {
        2
    } else if failing {
        1
    } else {
        0
    })
}

/// Builds one disk's report: its findings scanned now or read back, mapped to files with
/// `--files`.
fn examine(a: &Args, disk: Disk, opts: &forensics::Options) -> anyhow::Result<Examined> {
    let dir = resolve_ledger(Some(&disk.device), disk.ledger.as_ref())?;
    let dev = lostwrite::device::open(&disk.device, false)?;
    let mut oo = OpenOptions::new(Access::Read);
    oo.device_moved = a.device_moved;
    let ledger = Ledger::open(&dir, Some((dev.identity(), dev.size())), oo)?;
    let cached = lostwrite::device::CachedReads(&dev);
    let reader: &dyn BlockDevice = if a.cached { &cached } else { &dev };
    let mut read = None;
    let mut damaged = false;
    let mut untracked = false;
    let findings: Vec<Finding> = match disk.saved {
        Some(s) => s.findings,
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
    let mut rep = forensics::build(&ledger, &dev, &disk.device, findings, opts)?;
    if let Some((mode, note)) = read {
        rep.read = Some(mode);
        rep.read_note = note;
    }
    // Also with saved findings, which ran no verification: the ledger itself is trouble.
    let trouble = if let Some(why) = ledger.state_damage() {
        Some(why)
    } else if damaged {
        Some(format!("the ledger {} is damaged", dir.display()))
    } else if untracked {
        Some("nothing was verified: the ledger tracks no block (made without --baseline, and nothing written through serve since)".into())
    } else {
        None
    };
    Ok(Examined {
        rep,
        size: dev.size(),
        failing,
        trouble,
    })
}
