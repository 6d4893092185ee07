//! The affected list of a report: the mapped findings summed per file, directory or
//! structure ([`summarize`]), with the range of times each reads now and lost, and the one
//! judgement made across findings ([`suspect_free`]): a block the current metadata calls free is
//! not harmless when metadata that could have listed it also has a finding. The mapping itself
//! (what owns each block) is [`owners`](super::owners)'.

use super::owners::{FileRef, MappedFinding};
use super::symptom::{maybe_data_of, old_contents};
use crate::clock::{rfc3339, Micros};
use crate::findings::classify::Kind;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// One affected file, directory or structure, summed over its findings.
#[derive(Clone, Debug, Serialize)]
pub struct Affected {
    /// Region.
    pub region: String,
    /// Owner kind (as in [`FileRef`]).
    pub owner: &'static str,
    /// Path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Damaged blocks.
    pub blocks: usize,
    /// Byte ranges within the file, merged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bytes: Vec<(u64, u64)>,
    /// Finding kinds.
    pub kinds: Vec<Kind>,
    /// The symptom.
    pub symptom: String,
    /// Earliest and latest lost write on these blocks (RFC 3339 in JSON).
    #[serde(serialize_with = "pair_text", skip_serializing_if = "Option::is_none")]
    pub lost_between: Option<(Micros, Micros)>,
    /// Earliest and latest time the contents these blocks read now were written (their found
    /// generations, for reverted and unflushed blocks; RFC 3339 in JSON).
    #[serde(serialize_with = "pair_text", skip_serializing_if = "Option::is_none")]
    pub contents_written: Option<(Micros, Micros)>,
    /// As [`FileRef::maybe_data_of`], for free space that may be data of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maybe_data_of: Vec<String>,
    /// As [`FileRef::free_proven`]: free at every generation the ledger saw, hence harmless.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub free_proven: bool,
    /// Every damaged ledger block of this owner also held other owners' data: its own part
    /// may be intact.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub maybe_intact: bool,
}

impl Affected {
    /// How the human reports name it: a file's path, a directory with its slash, an extent
    /// tree or unmapped logical volume with what it is, else the owner kind.
    pub fn what(&self) -> String {
        match (self.owner, &self.path) {
            ("file", Some(p)) => p.clone(),
            ("directory", Some(p)) => format!("{p}/ (directory)"),
            ("block-map", Some(p)) => format!("{p} (extent tree)"),
            ("lvm-volume", Some(p)) => format!("{p} (logical volume, not mapped to files)"),
            (owner, _) => owner.to_string(),
        }
    }
}

/// A pair of times as the RFC 3339 texts it is printed as.
fn pair_text<S: Serializer>(
    v: &Option<(Micros, Micros)>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    v.map(|(a, z)| (rfc3339(a), rfc3339(z))).serialize(s)
}

/// What a metadata owner with a finding is, as named in a free block's
/// [`FileRef::maybe_data_of`], if it is metadata that lists where data lives: an extent tree,
/// an inode table block or XFS inode chunk, a directory, or LVM2 metadata.
fn metadata_suspect(r: &FileRef) -> Option<String> {
    let path = r.path.as_deref().unwrap_or("a file with no name found");
    // Inode table blocks carry their inode range and paths in the symptom's opening words.
    let inodes = || r.symptom.split(": ").next().unwrap_or("").to_string();
    Some(match r.owner {
        "block-map" => format!("the extent tree of {path}"),
        "directory" => format!("directory {path}"),
        "inode-table" => format!("the inode table block of {}", inodes()),
        "inode-chunk" => format!("the inode chunk of {}", inodes()),
        "lvm-metadata" => "the LVM2 label or metadata".into(),
        _ => return None,
    })
}

