//! The forensic report and how it is built: the findings in view (`--since` / `--until`), their
//! counts, the incident window and histogram ([`window`](super::window)), with `--files` their
//! owners ([`owners`](super::owners)), and the service sessions for the timeline picture. Its
//! JSON is the serde form of [`ForensicReport`]; the human form is in [`render`](super::render).

use super::affected::summarize;
use super::owners::map_findings;
use super::window::{histogram, in_view, incident_window, lost_points};
use super::{Affected, Bin, IncidentWindow, LostPoint, MappedFinding, RegionInfo, RegionPackages};
use crate::clock::{rfc3339, Micros};
use crate::device::BlockDevice;
use crate::error::Result;
use crate::findings::Finding;
use crate::ledger::history::{self, SessionInfo};
use crate::ledger::Ledger;
use crate::verify::report::Summary;
use serde::{Serialize, Serializer};
use std::collections::HashSet;

/// What to include.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only lost writes at or after this time.
    pub since: Option<Micros>,
    /// Only lost writes at or before this time.
    pub until: Option<Micros>,
    /// Map findings to files.
    pub files: bool,
    /// Also name the packages owning the damaged files (implies `files`).
    pub packages: bool,
    /// The other disks of a report over several: where physical volumes of this disk's volume
    /// groups may be (a disk's own path among them is left out).
    pub other_disks: Vec<String>,
}

/// The forensic report.
#[derive(Clone, Debug, Serialize)]
pub struct ForensicReport {
    /// Device.
    pub device: String,
    /// How the device was read for the findings (absent when they came from `--findings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<crate::device::ReadMode>,
    /// Why the device was not read with O_DIRECT, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_note: Option<String>,
    /// Ledger directory.
    pub ledger: String,
    /// Ledger block size.
    pub block_size: u32,
    /// Counts of the findings in view.
    pub summary: Summary,
    /// The window of lost durable writes, if any were lost.
    pub incident_window: Option<IncidentWindow>,
    /// Lost durable writes over time.
    pub histogram: Vec<Bin>,
    /// Findings in view, with their owners.
    pub findings: Vec<MappedFinding>,
    /// Affected files and structures (with `--files`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub affected: Vec<Affected>,
    /// Partition scheme and regions (with `--files`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<(String, Vec<RegionInfo>)>,
    /// Per filesystem with damaged files, the packages owning them (with `--packages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<RegionPackages>>,
    /// Notes (a damaged partition table, a filesystem the mapper does not know).
    pub notes: Vec<String>,
    /// `--since` / `--until` in effect (RFC 3339 in JSON).
    #[serde(serialize_with = "view_text", skip_serializing_if = "Option::is_none")]
    pub view: Option<(Option<Micros>, Option<Micros>)>,
    /// Findings that `--since` / `--until` left out (none without a view).
    pub outside_view: usize,
    /// The SVG written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<String>,
    /// Sessions (for the plot).
    #[serde(skip)]
    pub sessions: Vec<SessionInfo>,
}

/// `view` as the RFC 3339 texts it is printed as.
fn view_text<S: Serializer>(
    v: &Option<(Option<Micros>, Option<Micros>)>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    v.map(|(a, z)| (a.map(rfc3339), z.map(rfc3339)))
        .serialize(s)
}

/// Builds the report from findings (of `verify::run`, or read back from `verify --json`).
pub fn build(
    ledger: &Ledger,
    dev: &dyn BlockDevice,
    device_path: &str,
    findings: Vec<Finding>,
    opts: &Options,
) -> Result<ForensicReport> {
    let viewed = opts.since.is_some() || opts.until.is_some();
    let all = findings.len();
    let findings: Vec<Finding> = findings
        .into_iter()
        .filter(|f| !viewed || f.lost.iter().any(|l| in_view(l.time, opts)))
        .collect();
    let outside_view = all - findings.len();
    let mut summary = Summary::default();
    for f in &findings {
        summary.count(f.kind);
    }
    let mut mapped: Vec<MappedFinding> = findings
        .into_iter()
        .map(|finding| MappedFinding {
            finding,
            files: Vec::new(),
        })
        .collect();
    let points: Vec<LostPoint> = lost_points(&mapped)
        .into_iter()
        .filter(|p| in_view(p.0, opts))
        .collect();
    let durable: Vec<&LostPoint> = points.iter().filter(|p| p.1).collect();
    let window = incident_window(&durable, &mapped);
    let histogram = histogram(&durable, opts, 12);
    let mut notes = Vec::new();
    let mut affected = Vec::new();
    let mut partitions = None;
    let mut packages = None;
    if opts.files || opts.packages {
        let (scheme, regions, p) = map_findings(
            ledger,
            dev,
            device_path,
            &opts.other_disks,
            &mut mapped,
            opts.packages,
            &mut notes,
        )?;
        affected = summarize(&mapped);
        partitions = Some((scheme, regions));
        packages = p;
    }
    let hist = history::collect(ledger, &HashSet::new(), &HashSet::new())?;
    Ok(ForensicReport {
        device: device_path.to_string(),
        read: None,
        read_note: None,
        ledger: ledger.dir().display().to_string(),
        block_size: ledger.geometry().block_size,
        summary,
        incident_window: window,
        histogram,
        findings: mapped,
        affected,
        partitions,
        packages,
        notes,
        view: viewed.then_some((opts.since, opts.until)),
        outside_view,
        plot: None,
        sessions: hist.sessions.into_values().collect(),
    })
}
