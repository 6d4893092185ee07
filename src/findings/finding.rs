//! What a finding is: one block that does not hold its latest generation, classified
//! ([`Finding`], built from a [`Verdict`]), and what found it ([`Source`]). Its serde form is
//! the `findings` entries of `verify --json` (docs/DESIGN.md, section 5, "Command line and
//! JSON") and the body of a `found` line of findings.jsonl; times are [`Micros`] in memory and
//! RFC 3339 text there.

use super::classify::{Kind, Verdict};
use crate::clock::{rfc3339, Micros};
use crate::ledger::history::Event;
use crate::ledger::record::Generation;
use crate::ledger::state::BlockState;
use serde::{Deserialize, Serialize};
use std::fmt::{self, Write as _};

/// What found a block stale, or verified it: written as these lower-case words in
/// findings.jsonl and the service's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A client's read (which the page cache may have served).
    Read,
    /// The read of a partial block merged into a write.
    ReadModifyWrite,
    /// The background scrubber (which reads the media).
    Scrub,
    /// A whole-device `lostwrite verify`.
    Verify,
}

impl Source {
    /// The word written for it: `read`, `read-modify-write`, `scrub`, `verify`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Read => "read",
            Source::ReadModifyWrite => "read-modify-write",
            Source::Scrub => "scrub",
            Source::Verify => "verify",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A lost generation as reported.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostWrite {
    /// Generation.
    pub generation: Generation,
    /// When it was written (RFC 3339 in JSON).
    #[serde(with = "crate::clock::as_rfc3339")]
    pub time: Micros,
    /// Whether it had been made durable.
    pub durable: bool,
    /// Session that wrote it.
    pub session: u64,
    /// write, zero, trim or failed.
    #[serde(default)]
    pub change: String,
}

/// Where misdirected contents belong.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BelongsTo {
    /// The block whose contents these are.
    pub block: u64,
    /// Its generation.
    pub generation: Generation,
}

/// One finding.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Finding {
    /// Block number (in the ledger's block size).
    pub block: u64,
    /// Byte offset on the device.
    pub offset: u64,
    /// Kind.
    pub kind: Kind,
    /// The generation the block should hold.
    pub expected_generation: Generation,
    /// When that generation was written.
    #[serde(
        default,
        with = "crate::clock::as_rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_time: Option<Micros>,
    /// The older generation found (reverted, unflushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_generation: Option<Generation>,
    /// When the found generation was written.
    #[serde(
        default,
        with = "crate::clock::as_rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub found_time: Option<Micros>,
    /// Generations lost, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostWrite>,
    /// Misdirected: whose contents these are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub belongs_to: Option<BelongsTo>,
    /// Explanation, when the kind alone does not say enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Finding {
    /// Builds a finding from a verdict.
    pub fn new(
        block: u64,
        offset: u64,
        expected: BlockState,
        latest: Option<&Event>,
        v: Verdict,
    ) -> Finding {
        Finding {
            block,
            offset,
            kind: v.kind,
            expected_generation: expected.generation(),
            expected_time: latest.map(|e| e.time),
            found_generation: v.found_generation,
            found_time: v.found_time,
            lost: v
                .lost
                .iter()
                .map(|l| LostWrite {
                    generation: l.generation,
                    time: l.time,
                    durable: l.durable,
                    session: l.session,
                    change: l.change.to_string(),
                })
                .collect(),
            belongs_to: v
                .belongs_to
                .map(|(block, generation)| BelongsTo { block, generation }),
            note: v.note,
        }
    }

    /// One line of detail for the human table.
    pub fn detail(&self) -> String {
        let mut s = String::new();
        match self.kind {
            Kind::Reverted | Kind::Unflushed => {
                match self.found_generation {
                    Some(g) => write!(
                        s,
                        "holds gen {g}, expected gen {}",
                        self.expected_generation
                    ),
                    None => write!(s, "expected gen {}", self.expected_generation),
                }
                .ok();
                let lost: Vec<String> = self
                    .lost
                    .iter()
                    .map(|l| {
                        format!(
                            "gen {} {}{}",
                            l.generation,
                            rfc3339(l.time),
                            if l.durable { " durable" } else { " unflushed" }
                        )
                    })
                    .collect();
                if !lost.is_empty() {
                    let shown = lost.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
                    write!(s, "; lost {shown}").ok();
                    if lost.len() > 3 {
                        write!(s, " and {} more", lost.len() - 3).ok();
                    }
                }
            }
            Kind::Misdirected => {
                if let Some(b) = &self.belongs_to {
                    write!(
                        s,
                        "holds block {} gen {}; expected gen {}",
                        b.block, b.generation, self.expected_generation
                    )
                    .ok();
                }
            }
            Kind::Zeroed | Kind::Corrupt | Kind::Uncertain => {
                write!(s, "expected gen {}", self.expected_generation).ok();
                if let Some(t) = self.expected_time {
                    write!(s, " ({})", rfc3339(t)).ok();
                }
            }
        }
        if let Some(n) = &self.note {
            write!(s, "; {n}").ok();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_written_as_the_words_of_the_log() {
        for (s, word) in [
            (Source::Read, "read"),
            (Source::ReadModifyWrite, "read-modify-write"),
            (Source::Scrub, "scrub"),
            (Source::Verify, "verify"),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{word}\""));
            assert_eq!((s.name(), s.to_string()), (word, word.to_string()));
            assert_eq!(
                serde_json::from_str::<Source>(&format!("\"{word}\"")).unwrap(),
                s
            );
        }
        assert!(serde_json::from_str::<Source>("\"fsck\"").is_err());
    }

    #[test]
    fn a_finding_reads_back_as_the_same_bytes() {
        let text = r#"{"block":12,"offset":49152,"kind":"reverted","expected_generation":3,"expected_time":"2026-11-25T14:03:11.123456Z","found_generation":1,"found_time":"2026-11-25T14:01:00.000001Z","lost":[{"generation":2,"time":"2026-11-25T14:02:00.500000Z","durable":true,"session":4,"change":"write"},{"generation":3,"time":"2026-11-25T14:03:11.123456Z","durable":false,"session":4,"change":"write"}]}"#;
        let f: Finding = serde_json::from_str(text).unwrap();
        assert_eq!(f.found_time.map(|t| t % 1_000_000), Some(1));
        assert_eq!(serde_json::to_string(&f).unwrap(), text);
        assert_eq!(
            f.detail(),
            "holds gen 1, expected gen 3; lost gen 2 2026-11-25T14:02:00.500000Z durable, gen 3 2026-11-25T14:03:11.123456Z unflushed"
        );
    }
}
