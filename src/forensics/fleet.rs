//! The fleet report: the forensic reports of many disks hit by one incident, read as one. It owns
//! the sums across disks — one incident window from the first to the last lost durable write on
//! any disk, the histogram of lost writes on all of them — and the ranking of the disks, most hit
//! first; each disk keeps its own [`ForensicReport`]. A disk that could not be examined stays in
//! the list with the reason, so that the operator sees which disks were not checked. The human
//! form is [`FleetReport::human`]; the picture is [`plot::render_fleet`](super::plot).

use super::window::{histogram, in_view, lost_points};
use super::{Bin, ForensicReport, IncidentWindow, Options};
use crate::clock::{rfc3339, Micros};
use crate::verify::report::Summary;
use serde::Serialize;
use std::fmt::Write as _;

/// Most affected entries shown per disk in the human fleet report, unless told otherwise.
pub const DEFAULT_ROWS_PER_DISK: usize = 10;

/// What became of one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskStatus {
    /// Some finding in view fails (lost, misdirected, zeroed or corrupt blocks).
    Damaged,
    /// Examined: no finding in view fails.
    Clean,
    /// Could not be examined (device, ledger or findings file unreadable).
    NotRead,
}

/// One disk of the fleet.
#[derive(Clone, Debug, Serialize)]
pub struct FleetDisk {
    /// The device as given (or as a saved findings file names it).
    pub device: String,
    /// Damaged, clean or not read.
    pub status: DiskStatus,
    /// Place in the ranking, 1 for the most hit (absent for a disk not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Lost durable writes in view.
    pub lost_durable_writes: usize,
    /// Blocks with a failing finding in view.
    pub damaged_blocks: usize,
    /// Files and directories among the affected (only with `--files`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_hit: Option<usize>,
    /// Why the disk could not be examined, or why its result settles nothing (a damaged
    /// ledger, a ledger that tracks no block).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trouble: Option<String>,
    /// The disk's own report, as `report DEVICE --json` gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<ForensicReport>,
}

impl FleetDisk {
    /// A disk examined, with its report; `trouble` when its result settles nothing.
    pub fn examined(report: ForensicReport, trouble: Option<String>) -> FleetDisk {
        let damaged_blocks = report
            .findings
            .iter()
            .filter(|f| f.finding.kind.fails(false))
            .count();
        FleetDisk {
            device: report.device.clone(),
            status: if damaged_blocks > 0 {
                DiskStatus::Damaged
            } else {
                DiskStatus::Clean
            },
            rank: None,
            lost_durable_writes: report
                .incident_window
                .as_ref()
                .map_or(0, |w| w.lost_durable_writes),
            damaged_blocks,
            files_hit: report.partitions.is_some().then(|| {
                report
                    .affected
                    .iter()
                    .filter(|a| matches!(a.owner, "file" | "directory"))
                    .count()
            }),
            trouble,
            report: Some(report),
        }
    }

    /// A disk that could not be examined, and why.
    pub fn not_read(device: &str, why: String) -> FleetDisk {
        FleetDisk {
            device: device.to_string(),
            status: DiskStatus::NotRead,
            rank: None,
            lost_durable_writes: 0,
            damaged_blocks: 0,
            files_hit: None,
            trouble: Some(why),
            report: None,
        }
    }
}

/// The window across the fleet: the first and last lost durable write on any disk.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FleetWindow {
    /// The window as for one disk; `blocks` and `lost_durable_writes` summed over the disks,
    /// `newest_surviving` the newest contents before `start` found on any reverted block.
    #[serde(flatten)]
    pub window: IncidentWindow,
    /// Disks that lost durable writes.
    pub disks: usize,
}

/// The report over many disks.
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// Disks given.
    pub disks_total: usize,
    /// Disks with failing findings in view.
    pub disks_damaged: usize,
    /// Disks examined with none.
    pub disks_clean: usize,
    /// Disks that could not be examined.
    pub disks_not_read: usize,
    /// Counts of the findings in view, summed over the disks.
    pub summary: Summary,
    /// The window of lost durable writes across all disks, if any were lost.
    pub incident_window: Option<FleetWindow>,
    /// Lost durable writes over time, all disks together.
    pub histogram: Vec<Bin>,
    /// The disks, most hit first (lost durable writes, then damaged blocks, then files hit;
    /// ties in the order given), the disks not read last.
    pub disks: Vec<FleetDisk>,
    /// The SVG written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<String>,
}

