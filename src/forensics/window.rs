//! When the writes were lost: every lost write of the findings as a point in time, the incident
//! window the durable ones span (and what survived before it), and the histogram of them over
//! time. Times are [`Micros`] throughout, written as RFC 3339 only when printed or serialised.

use super::{MappedFinding, Options};
use crate::clock::Micros;
use crate::findings::classify::Kind;
use serde::Serialize;
use std::collections::HashSet;

/// When the lost durable writes happened.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IncidentWindow {
    /// Earliest lost durable write.
    #[serde(with = "crate::clock::as_rfc3339")]
    pub start: Micros,
    /// Latest lost durable write.
    #[serde(with = "crate::clock::as_rfc3339")]
    pub end: Micros,
    /// Length of the window in seconds.
    pub seconds: f64,
    /// Durable writes lost.
    pub lost_durable_writes: usize,
    /// Blocks that lost at least one durable write.
    pub blocks: usize,
    /// The newest generation found on a reverted block that was written before the window: data
    /// written up to then survived.
    #[serde(
        with = "crate::clock::as_rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub newest_surviving: Option<Micros>,
}

/// One bar of the histogram of lost writes.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bin {
    /// Start of the bin.
    #[serde(with = "crate::clock::as_rfc3339")]
    pub start: Micros,
    /// End of the bin.
    #[serde(with = "crate::clock::as_rfc3339")]
    pub end: Micros,
    /// Durable writes lost in it.
    pub lost_writes: usize,
}

/// A lost write of a finding: (time, durable, kind, block).
pub type LostPoint = (Micros, bool, Kind, u64);

/// Every lost write of the findings.
pub fn lost_points(findings: &[MappedFinding]) -> Vec<LostPoint> {
    let mut out = Vec::new();
    for f in findings {
        for l in &f.finding.lost {
            out.push((l.time, l.durable, f.finding.kind, f.finding.block));
        }
    }
    out
}

/// Whether `t` lies within `--since` / `--until` (both inclusive).
pub(super) fn in_view(t: Micros, o: &Options) -> bool {
    o.since.is_none_or(|s| t >= s) && o.until.is_none_or(|u| t <= u)
}

/// The window the lost durable writes span, if any were lost. `findings` give the found
/// generations' times, the newest of which before the window is what survived.
pub(super) fn incident_window(
    durable: &[&LostPoint],
    findings: &[MappedFinding],
) -> Option<IncidentWindow> {
    match (
        durable.iter().map(|p| p.0).min(),
        durable.iter().map(|p| p.0).max(),
    ) {
        (Some(a), Some(z)) => {
            let newest_surviving = findings
                .iter()
                .filter_map(|f| f.finding.found_time)
                .filter(|&t| t < a)
                .max();
            Some(IncidentWindow {
                start: a,
                end: z,
                seconds: (z - a) as f64 / 1e6,
                lost_durable_writes: durable.len(),
                blocks: durable.iter().map(|p| p.3).collect::<HashSet<_>>().len(),
                newest_surviving,
            })
        }
        _ => None,
    }
}

/// The lost durable writes counted in `bins` equal bins, from `--since` (or the first) to
/// `--until` (or the last); empty when there is neither a point nor a bound on both sides.
pub(super) fn histogram(durable: &[&LostPoint], opts: &Options, bins: usize) -> Vec<Bin> {
    let (Some(lo), Some(hi)) = (
        opts.since.or(durable.iter().map(|p| p.0).min()),
        opts.until.or(durable.iter().map(|p| p.0).max()),
    ) else {
        return Vec::new();
    };
    let span = (hi - lo).max(1);
    let width = (span + bins as i64 - 1) / bins as i64;
    let mut counts = vec![0usize; bins];
    for p in durable {
        let i = (((p.0 - lo) / width.max(1)) as usize).min(bins - 1);
        counts[i] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| Bin {
            start: lo + i as i64 * width,
            end: (lo + (i as i64 + 1) * width).min(hi.max(lo + width)),
            lost_writes: n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse;
    use crate::findings::Finding;

    #[test]
    fn the_window_and_its_bins_are_written_as_rfc3339_to_the_microsecond() {
        let text = r#"{"block":3,"offset":12288,"kind":"reverted","expected_generation":4,"found_generation":1,"found_time":"2026-11-25T14:00:00.000007Z","lost":[{"generation":2,"time":"2026-11-25T14:00:01.250000Z","durable":true,"session":1,"change":"write"},{"generation":4,"time":"2026-11-25T14:00:03.000001Z","durable":true,"session":1,"change":"write"}]}"#;
        let finding: Finding = serde_json::from_str(text).unwrap();
        let mapped = [MappedFinding {
            finding,
            files: Vec::new(),
        }];
        let points = lost_points(&mapped);
        let durable: Vec<&LostPoint> = points.iter().collect();
        let w = incident_window(&durable, &mapped).unwrap();
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"start":"2026-11-25T14:00:01.250000Z","end":"2026-11-25T14:00:03.000001Z","seconds":1.750001,"lost_durable_writes":2,"blocks":1,"newest_surviving":"2026-11-25T14:00:00.000007Z"}"#
        );
        let opts = Options {
            since: Some(parse("2026-11-25T14:00:00Z").unwrap()),
            ..Options::default()
        };
        let bins = histogram(&durable, &opts, 3);
        assert_eq!(
            serde_json::to_string(&bins[0]).unwrap(),
            r#"{"start":"2026-11-25T14:00:00.000000Z","end":"2026-11-25T14:00:01.000001Z","lost_writes":0}"#
        );
        assert_eq!(bins.iter().map(|b| b.lost_writes).sum::<usize>(), 2);
    }
}
