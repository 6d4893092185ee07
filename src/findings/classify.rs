//! Classifying one mismatched block: a pure function of what the block holds now, its recorded
//! history, what other blocks were written with the same contents, and whether a crash could
//! have left an unrecorded write on it. The rules are the table of docs/DESIGN.md (section 4,
//! "Classification contract"); docs/VERIFY.md explains each decision with an example.

use crate::clock::Micros;
use crate::ledger::history::{Change, Event};
use crate::ledger::record::{Generation, Lsn};
use serde::{Deserialize, Serialize};

/// The kinds of finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Older contents of the same block, after a later generation had been made durable.
    Reverted,
    /// Older contents, but every later generation was unflushed in a crashed session.
    Unflushed,
    /// Contents of a different block.
    Misdirected,
    /// All zeroes where no recorded generation was zeroes.
    Zeroed,
    /// Unknown contents that an unrecorded write from a crashed session could explain.
    Uncertain,
    /// Contents that match nothing recorded.
    Corrupt,
}

impl Kind {
    /// Whether this kind fails verification (`unflushed` and `uncertain` only with `--strict`).
    pub fn fails(self, strict: bool) -> bool {
        match self {
            Kind::Reverted | Kind::Misdirected | Kind::Zeroed | Kind::Corrupt => true,
            Kind::Unflushed | Kind::Uncertain => strict,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Reverted => "reverted",
            Kind::Unflushed => "unflushed",
            Kind::Misdirected => "misdirected",
            Kind::Zeroed => "zeroed",
            Kind::Uncertain => "uncertain",
            Kind::Corrupt => "corrupt",
        }
    }

    /// Every kind, in report order.
    pub const ALL: [Kind; 6] = [
        Kind::Reverted,
        Kind::Unflushed,
        Kind::Misdirected,
        Kind::Zeroed,
        Kind::Uncertain,
        Kind::Corrupt,
    ];
}

/// What the scan found in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// CRC-32 of the block's contents.
    pub crc: u32,
    /// Every byte is zero.
    pub zero: bool,
}

impl Found {
    /// What a block with checksum `crc` and contents `data` holds (`zero_crc`: the checksum
    /// of an all-zero block, so the byte check runs only when it can matter).
    pub fn of(crc: u32, data: &[u8], zero_crc: u32) -> Found {
        Found {
            crc,
            zero: crc == zero_crc && crate::block::is_zero(data),
        }
    }
}

/// A generation the device no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Its generation.
    pub generation: Generation,
    /// When it was written (µs since the epoch).
    #[serde(skip)]
    pub time: Micros,
    /// Whether it had been made durable.
    pub durable: bool,
    /// Session that wrote it.
    pub session: u64,
    /// Journal LSN of its record.
    pub lsn: Lsn,
    /// write, zero, trim or failed.
    #[serde(skip)]
    pub change: &'static str,
}

/// The verdict on one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Kind of finding.
    pub kind: Kind,
    /// The older generation found (reverted/unflushed); `None` for contents from a time the
    /// block was untracked or unknown.
    pub found_generation: Option<Generation>,
    /// When the found generation was written.
    pub found_time: Option<Micros>,
    /// Generations lost, oldest first (reverted/unflushed).
    pub lost: Vec<Lost>,
    /// For misdirected: the block and generation whose contents these are.
    pub belongs_to: Option<(u64, Generation)>,
    /// A sentence for the operator when the kind alone does not say enough.
    pub note: Option<String>,
}

fn lost_from(events: &[Event]) -> Vec<Lost> {
    events
        .iter()
        .map(|e| Lost {
            generation: e.generation,
            time: e.time,
            durable: e.durable,
            session: e.session,
            lsn: e.lsn,
            change: e.change.name(),
        })
        .collect()
}