/// The fleet report over `disks` (in the order given); `opts` are the view the disks' reports
/// were built with.
pub fn build(mut disks: Vec<FleetDisk>, opts: &Options) -> FleetReport {
    // A stable sort keeps the order given among equals.
    disks.sort_by_key(|d| {
        (
            d.status == DiskStatus::NotRead,
            std::cmp::Reverse((
                d.lost_durable_writes,
                d.damaged_blocks,
                d.files_hit.unwrap_or(0),
            )),
        )
    });
    let mut rank = 0;
    for d in disks.iter_mut().filter(|d| d.status != DiskStatus::NotRead) {
        rank += 1;
        d.rank = Some(rank);
    }
    let reports: Vec<&ForensicReport> = disks.iter().filter_map(|d| d.report.as_ref()).collect();
    let mut summary = Summary::default();
    for r in &reports {
        for f in &r.findings {
            summary.count(f.finding.kind);
        }
    }
    let points: Vec<_> = reports
        .iter()
        .flat_map(|r| lost_points(&r.findings))
        .filter(|p| p.1 && in_view(p.0, opts))
        .collect();
    let durable: Vec<&_> = points.iter().collect();
    let count = |s: DiskStatus| disks.iter().filter(|d| d.status == s).count();
    FleetReport {
        disks_total: disks.len(),
        disks_damaged: count(DiskStatus::Damaged),
        disks_clean: count(DiskStatus::Clean),
        disks_not_read: count(DiskStatus::NotRead),
        summary,
        incident_window: fleet_window(&reports),
        histogram: histogram(&durable, opts, 12),
        disks,
        plot: None,
    }
}

/// The disks' windows joined: from the earliest start to the latest end.
fn fleet_window(reports: &[&ForensicReport]) -> Option<FleetWindow> {
    let windows: Vec<&IncidentWindow> = reports
        .iter()
        .filter_map(|r| r.incident_window.as_ref())
        .collect();
    let start = windows.iter().map(|w| w.start).min()?;
    let end = windows.iter().map(|w| w.end).max()?;
    // What survived is what was written before the first loss anywhere.
    let newest_surviving = reports
        .iter()
        .flat_map(|r| r.findings.iter().filter_map(|f| f.finding.found_time))
        .filter(|&t| t < start)
        .max();
    Some(FleetWindow {
        window: IncidentWindow {
            start,
            end,
            seconds: (end - start) as f64 / 1e6,
            lost_durable_writes: windows.iter().map(|w| w.lost_durable_writes).sum(),
            blocks: windows.iter().map(|w| w.blocks).sum(),
            newest_surviving,
        },
        disks: windows.len(),
    })
}

/// "N thing" or "N things".
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn span(a: Micros, z: Micros) -> String {
    if a == z {
        format!("at {}", rfc3339(a))
    } else {
        format!(
            "from {} to {} ({:.3} s)",
            rfc3339(a),
            rfc3339(z),
            (z - a) as f64 / 1e6
        )
    }
}