/// Free blocks are harmless only if nothing suggests they were in use: the current metadata
/// may itself be an old copy. A finding on a block the current metadata calls free, in a
/// region where metadata that could have listed it (an extent tree, inode table, directory; LVM2
/// metadata for free extents) also has a finding, is named as possibly data of what that
/// metadata describes.
pub(super) fn suspect_free(mapped: &mut [MappedFinding]) {
    // Per region: (suspect, is LVM2 metadata, reverted).
    let mut by_region: BTreeMap<String, Vec<(String, bool, bool)>> = BTreeMap::new();
    for f in mapped.iter() {
        for r in &f.files {
            if let Some(what) = metadata_suspect(r) {
                let list = by_region.entry(r.region.clone()).or_default();
                let reverted = matches!(f.finding.kind, Kind::Reverted | Kind::Unflushed);
                match list.iter_mut().find(|s| s.0 == what) {
                    Some(s) => s.2 &= reverted,
                    None => list.push((what, r.owner == "lvm-metadata", reverted)),
                }
            }
        }
    }
    for f in mapped.iter_mut() {
        for r in &mut f.files {
            let lvm = match r.owner {
                // Proven free throughout: no older metadata can have listed it.
                _ if r.free_proven => continue,
                "free" => false,
                "lvm-free" => true,
                _ => continue,
            };
            let Some(list) = by_region.get(&r.region) else {
                continue;
            };
            let hits: Vec<&(String, bool, bool)> = list.iter().filter(|s| s.1 == lvm).collect();
            if hits.is_empty() {
                continue;
            }
            r.maybe_data_of = hits.iter().map(|s| s.0.clone()).collect();
            r.symptom = maybe_data_of(r.owner, &r.maybe_data_of, hits.iter().all(|s| s.2));
        }
    }
}

