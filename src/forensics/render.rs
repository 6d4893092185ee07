//! The human form of a [`ForensicReport`], as `report` prints it: the device and the counts,
//! the incident window with its histogram (or that nothing durable was lost), the affected files
//! and structures, the packages to reinstall, the notes, and where the timeline picture went.

use super::window::Bin;
use super::ForensicReport;
use crate::clock::rfc3339;
use std::fmt::Write as _;

impl ForensicReport {
    /// The human rendering.
    pub fn human(&self, max_rows: usize) -> String {
        let mut o = String::new();
        self.write_head(&mut o);
        self.write_window(&mut o);
        self.write_affected(&mut o, max_rows);
        self.write_packages(&mut o);
        for n in &self.notes {
            writeln!(o, "note: {n}").ok();
        }
        if let Some(p) = &self.plot {
            writeln!(o, "\ntimeline picture: {p}").ok();
        }
        o
    }

    /// The device and ledger, how the device was read, the view, and the counts.
    fn write_head(&self, o: &mut String) {
        let s = &self.summary;
        writeln!(
            o,
            "lostwrite report: {}  (ledger {}, {}-byte blocks)",
            self.device, self.ledger, self.block_size
        )
        .ok();
        if let Some(mode) = self.read {
            let line = crate::verify::report::read_line(mode, self.read_note.as_deref());
            writeln!(o, "{line}").ok();
        }
        if let Some((a, b)) = &self.view {
            writeln!(
                o,
                "view: lost writes from {} to {}",
                a.map_or("the start".into(), rfc3339),
                b.map_or("the end".into(), rfc3339)
            )
            .ok();
            if self.outside_view > 0 {
                writeln!(
                    o,
                    "  {} more finding{} outside this view (run without --since/--until to see all)",
                    self.outside_view,
                    if self.outside_view == 1 { " lies" } else { "s lie" }
                )
                .ok();
            }
        }
        writeln!(
            o,
            "findings: {} reverted, {} misdirected, {} zeroed, {} corrupt; {} unflushed, {} uncertain (allowed after a crash)",
            s.reverted, s.misdirected, s.zeroed, s.corrupt, s.unflushed, s.uncertain
        )
        .ok();
    }

    /// The incident window and the histogram of lost durable writes, or that none was lost.
    fn write_window(&self, o: &mut String) {
        let s = &self.summary;
        match &self.incident_window {
            Some(w) => {
                writeln!(o).ok();
                writeln!(
                    o,
                    "INCIDENT WINDOW: {} durable writes to {} blocks were lost, written between\n  {}  and  {}  ({:.3} s)",
                    w.lost_durable_writes, w.blocks, rfc3339(w.start), rfc3339(w.end), w.seconds
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
                writeln!(o, "  anything written between these times is at risk; nothing written after {} was lost", rfc3339(w.end)).ok();
                write_histogram(o, &self.histogram, "lost durable writes over time:");
            }
            None => {
                writeln!(
                    o,
                    "\nno durable write was lost{}{}",
                    if self.view.is_some() {
                        " in this view"
                    } else {
                        ""
                    },
                    if s.unflushed + s.uncertain > 0 {
                        " (only writes a crash was allowed to lose)"
                    } else {
                        ""
                    }
                )
                .ok();
            }
        }
    }

    /// The affected files and structures, at most `max_rows` of them.
    fn write_affected(&self, o: &mut String, max_rows: usize) {
        if !self.affected.is_empty() {
            writeln!(o, "\naffected files and filesystem structures:").ok();
            for a in self.affected.iter().take(max_rows) {
                let kinds: Vec<&str> = a.kinds.iter().map(|k| k.name()).collect();
                let what = a.what();
                writeln!(
                    o,
                    "  [{}] {what}: {} block{} {}",
                    a.region,
                    a.blocks,
                    if a.blocks == 1 { "" } else { "s" },
                    kinds.join("/")
                )
                .ok();
                if !a.bytes.is_empty() {
                    let r: Vec<String> = a
                        .bytes
                        .iter()
                        .take(4)
                        .map(|(s, e)| format!("{s}-{}", e - 1))
                        .collect();
                    writeln!(
                        o,
                        "      bytes {}{}",
                        r.join(", "),
                        if a.bytes.len() > 4 { ", ..." } else { "" }
                    )
                    .ok();
                }
                writeln!(o, "      {}", a.symptom).ok();
                if a.maybe_intact {
                    writeln!(
                        o,
                        "      (its damaged {}-byte ledger block also holds other owners' data: this part may be intact)",
                        self.block_size
                    )
                    .ok();
                }
                match a.contents_written {
                    Some((x, y)) if x == y => {
                        writeln!(o, "      reads contents written at {}", rfc3339(x)).ok();
                    }
                    Some((x, y)) => {
                        writeln!(
                            o,
                            "      reads contents written from {} to {}",
                            rfc3339(x),
                            rfc3339(y)
                        )
                        .ok();
                    }
                    None => {}
                }
                match a.lost_between {
                    Some((x, y)) if x == y => {
                        writeln!(o, "      lost a write made at {}", rfc3339(x)).ok();
                    }
                    Some((x, y)) => {
                        writeln!(o, "      lost writes from {} to {}", rfc3339(x), rfc3339(y)).ok();
                    }
                    None => {}
                }
            }
            if self.affected.len() > max_rows {
                writeln!(
                    o,
                    "  ... and {} more (use --json)",
                    self.affected.len() - max_rows
                )
                .ok();
            }
        }
    }

    /// The packages to reinstall, per filesystem (with `--packages`).
    /// Why `--packages` found nothing to list: damaged files with no package database beside
    /// them (the notes say where it was looked for) are not "no damaged file".
    pub(super) fn why_no_packages(&self) -> &'static str {
        if self.affected.iter().any(|a| a.owner == "file") {
            "no package database lists the damaged files (the notes say why)"
        } else {
            "no damaged file in a filesystem lostwrite reads"
        }
    }

    fn write_packages(&self, o: &mut String) {
        let Some(regions) = &self.packages else {
            return;
        };
        writeln!(o, "\npackages to reinstall:").ok();
        if regions.is_empty() {
            writeln!(o, "  none: {}", self.why_no_packages()).ok();
        }
        for r in regions {
            r.write_human(o);
        }
    }
}

/// The histogram of lost durable writes as bars of `#`, the tallest 40 wide.
pub(super) fn write_histogram(o: &mut String, histogram: &[Bin], title: &str) {
    let peak = histogram
        .iter()
        .map(|b| b.lost_writes)
        .max()
        .unwrap_or(0)
        .max(1);
    writeln!(o, "\n{title}").ok();
    for b in histogram {
        let bar = "#".repeat((b.lost_writes * 40).div_ceil(peak));
        writeln!(o, "  {}  {:<40} {}", rfc3339(b.start), bar, b.lost_writes).ok();
    }
}