impl FleetReport {
    /// The human rendering: the counts, the fleet window and histogram, then each disk in rank
    /// order with its window and at most `rows` of its affected files and structures.
    pub fn human(&self, rows: usize) -> String {
        let mut o = String::new();
        let s = &self.summary;
        writeln!(
            o,
            "lostwrite report: {}: {} damaged, {} clean{}",
            plural(self.disks_total, "disk", "disks"),
            self.disks_damaged,
            self.disks_clean,
            if self.disks_not_read > 0 {
                format!(", {} NOT READ", self.disks_not_read)
            } else {
                String::new()
            }
        )
        .ok();
        if let Some(r) = self.disks.iter().find_map(|d| d.report.as_ref()) {
            if let Some((a, b)) = &r.view {
                writeln!(
                    o,
                    "view: lost writes from {} to {}",
                    a.map_or("the start".into(), rfc3339),
                    b.map_or("the end".into(), rfc3339)
                )
                .ok();
            }
        }
        writeln!(
            o,
            "findings on all disks: {} reverted, {} misdirected, {} zeroed, {} corrupt; {} unflushed, {} uncertain (allowed after a crash)",
            s.reverted, s.misdirected, s.zeroed, s.corrupt, s.unflushed, s.uncertain
        )
        .ok();
        match &self.incident_window {
            Some(fw) => {
                let w = &fw.window;
                writeln!(
                    o,
                    "\nINCIDENT WINDOW (all disks): {} durable writes to {} blocks on {} were lost, written between\n  {}  and  {}  ({:.3} s)",
                    w.lost_durable_writes,
                    w.blocks,
                    plural(fw.disks, "disk", "disks"),
                    rfc3339(w.start),
                    rfc3339(w.end),
                    w.seconds
                )
                .ok();
                if let Some(t) = w.newest_surviving {
                    writeln!(
                        o,
                        "  data written up to {} survived on the reverted blocks",
                        rfc3339(t)
                    )
                    .ok();
                }
                writeln!(o, "  anything written between these times on any of these disks is at risk; nothing written after {} was lost", rfc3339(w.end)).ok();
                super::render::write_histogram(
                    &mut o,
                    &self.histogram,
                    "lost durable writes over time, all disks:",
                );
            }
            None => {
                writeln!(o, "\nno durable write was lost on any disk").ok();
            }
        }
        writeln!(
            o,
            "\ndisks, most hit first (by lost durable writes, then damaged blocks, then files hit):"
        )
        .ok();
        for d in &self.disks {
            write_disk(&mut o, d, rows);
        }
        if let Some(p) = &self.plot {
            writeln!(o, "\ntimeline picture: {p}").ok();
        }
        o
    }
}