/// Sums the mapped findings per affected file or structure.
pub(super) fn summarize(findings: &[MappedFinding]) -> Vec<Affected> {
    // Each owner's sums, with the found time its symptom was first worded with.
    type Key = (String, &'static str, Option<String>, String);
    let mut by: BTreeMap<Key, (Affected, Option<Micros>)> = BTreeMap::new();
    for f in findings {
        let times: Vec<Micros> = f.finding.lost.iter().map(|l| l.time).collect();
        let found = f
            .finding
            .found_time
            .filter(|_| matches!(f.finding.kind, Kind::Reverted | Kind::Unflushed));
        for r in &f.files {
            // Group one file's blocks together whatever their individual symptoms say.
            let group_key = match r.owner {
                "file" | "directory" | "block-map" => String::new(),
                _ => r.symptom.clone(),
            };
            let (a, _) = by
                .entry((r.region.clone(), r.owner, r.path.clone(), group_key))
                .or_insert_with(|| {
                    let a = Affected {
                        region: r.region.clone(),
                        owner: r.owner,
                        path: r.path.clone(),
                        blocks: 0,
                        bytes: Vec::new(),
                        kinds: Vec::new(),
                        symptom: r.symptom.clone(),
                        lost_between: None,
                        contents_written: None,
                        maybe_data_of: r.maybe_data_of.clone(),
                        free_proven: r.free_proven,
                        maybe_intact: true,
                    };
                    (a, found)
                });
            a.maybe_intact &= r.shared;
            a.blocks += 1;
            if let Some(b) = r.bytes {
                a.bytes.push(b);
            }
            if !a.kinds.contains(&f.finding.kind) {
                a.kinds.push(f.finding.kind);
            }
            if let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) {
                let (l0, h0) = a.lost_between.unwrap_or((lo, hi));
                a.lost_between = Some((l0.min(lo), h0.max(hi)));
            }
            if let Some(t) = found {
                let (l0, h0) = a.contents_written.unwrap_or((t, t));
                a.contents_written = Some((l0.min(t), h0.max(t)));
            }
        }
    }
    let mut out: Vec<Affected> = by
        .into_values()
        .map(|(mut a, first)| {
            // A file's symptom was worded with its first block's time: give the whole range.
            if a.owner == "file" && first.is_some() && a.contents_written.is_some() {
                let one = old_contents(first.map(|t| (t, t)));
                a.symptom = a.symptom.replace(&one, &old_contents(a.contents_written));
            }
            a
        })
        .collect();
    for a in &mut out {
        a.bytes.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &a.bytes {
            match merged.last_mut() {
                Some(m) if s <= m.1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        a.bytes = merged;
    }
    // Files and directories first: they are what people ask about; then free space that may
    // be their data; free space last, what is proven harmless at the very end.
    out.sort_by_key(|a| {
        (
            !matches!(a.owner, "file" | "directory" | "block-map"),
            a.maybe_data_of.is_empty(),
            a.owner == "free",
            a.free_proven,
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reverted finding on `block`, its contents written at second `found`, lost at `lost`.
    fn reverted(block: u64, found: u64, lost: u64, files: Vec<FileRef>) -> MappedFinding {
        let text = format!(
            r#"{{"block":{block},"offset":{},"kind":"reverted","expected_generation":2,"found_generation":1,"found_time":"2026-11-25T14:00:{found:02}Z","lost":[{{"generation":2,"time":"2026-11-25T14:00:{lost:02}Z","durable":true,"session":1,"change":"write"}}]}}"#,
            block * 4096
        );
        MappedFinding {
            finding: serde_json::from_str(&text).unwrap(),
            files,
        }
    }

    fn owned(region: &str, owner: &'static str, path: Option<&str>, symptom: &str) -> FileRef {
        FileRef {
            region: region.into(),
            owner,
            path: path.map(str::to_string),
            bytes: None,
            symptom: symptom.into(),
            shared: false,
            maybe_data_of: Vec::new(),
            free_proven: false,
        }
    }

    #[test]
    fn free_blocks_beside_reverted_metadata_are_suspects_and_files_get_time_ranges() {
        let harmless = "free now; not proven harmless";
        let mut mapped = vec![
            reverted(1, 0, 40, vec![owned("p1", "block-map", Some("/db"), "x")]),
            reverted(2, 0, 40, vec![owned("p1", "free", None, harmless)]),
            // Another region's free block: its filesystem's metadata is intact.
            reverted(3, 0, 40, vec![owned("p2", "free", None, harmless)]),
            reverted(4, 1, 40, vec![owned("p2", "file", Some("/a"), "/a: at 01")]),
            reverted(
                5,
                37,
                41,
                vec![owned("p2", "file", Some("/a"), "/a: at 37")],
            ),
        ];
        for f in mapped.iter_mut().skip(3) {
            let t = f.finding.found_time;
            f.files[0].symptom = format!(
                "/a: this part of the file {}",
                old_contents(t.map(|t| (t, t)))
            );
        }
        suspect_free(&mut mapped);
        assert_eq!(mapped[1].files[0].maybe_data_of, ["the extent tree of /db"]);
        assert!(mapped[1].files[0].symptom.starts_with(
            "free by the current, possibly reverted, metadata; the extent tree of /db also reverted in the window"
        ));
        assert!(mapped[2].files[0].maybe_data_of.is_empty());
        assert_eq!(mapped[2].files[0].symptom, harmless);

        let a = summarize(&mapped);
        let file = a.iter().find(|a| a.owner == "file").unwrap();
        let t = |s: &str| crate::clock::parse(s).unwrap();
        assert_eq!(
            file.contents_written,
            Some((t("2026-11-25T14:00:01Z"), t("2026-11-25T14:00:37Z")))
        );
        assert_eq!(
            file.lost_between,
            Some((t("2026-11-25T14:00:40Z"), t("2026-11-25T14:00:41Z")))
        );
        assert!(file.symptom.contains(
            "reads OLD contents (as written between 2026-11-25T14:00:01.000000Z and 2026-11-25T14:00:37.000000Z)"
        ), "{}", file.symptom);
        // Suspect free space right after the files; harmless free space last.
        let order: Vec<(&str, bool)> = a
            .iter()
            .map(|a| (a.owner, a.maybe_data_of.is_empty()))
            .collect();
        assert_eq!(
            order,
            [
                ("block-map", true),
                ("file", true),
                ("free", false),
                ("free", true)
            ]
        );
    }
}