/// Classifies a block whose contents (`found`) differ from its latest generation (the last of
/// `events`, which holds the block's history in LSN order).
///
/// - `other`: the latest recorded generation of a *different* block with the found checksum;
/// - `crash_could_explain`: a crashed session without strict journal sync ended after the
///   block's last durable generation, so an unrecorded write may be what the block holds.
pub fn classify(
    events: &[Event],
    found: Found,
    zero_crc: u32,
    other: Option<&Event>,
    crash_could_explain: bool,
) -> Verdict {
    // Contents that match no older generation of the block lost (at least) its latest one.
    let latest = lost_from(&events[events.len().saturating_sub(1)..]);
    let verdict = |kind| Verdict {
        kind,
        found_generation: None,
        found_time: None,
        lost: if kind == Kind::Uncertain {
            Vec::new()
        } else {
            latest.clone()
        },
        belongs_to: None,
        note: None,
    };
    // Walk back from the newest generation looking for the contents found.
    let mut durable_after = false;
    for i in (0..events.len()).rev() {
        let e = &events[i];
        let later = &events[i + 1..];
        if i + 1 < events.len() {
            match e.crc(zero_crc) {
                Some(c) if c == found.crc && durable_after && found.zero && crash_could_explain => {
                    // Zeroes are what an unflushed zeroing writes too, and its record may have
                    // been lost with the crashed session's journal tail: not provably a revert.
                    return Verdict {
                        kind: Kind::Uncertain,
                        found_generation: Some(e.generation),
                        found_time: Some(e.time),
                        lost: Vec::new(),
                        belongs_to: None,
                        note: Some(format!(
                            "all zeroes, as generation {} was: a lost update, or a zeroing whose journal record was lost in a crash",
                            e.generation
                        )),
                    };
                }
                Some(c) if c == found.crc => {
                    return Verdict {
                        kind: if durable_after {
                            Kind::Reverted
                        } else {
                            Kind::Unflushed
                        },
                        found_generation: Some(e.generation),
                        found_time: Some(e.time),
                        lost: lost_from(later),
                        belongs_to: None,
                        note: None,
                    };
                }
                None if !durable_after => {
                    // After a trim or a failed write the block's contents were undefined; losing
                    // only unflushed writes since then may leave anything there.
                    return Verdict {
                        kind: Kind::Unflushed,
                        found_generation: None,
                        found_time: None,
                        lost: lost_from(later),
                        belongs_to: None,
                        note: Some(format!(
                            "holds contents from after generation {} ({}), when they were undefined",
                            e.generation,
                            e.change.name()
                        )),
                    };
                }
                _ => {}
            }
        }
        durable_after |= e.durable;
    }
    let untracked_before = !matches!(
        events.first().map(|e| e.change),
        Some(Change::Baseline { .. })
    );
    if untracked_before && !durable_after && !events.is_empty() {
        return Verdict {
            kind: Kind::Unflushed,
            found_generation: None,
            found_time: None,
            lost: lost_from(events),
            belongs_to: None,
            note: Some(
                "holds contents from before its first recorded write (untracked then)".into(),
            ),
        };
    }
    if crash_could_explain {
        let mut v = verdict(Kind::Uncertain);
        v.note = Some(match (found.zero, other) {
            (true, _) => "all zeroes; a write lost from the journal tail of a crashed session may explain it".into(),
            (false, Some(o)) => format!(
                "equals block {} generation {}; a write lost from the journal tail of a crashed session may explain it",
                o.block, o.generation
            ),
            (false, None) => "a write lost from the journal tail of a crashed session may explain it".into(),
        });
        return v;
    }
    if found.zero {
        return verdict(Kind::Zeroed);
    }
    if let Some(o) = other {
        let mut v = verdict(Kind::Misdirected);
        v.belongs_to = Some((o.block, o.generation));
        return v;
    }
    if events.last().is_some_and(|e| !e.durable) {
        // The newest generation was never made durable and its session crashed: a power cut
        // may have torn that write (sector by sector), leaving a mix of old and new contents.
        // Losing it is allowed; the older, durable generations were not what the device lost.
        let n = events.iter().rev().take_while(|e| !e.durable).count();
        return Verdict {
            kind: Kind::Unflushed,
            found_generation: None,
            found_time: None,
            lost: lost_from(&events[events.len() - n..]),
            belongs_to: None,
            note: Some(
                "contents match no generation: an unflushed write may have been torn by the crash"
                    .into(),
            ),
        };
    }
    verdict(Kind::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: u32 = 0xabcd;

    fn ev(lsn: u64, generation: u32, change: Change, durable: bool) -> Event {
        Event {
            lsn,
            time: lsn as i64 * 1000,
            session: 1,
            block: 5,
            generation,
            change,
            durable,
        }
    }

    fn w(crc: u32) -> Change {
        Change::Write { crc }
    }

    const NOT_ZERO: bool = false;

    fn found(crc: u32) -> Found {
        Found {
            crc,
            zero: NOT_ZERO,
        }
    }

    #[test]
    fn reverted_names_found_and_lost_generations() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), true),
            ev(3, 2, w(12), true),
            ev(4, 3, w(13), false),
        ];
        let v = classify(&h, found(11), Z, None, false);
        assert_eq!(v.kind, Kind::Reverted);
        assert_eq!(v.found_generation, Some(1));
        assert_eq!(
            v.lost
                .iter()
                .map(|l| (l.generation, l.durable))
                .collect::<Vec<_>>(),
            vec![(2, true), (3, false)]
        );
    }

    #[test]
    fn only_unflushed_losses_are_allowed() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), false),
            ev(3, 2, w(12), false),
        ];
        let v = classify(&h, found(10), Z, None, false);
        assert_eq!(v.kind, Kind::Unflushed);
        assert_eq!(v.found_generation, Some(0));
        assert_eq!(v.lost.len(), 2);
    }

    #[test]
    fn latest_matching_generation_wins() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), true),
            ev(3, 2, w(10), true),
            ev(4, 3, w(12), true),
        ];
        let v = classify(&h, found(10), Z, None, false);
        assert_eq!(v.found_generation, Some(2));
        assert_eq!(v.lost.len(), 1);
    }

    #[test]
    fn zeroed_misdirected_corrupt() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), true),
        ];
        let zero = Found { crc: Z, zero: true };
        assert_eq!(classify(&h, zero, Z, None, false).kind, Kind::Zeroed);
        let other = Event {
            block: 9,
            ..ev(7, 4, w(99), true)
        };
        let v = classify(&h, found(99), Z, Some(&other), false);
        assert_eq!(v.kind, Kind::Misdirected);
        assert_eq!(v.belongs_to, Some((9, 4)));
        assert_eq!(classify(&h, found(98), Z, None, false).kind, Kind::Corrupt);
    }

    #[test]
    fn a_zero_generation_makes_zeroes_a_revert_not_zeroed() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, Change::Zero, true),
            ev(3, 2, w(12), true),
        ];
        let v = classify(&h, Found { crc: Z, zero: true }, Z, None, false);
        assert_eq!((v.kind, v.found_generation), (Kind::Reverted, Some(1)));
    }

    #[test]
    fn crash_makes_unknown_contents_uncertain() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), true),
        ];
        assert_eq!(classify(&h, found(77), Z, None, true).kind, Kind::Uncertain);
        let zero = Found { crc: Z, zero: true };
        assert_eq!(classify(&h, zero, Z, None, true).kind, Kind::Uncertain);
    }

    #[test]
    fn a_torn_unflushed_write_is_allowed_but_damage_to_durable_data_is_not() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), false),
        ];
        let v = classify(&h, found(77), Z, None, false);
        assert_eq!((v.kind, v.lost.len()), (Kind::Unflushed, 1));
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), true),
        ];
        assert_eq!(classify(&h, found(77), Z, None, false).kind, Kind::Corrupt);
        let zero = Found { crc: Z, zero: true };
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, w(11), false),
        ];
        assert_eq!(classify(&h, zero, Z, None, false).kind, Kind::Zeroed);
    }

    #[test]
    fn zeroes_matching_an_old_generation_after_a_lossy_crash_are_uncertain() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, Change::Zero, true),
            ev(3, 2, w(12), true),
        ];
        let zero = Found { crc: Z, zero: true };
        assert_eq!(classify(&h, zero, Z, None, true).kind, Kind::Uncertain);
        assert_eq!(classify(&h, zero, Z, None, false).kind, Kind::Reverted);
        // Non-zero old contents stay a revert even then.
        assert_eq!(classify(&h, found(10), Z, None, true).kind, Kind::Reverted);
    }

    #[test]
    fn untracked_before_first_unflushed_write() {
        let h = [ev(2, 1, w(11), false)];
        let v = classify(&h, found(5), Z, None, false);
        assert_eq!((v.kind, v.found_generation), (Kind::Unflushed, None));
        let h = [ev(2, 1, w(11), true)];
        assert_eq!(classify(&h, found(5), Z, None, false).kind, Kind::Corrupt);
    }

    #[test]
    fn trim_epoch_allows_unflushed_loss_only() {
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, Change::Trim, true),
            ev(3, 2, w(12), false),
        ];
        let v = classify(&h, found(55), Z, None, false);
        assert_eq!((v.kind, v.found_generation), (Kind::Unflushed, None));
        let h = [
            ev(1, 0, Change::Baseline { crc: 10 }, true),
            ev(2, 1, Change::Trim, true),
            ev(3, 2, w(12), true),
        ];
        assert_eq!(classify(&h, found(55), Z, None, false).kind, Kind::Corrupt);
        assert_eq!(classify(&h, found(10), Z, None, false).kind, Kind::Reverted);
    }
}
