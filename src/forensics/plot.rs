//! The timeline picture, as SVG written by hand (no plotting dependency): on top, time across
//! with the service sessions as bands (a crashed one in red), every completed flush as a tick,
//! and every lost write as a mark in the lane of its kind, the incident window shaded; below,
//! the device from first to last byte with every finding where it lies. For many disks
//! ([`render_fleet`]): one lane per disk on a shared time axis.

use super::fleet::{DiskStatus, FleetReport};
use super::{lost_points, ForensicReport};
use crate::clock::{rfc3339, Micros};
use crate::findings::classify::Kind;
use std::fmt::Write as _;

const W: f64 = 1000.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 30.0;
/// Most flush ticks drawn (more are thinned evenly).
const MAX_FLUSH_TICKS: usize = 600;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(k: Kind) -> &'static str {
    match k {
        Kind::Reverted => "#d62728",
        Kind::Misdirected => "#9467bd",
        Kind::Zeroed => "#1f77b4",
        Kind::Corrupt => "#8c564b",
        Kind::Unflushed => "#ff7f0e",
        Kind::Uncertain => "#7f7f7f",
    }
}

fn bytes_label(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", U[i])
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The time span the pictures of `reports` show: every lost write and every service session,
/// padded; at least a second.
fn time_range(reports: &[&ForensicReport]) -> (Micros, Micros) {
    let mut times: Vec<Micros> = Vec::new();
    for r in reports {
        times.extend(lost_points(&r.findings).iter().map(|p| p.0));
        for s in r.sessions.iter().filter(|s| s.id != 0) {
            times.push(s.open_time);
            times.push(s.last_time);
        }
    }
    let (mut t0, mut t1) = (
        times.iter().copied().min().unwrap_or(0),
        times.iter().copied().max().unwrap_or(1),
    );
    if t1 - t0 < 1_000 {
        t0 -= 500_000;
        t1 += 500_000;
    }
    let pad = (t1 - t0) / 40;
    (t0 - pad, t1 + pad)
}

/// The time axis at `axis_y`, from `left` to the right margin: six labelled ticks and what
/// the axis is.
fn time_axis(
    s: &mut String,
    (t0, t1): (Micros, Micros),
    left: f64,
    x: &dyn Fn(Micros) -> f64,
    axis_y: f64,
) {
    writeln!(
        s,
        r##"<line x1="{left}" x2="{}" y1="{axis_y}" y2="{axis_y}" stroke="black"/>"##,
        W - RIGHT
    )
    .ok();
    for i in 0..=5 {
        let t = t0 + (t1 - t0) * i / 5;
        let xt = x(t);
        let stamp = rfc3339(t);
        let label = if t1 - t0 > 86_400_000_000 {
            format!("{} {}", &stamp[5..10], &stamp[11..16])
        } else {
            stamp[11..23].to_string()
        };
        let anchor = match i {
            0 => "start",
            5 => "end",
            _ => "middle",
        };
        writeln!(
            s,
            r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="{axis_y}" y2="{}" stroke="black"/>"##,
            axis_y + 5.0
        )
        .ok();
        writeln!(
            s,
            r##"<text x="{xt:.1}" y="{}" text-anchor="{anchor}">{}</text>"##,
            axis_y + 18.0,
            esc(&label)
        )
        .ok();
    }
    let day = rfc3339(t0)[..10].to_string();
    writeln!(s, r##"<text x="{}" y="{}" text-anchor="middle">time (UTC, from {day}), when each write was made</text>"##, (left + W - RIGHT) / 2.0, axis_y + 36.0).ok();
}

/// Renders the report's picture.
pub fn render(r: &ForensicReport, device_size: u64) -> String {
    let points = lost_points(&r.findings);
    let (t0, t1) = time_range(&[r]);
    let x = |t: Micros| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT);
    let lanes = [
        Kind::Reverted,
        Kind::Misdirected,
        Kind::Zeroed,
        Kind::Corrupt,
        Kind::Unflushed,
    ];
    let lane_y = |k: Kind| 140.0 + 30.0 * lanes.iter().position(|&l| l == k).unwrap_or(4) as f64;
    let (top, bottom) = (80.0, 140.0 + 30.0 * 4.0 + 20.0);
    let mut s = String::new();
    writeln!(s, r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="560" viewBox="0 0 {W} 560" font-family="sans-serif" font-size="12">"##).ok();
    writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##).ok();
    writeln!(
        s,
        r##"<text x="{LEFT}" y="28" font-size="16" font-weight="bold">Lost writes on {}</text>"##,
        esc(&r.device)
    )
    .ok();
    let sub = match &r.incident_window {
        Some(w) => format!(
            "{} durable writes lost between {} and {} ({:.3} s)",
            w.lost_durable_writes,
            rfc3339(w.start),
            rfc3339(w.end),
            w.seconds
        ),
        None => "no durable write lost".into(),
    };
    writeln!(
        s,
        r##"<text x="{LEFT}" y="48" fill="#444">{}</text>"##,
        esc(&sub)
    )
    .ok();
    // Sessions.
    for sess in r.sessions.iter().filter(|s| s.id != 0) {
        let (a, b) = (
            x(sess.open_time),
            x(sess.last_time).max(x(sess.open_time) + 2.0),
        );
        let fill = if sess.crashed() { "#fbe3e3" } else { "#eef2f7" };
        writeln!(s, r##"<rect class="session" x="{a:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="{fill}"/>"##, b - a, bottom - top).ok();
        let label = if sess.crashed() {
            format!("session {} (crashed)", sess.id)
        } else {
            format!("session {}", sess.id)
        };
        writeln!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#555" font-size="10">{}</text>"##,
            a + 3.0,
            top + 11.0,
            esc(&label)
        )
        .ok();
    }
    if let Some(w) = &r.incident_window {
        let (xa, xb) = (x(w.start), x(w.end).max(x(w.start) + 2.0));
        writeln!(s, r##"<rect class="window" x="{:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#d62728" fill-opacity="0.12" stroke="#d62728" stroke-dasharray="4 3"/>"##, xa - 2.0, xb - xa + 4.0, bottom - top).ok();
        writeln!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#d62728" font-size="11">incident window</text>"##,
            xa,
            bottom + 14.0
        )
        .ok();
    }
    // Flush points.
    let flushes: Vec<Micros> = r
        .sessions
        .iter()
        .flat_map(|s| s.flushes.iter().map(|f| f.1))
        .collect();
    let step = flushes.len().div_ceil(MAX_FLUSH_TICKS).max(1);
    for &t in flushes.iter().step_by(step) {
        writeln!(s, r##"<line class="flush" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#2c7fb8" stroke-width="1"/>"##, x(t), top + 18.0, top + 34.0).ok();
    }
    writeln!(
        s,
        r##"<text x="8" y="{}" fill="#2c7fb8">flushes ({})</text>"##,
        top + 30.0,
        flushes.len()
    )
    .ok();
    // Lanes and lost writes.
    for k in lanes {
        let y = lane_y(k);
        writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/>"##,
            W - RIGHT
        )
        .ok();
        writeln!(
            s,
            r##"<text x="8" y="{}" fill="{}">{}</text>"##,
            y + 4.0,
            color(k),
            k.name()
        )
        .ok();
    }
    for &(t, durable, k, block) in &points {
        let (cx, cy) = (x(t), lane_y(k));
        let fill = if durable { color(k) } else { "white" };
        writeln!(s, r##"<circle class="lost" cx="{cx:.1}" cy="{cy}" r="4" fill="{fill}" stroke="{}"><title>block {block}: {} write at {}{}</title></circle>"##, color(k), k.name(), rfc3339(t), if durable { " (durable)" } else { " (unflushed)" }).ok();
    }
    // Time axis.
    let axis_y = bottom + 24.0;
    time_axis(&mut s, (t0, t1), LEFT, &x, axis_y);
    // Device map.
    let (my, mh) = (430.0, 60.0);
    let bx = |off: u64| LEFT + off as f64 / device_size.max(1) as f64 * (W - LEFT - RIGHT);
    writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" font-weight="bold">Where the damaged blocks are</text>"##,
        my - 12.0
    )
    .ok();
    writeln!(
        s,
        r##"<rect x="{LEFT}" y="{my}" width="{}" height="{mh}" fill="#f4f4f4" stroke="#999"/>"##,
        W - LEFT - RIGHT
    )
    .ok();
    if let Some((_, regions)) = &r.partitions {
        for reg in regions.iter().filter(|g| g.start > 0) {
            writeln!(s, r##"<line x1="{0:.1}" x2="{0:.1}" y1="{my}" y2="{1}" stroke="#555" stroke-dasharray="3 2"/><text x="{2:.1}" y="{3}" font-size="10" fill="#555">{4}</text>"##, bx(reg.start), my + mh, bx(reg.start) + 2.0, my + 10.0, esc(&reg.name)).ok();
        }
    }
    for f in &r.findings {
        let k = f.finding.kind;
        let title = match f.files.first().and_then(|r| r.path.clone()) {
            Some(p) => format!("block {} ({}): {}", f.finding.block, k.name(), p),
            None => format!("block {} ({})", f.finding.block, k.name()),
        };
        writeln!(s, r##"<line class="finding" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="{3}" stroke-width="2"><title>{4}</title></line>"##, bx(f.finding.offset), my + 4.0, my + mh - 4.0, color(k), esc(&title)).ok();
    }
    let ay = my + mh;
    for i in 0..=4 {
        let off = device_size / 4 * i;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"##,
            bx(off),
            ay + 16.0,
            bytes_label(off)
        )
        .ok();
    }
    writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle">device offset ({} in all)</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        ay + 34.0,
        bytes_label(device_size)
    )
    .ok();
    writeln!(s, "</svg>").ok();
    s
}

/// Left margin of the fleet picture: room for the disks' names.
const FLEET_LEFT: f64 = 230.0;
const LANE_H: f64 = 44.0;

/// `device` cut from the left to `n` characters, so that the distinctive end stays.
fn tail(device: &str, n: usize) -> String {
    let chars: Vec<char> = device.chars().collect();
    if chars.len() <= n {
        device.to_string()
    } else {
        format!(
            "…{}",
            chars[chars.len() - (n - 1)..].iter().collect::<String>()
        )
    }
}

/// The fleet's picture: one lane per disk, in rank order, on one time axis — its service
/// sessions as bands, each lost write as a mark coloured by kind (hollow when not durable) and
/// its own window as a bar; the fleet's incident window shaded across all lanes.
pub fn render_fleet(f: &FleetReport) -> String {
    let reports: Vec<&ForensicReport> = f.disks.iter().filter_map(|d| d.report.as_ref()).collect();
    let (t0, t1) = time_range(&reports);
    let x = |t: Micros| FLEET_LEFT + (t - t0) as f64 / (t1 - t0) as f64 * (W - FLEET_LEFT - RIGHT);
    let top = 80.0;
    let bottom = top + LANE_H * f.disks.len().max(1) as f64;
    let axis_y = bottom + 24.0;
    let height = axis_y + 80.0;
    let mut s = String::new();
    writeln!(s, r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"##).ok();
    writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##).ok();
    writeln!(
        s,
        r##"<text x="8" y="28" font-size="16" font-weight="bold">Lost writes on {} disks: {} damaged, {} clean{}</text>"##,
        f.disks_total,
        f.disks_damaged,
        f.disks_clean,
        if f.disks_not_read > 0 {
            format!(", {} not read", f.disks_not_read)
        } else {
            String::new()
        }
    )
    .ok();
    let sub = match &f.incident_window {
        Some(w) => format!(
            "{} durable writes lost on {} disks between {} and {} ({:.3} s)",
            w.window.lost_durable_writes,
            w.disks,
            rfc3339(w.window.start),
            rfc3339(w.window.end),
            w.window.seconds
        ),
        None => "no durable write lost on any disk".into(),
    };
    writeln!(
        s,
        r##"<text x="8" y="48" fill="#444">{}</text>"##,
        esc(&sub)
    )
    .ok();
    for (i, d) in f.disks.iter().enumerate() {
        let y0 = top + LANE_H * i as f64;
        let yc = y0 + LANE_H / 2.0;
        let status = match d.status {
            DiskStatus::Damaged => "damaged",
            DiskStatus::Clean => "clean",
            DiskStatus::NotRead => "not-read",
        };
        writeln!(
            s,
            r##"<g class="lane" data-device="{}" data-status="{status}">"##,
            esc(&d.device)
        )
        .ok();
        let band = if i % 2 == 0 { "#fafafa" } else { "#f0f0f0" };
        writeln!(
            s,
            r##"<rect x="0" y="{y0}" width="{W}" height="{LANE_H}" fill="{band}"/>"##
        )
        .ok();
        let rank = d.rank.map_or(String::new(), |r| format!("{r}. "));
        writeln!(
            s,
            r##"<text x="8" y="{}" font-weight="bold">{rank}{}<title>{}</title></text>"##,
            yc - 3.0,
            esc(&tail(&d.device, 30)),
            esc(&d.device)
        )
        .ok();
        let (what, fill) = match d.status {
            DiskStatus::Damaged => (
                format!(
                    "{} durable writes lost, {} blocks damaged",
                    d.lost_durable_writes, d.damaged_blocks
                ),
                "#d62728",
            ),
            DiskStatus::Clean if d.trouble.is_some() => ("not verified".into(), "#7f7f7f"),
            DiskStatus::Clean => ("clean: checked, nothing lost".into(), "#2ca02c"),
            DiskStatus::NotRead => ("not read".into(), "#7f7f7f"),
        };
        writeln!(
            s,
            r##"<text x="8" y="{}" font-size="10" fill="{fill}">{}</text>"##,
            yc + 11.0,
            esc(&what)
        )
        .ok();
        if let Some(r) = &d.report {
            for sess in r.sessions.iter().filter(|s| s.id != 0) {
                let (a, b) = (
                    x(sess.open_time),
                    x(sess.last_time).max(x(sess.open_time) + 2.0),
                );
                let fill = if sess.crashed() { "#fbe3e3" } else { "#e3eaf3" };
                writeln!(s, r##"<rect class="session" x="{a:.1}" y="{}" width="{:.1}" height="{}" fill="{fill}"><title>session {}{}</title></rect>"##, y0 + 6.0, b - a, LANE_H - 12.0, sess.id, if sess.crashed() { " (crashed)" } else { "" }).ok();
            }
            writeln!(
                s,
                r##"<line x1="{FLEET_LEFT}" x2="{}" y1="{yc}" y2="{yc}" stroke="#ccc"/>"##,
                W - RIGHT
            )
            .ok();
            if let Some(w) = &r.incident_window {
                let (xa, xb) = (x(w.start), x(w.end).max(x(w.start) + 2.0));
                writeln!(s, r##"<rect class="disk-window" x="{:.1}" y="{}" width="{:.1}" height="4" fill="#d62728"><title>{}: lost writes from {} to {}</title></rect>"##, xa, y0 + 6.0, xb - xa, esc(&d.device), rfc3339(w.start), rfc3339(w.end)).ok();
            }
            for &(t, durable, k, block) in &lost_points(&r.findings) {
                let fill = if durable { color(k) } else { "white" };
                writeln!(s, r##"<circle class="lost" cx="{:.1}" cy="{yc}" r="4" fill="{fill}" stroke="{}"><title>{}, block {block}: {} write at {}{}</title></circle>"##, x(t), color(k), esc(&d.device), k.name(), rfc3339(t), if durable { " (durable)" } else { " (unflushed)" }).ok();
            }
        }
        writeln!(s, "</g>").ok();
    }
    writeln!(
        s,
        r##"<line x1="{FLEET_LEFT}" x2="{FLEET_LEFT}" y1="{top}" y2="{bottom}" stroke="#999"/>"##
    )
    .ok();
    if let Some(w) = &f.incident_window {
        let (xa, xb) = (
            x(w.window.start),
            x(w.window.end).max(x(w.window.start) + 2.0),
        );
        writeln!(s, r##"<rect class="window" x="{:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#d62728" fill-opacity="0.10" stroke="#d62728" stroke-dasharray="4 3"/>"##, xa - 2.0, xb - xa + 4.0, bottom - top).ok();
        writeln!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#d62728" font-size="11">incident window, all disks</text>"##,
            xa,
            top - 6.0
        )
        .ok();
    }
    time_axis(&mut s, (t0, t1), FLEET_LEFT, &x, axis_y);
    // The legend: what the colours are.
    let mut lx = FLEET_LEFT;
    for k in [
        Kind::Reverted,
        Kind::Misdirected,
        Kind::Zeroed,
        Kind::Corrupt,
        Kind::Unflushed,
    ] {
        writeln!(s, r##"<circle cx="{lx:.1}" cy="{}" r="4" fill="{}"/><text x="{:.1}" y="{}" font-size="11">{}</text>"##, axis_y + 58.0, color(k), lx + 8.0, axis_y + 62.0, k.name()).ok();
        lx += 100.0;
    }
    writeln!(s, "</svg>").ok();
    s
}