/// One disk's lines: its counts, ledger, window and first `rows` affected entries; or what
/// became of it.
fn write_disk(o: &mut String, d: &FleetDisk, rows: usize) {
    let (Some(r), Some(rank)) = (&d.report, d.rank) else {
        let why = d.trouble.as_deref().unwrap_or("");
        writeln!(o, "  NOT READ {}: {why}", d.device).ok();
        return;
    };
    if d.status == DiskStatus::Clean {
        let s = &r.summary;
        let allowed = s.unflushed + s.uncertain;
        writeln!(
            o,
            "  {rank}. {}: {}{}",
            d.device,
            match (&d.trouble, r.view.is_some()) {
                (Some(_), _) => "NOT VERIFIED",
                (None, true) => "clean in this view: checked, nothing lost",
                (None, false) => "clean: checked, nothing lost",
            },
            if allowed > 0 {
                format!(
                    " ({} unflushed or uncertain, allowed after a crash)",
                    plural(allowed as usize, "block", "blocks")
                )
            } else {
                String::new()
            }
        )
        .ok();
        if r.outside_view > 0 {
            writeln!(
                o,
                "       {} outside this view",
                plural(r.outside_view, "finding lies", "findings lie")
            )
            .ok();
        }
    } else {
        writeln!(
            o,
            "  {rank}. {}: {} lost, {} damaged{}",
            d.device,
            plural(d.lost_durable_writes, "durable write", "durable writes"),
            plural(d.damaged_blocks, "block", "blocks"),
            match d.files_hit {
                Some(n) => format!(
                    ", {} hit",
                    plural(n, "file or directory", "files and directories")
                ),
                None => String::new(),
            }
        )
        .ok();
    }
    writeln!(
        o,
        "       ledger {}, {}-byte blocks",
        r.ledger, r.block_size
    )
    .ok();
    if let Some(why) = &d.trouble {
        writeln!(o, "       trouble: {why}").ok();
    }
    if let Some(w) = &r.incident_window {
        writeln!(
            o,
            "       lost {} written {}",
            plural(w.lost_durable_writes, "durable write", "durable writes"),
            span(w.start, w.end)
        )
        .ok();
    }
    for a in r.affected.iter().take(rows) {
        let kinds: Vec<&str> = a.kinds.iter().map(|k| k.name()).collect();
        let bytes: Vec<String> = a
            .bytes
            .iter()
            .take(2)
            .map(|(s, e)| format!("{s}-{}", e - 1))
            .collect();
        writeln!(
            o,
            "       [{}] {}: {} {}{}",
            a.region,
            a.what(),
            plural(a.blocks, "block", "blocks"),
            kinds.join("/"),
            if bytes.is_empty() {
                String::new()
            } else {
                format!(
                    ", bytes {}{}",
                    bytes.join(", "),
                    if a.bytes.len() > 2 { ", ..." } else { "" }
                )
            }
        )
        .ok();
    }
    if r.affected.len() > rows {
        writeln!(
            o,
            "       ... and {} more (report {} --files for all)",
            r.affected.len() - rows,
            d.device
        )
        .ok();
    }
    for n in &r.notes {
        writeln!(o, "       note: {n}").ok();
    }
    // With --packages each disk says what to reinstall on it: the packages belong to the disk.
    if let Some(regions) = r
        .packages
        .as_ref()
        .filter(|_| d.status != DiskStatus::Clean)
    {
        writeln!(o, "       packages to reinstall:").ok();
        if regions.is_empty() {
            writeln!(o, "         none: {}", r.why_no_packages()).ok();
        }
        let mut lines = String::new();
        for region in regions {
            region.write_human(&mut lines);
        }
        for line in lines.lines() {
            writeln!(o, "       {line}").ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Finding;
    use crate::forensics::MappedFinding;

    /// A report on `device` with one reverted block losing a durable write at second `lost`
    /// (none when `lost` is None); its contents were written at second `found`.
    fn report(device: &str, found: u64, lost: &[u64]) -> ForensicReport {
        let findings: Vec<MappedFinding> = lost
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let text = format!(
                    r#"{{"block":{i},"offset":{},"kind":"reverted","expected_generation":2,"found_generation":1,"found_time":"2026-11-25T14:00:{found:02}Z","lost":[{{"generation":2,"time":"2026-11-25T14:00:{l:02}Z","durable":true,"session":1,"change":"write"}}]}}"#,
                    i * 4096
                );
                let finding: Finding = serde_json::from_str(&text).unwrap();
                MappedFinding {
                    finding,
                    files: Vec::new(),
                }
            })
            .collect();
        let points = lost_points(&findings);
        let durable: Vec<&_> = points.iter().collect();
        ForensicReport {
            device: device.into(),
            read: None,
            read_note: None,
            ledger: format!("{device}.ledger"),
            block_size: 4096,
            summary: Summary::default(),
            incident_window: super::super::window::incident_window(&durable, &findings),
            histogram: Vec::new(),
            findings,
            affected: Vec::new(),
            partitions: None,
            packages: None,
            notes: Vec::new(),
            view: None,
            outside_view: 0,
            plot: None,
            sessions: Vec::new(),
        }
    }

    #[test]
    fn the_fleet_window_spans_every_disks_losses_and_the_most_hit_disk_ranks_first() {
        let disks = vec![
            FleetDisk::examined(report("a", 1, &[10]), None),
            FleetDisk::not_read("gone", "no such file".into()),
            FleetDisk::examined(report("b", 5, &[20, 30]), None),
            FleetDisk::examined(report("c", 0, &[]), None),
        ];
        let f = build(disks, &Options::default());
        let order: Vec<(&str, Option<usize>)> = f
            .disks
            .iter()
            .map(|d| (d.device.as_str(), d.rank))
            .collect();
        assert_eq!(
            order,
            [
                ("b", Some(1)),
                ("a", Some(2)),
                ("c", Some(3)),
                ("gone", None)
            ]
        );
        let w = f.incident_window.clone().unwrap();
        assert_eq!(w.disks, 2);
        assert_eq!(rfc3339(w.window.start), "2026-11-25T14:00:10.000000Z");
        assert_eq!(rfc3339(w.window.end), "2026-11-25T14:00:30.000000Z");
        assert_eq!((w.window.lost_durable_writes, w.window.blocks), (3, 3));
        // b's contents from second 5 were written before the first loss (a's, at 10).
        assert_eq!(
            w.window.newest_surviving.map(rfc3339).as_deref(),
            Some("2026-11-25T14:00:05.000000Z")
        );
        assert_eq!(
            (f.disks_damaged, f.disks_clean, f.disks_not_read),
            (2, 1, 1)
        );
        let human = f.human(10);
        assert!(
            human.contains("3. c: clean: checked, nothing lost"),
            "{human}"
        );
        assert!(human.contains("NOT READ gone: no such file"), "{human}");
    }
}
