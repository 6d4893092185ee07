//! Running xfs_db on the copy-on-write view under the mapping's shared deadline, and reading
//! what it says: `blockuse -n` lines, the paths it gives, `bmap` extents (checked before they
//! become file offsets), and the btree roots the AG headers point to.

use super::geometry::be32;
use super::{XfsFs, MAX_INODES};
use crate::forensics::deadline::{run_with_deadline, Output};
use crate::forensics::owner::Owner;
use crate::forensics::view::FuseView;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Instant;

/// One line of `blockuse -n`: `block F (A/B) type T [inode I [path]]`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Use {
    pub(super) fsblock: u64,
    pub(super) kind: String,
    pub(super) ino: Option<u64>,
    pub(super) path: Option<String>,
}

pub(super) fn parse_use(line: &str) -> Option<Use> {
    let rest = line.strip_prefix("block ")?;
    let (num, rest) = rest.split_once(' ')?;
    let fsblock = num.parse().ok()?;
    let rest = rest.split_once(") type ")?.1;
    let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut ino = None;
    let mut path = None;
    if let Some(r) = rest.trim_start().strip_prefix("inode ") {
        let (i, p) = r.split_once(' ').unwrap_or((r, ""));
        ino = i.trim().parse().ok();
        path = Some(p.trim()).filter(|p| !p.is_empty()).map(normalize);
    }
    Some(Use {
        fsblock,
        kind: kind.trim().to_string(),
        ino,
        path,
    })
}

/// xfs_db's names are relative to the root, directories ending in "/.".
pub(super) fn normalize(p: &str) -> String {
    let p = p.trim_end_matches("/.").trim_start_matches('/');
    if p == "." || p.is_empty() {
        "/".into()
    } else {
        format!("/{p}")
    }
}

/// Data fork extents of `bmap`: `data offset O startblock S (A/B) count C flag F`, as
/// (file block, fsblock, count).
pub(super) fn parse_bmap(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() >= 8 && w[0] == "data" && w[1] == "offset" && w[3] == "startblock" {
                Some((w[2].parse().ok()?, w[4].parse().ok()?, w[7].parse().ok()?))
            } else {
                None
            }
        })
        .collect()
}

/// Splits a file's extents into those whose file and block ranges fit in 64 bits and the count
/// of the rest (a damaged extent map can hold starts up to 2^54).
pub(super) fn sound_extents(
    extents: Vec<(u64, u64, u64)>,
    block_size: u64,
) -> (Vec<(u64, u64, u64)>, usize) {
    let (sound, damaged): (Vec<_>, Vec<_>) = extents.into_iter().partition(|&(l, s, n)| {
        s.checked_add(n).is_some()
            && l.checked_add(n)
                .and_then(|end| end.checked_mul(block_size))
                .is_some()
    });
    (sound, damaged.len())
}

/// The byte offset within its file of fsblock `f`, from the file's extents.
pub(super) fn offset_in(extents: &[(u64, u64, u64)], f: u64, block_size: u64) -> Option<u64> {
    let &(l, s, _) = extents.iter().find(|&&(_, s, n)| f >= s && f - s < n)?;
    l.checked_add(f - s)?.checked_mul(block_size)
}

impl XfsFs {
    /// Runs xfs_db on `view` with `commands`, stopped at `end` (shared by one mapping's runs).
    pub(super) fn xfs_db(
        &self,
        view: &FuseView,
        commands: &[String],
        end: Instant,
    ) -> Result<Output, String> {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "xfs_db was not run again: the {} s allowed for mapping this XFS are used up",
                self.deadline.as_secs()
            ));
        }
        let mut input = commands.join("\n");
        input.push('\n');
        run_with_deadline(
            Command::new("xfs_db").arg("-r").arg("-f").arg(view.path()),
            input,
            left,
        )
        .map_err(|e| {
            if e.contains("cannot run") {
                format!("{e} (install xfsprogs)")
            } else {
                e
            }
        })
    }

    /// The btree roots AG `ag`'s headers (AGF and AGI, struct xfs_agf and xfs_agi) point to,
    /// as linear block and `blockuse` type.
    pub(super) fn roots(&self, view: &FuseView, ag: u64) -> Vec<(u64, &'static str)> {
        use std::os::unix::fs::FileExt;
        let g = &self.geo;
        let Ok(f) = std::fs::File::open(view.path()) else {
            return Vec::new();
        };
        let Some(start) = ag
            .checked_mul(g.ag_blocks)
            .and_then(|b| b.checked_mul(g.block_size))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut read = |at: u64, magic: &[u8], fields: &[(usize, &'static str)]| {
            let mut h = [0u8; 512];
            let ok = start
                .checked_add(at)
                .is_some_and(|at| f.read_exact_at(&mut h, at).is_ok());
            if ok && &h[..4] == magic {
                for &(off, kind) in fields {
                    let b = be32(&h, off);
                    if b != 0 && b < g.ag_blocks {
                        out.push((ag * g.ag_blocks + b, kind));
                    }
                }
            }
        };
        read(
            g.sector_size,
            b"XAGF",
            &[(16, "btbno"), (20, "btcnt"), (24, "btrmap"), (88, "btrefc")],
        );
        read(
            2 * g.sector_size,
            b"XAGI",
            &[(20, "btino"), (328, "btfino")],
        );
        out
    }

    /// Fills in the byte offset within its file of every data block, from each inode's
    /// extent map (`bmap`). A separator (the superblock's magic) tells the inodes' outputs apart.
    /// A block no sound extent holds keeps no offset: its file is named without a byte range.
    pub(super) fn file_offsets(
        &self,
        view: &FuseView,
        end: Instant,
        owners: &mut HashMap<u64, Owner>,
        inodes: BTreeSet<u64>,
        notes: &mut Vec<String>,
    ) {
        if inodes.is_empty() {
            return;
        }
        let inodes: Vec<u64> = inodes.into_iter().take(MAX_INODES).collect();
        let mut cmds = Vec::new();
        for i in &inodes {
            cmds.extend([
                "sb 0".to_string(),
                "print magicnum".into(),
                format!("inode {i}"),
                "bmap".into(),
            ]);
        }
        let out = match self.xfs_db(view, &cmds, end) {
            Ok(o) => o,
            Err(e) => {
                notes.push(format!("{}: XFS file offsets not known: {e}", self.region));
                return;
            }
        };
        let g = &self.geo;
        let mut maps: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
        let mut damaged = 0;
        let sections = out.stdout.split("magicnum = ").skip(1);
        for (i, text) in inodes.iter().zip(sections) {
            let (sound, bad) = sound_extents(parse_bmap(text), g.block_size);
            damaged += bad;
            maps.insert(*i, sound);
        }
        if damaged > 0 {
            notes.push(format!(
                "{}: {damaged} XFS file extents hold impossible offsets (their extent maps are damaged) and were skipped: blocks in them are named without their place in the file",
                self.region
            ));
        }
        let mut unplaced = 0;
        for (&b, o) in owners.iter_mut() {
            if let Owner::FileData {
                ino, file_offset, ..
            } = o
            {
                *file_offset = maps
                    .get(ino)
                    .and_then(|m| offset_in(m, g.fsblock(b), g.block_size));
                unplaced += usize::from(file_offset.is_none());
            }
        }
        if unplaced > 0 {
            notes.push(format!(
                "{}: the extent maps xfs_db gave do not place {unplaced} damaged XFS data blocks in their files: the files are named without a byte range",
                self.region
            ));
        }
    }
}

/// Data extents: (file block, fsblock, count).
pub(super) type Extents = Vec<(u64, u64, u64)>;

/// What `print core.size core.mode` and `bmap` said of one path: its size and data extents,
/// when it is a regular file.
pub(super) fn parse_file(text: &str) -> Option<(u64, Extents)> {
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.trim().strip_prefix('='))
            .map(|v| v.trim().to_string())
    };
    // A regular file's mode is octal 0100xxx.
    if !value("core.mode")?.starts_with("0100") {
        return None;
    }
    Some((value("core.size")?.parse().ok()?, parse_bmap(text)))
}

impl XfsFs {
    /// The contents of the regular files at `paths`: xfs_db finds each (`path`) and gives its
    /// size and extents in one run, and the blocks are read from the view. Missing files and
    /// files over `max` bytes are left out; a hole or an extent outside the filesystem reads
    /// as zeroes.
    pub fn read_files(
        &self,
        paths: &[String],
        max: u64,
    ) -> Result<HashMap<String, Vec<u8>>, String> {
        use std::os::unix::fs::FileExt;
        let wanted: Vec<&String> = paths
            .iter()
            .filter(|p| p.starts_with('/') && !p.contains(['\n', ' ']))
            .collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let view = self.view()?;
        let mut cmds = Vec::new();
        for p in &wanted {
            // The superblock's magic separates the paths' outputs; a path that is not found
            // leaves xfs_db on the superblock, which has no core.mode.
            cmds.extend([
                "sb 0".to_string(),
                "print magicnum".into(),
                format!("path {p}"),
                "print core.size core.mode".into(),
                "bmap".into(),
            ]);
        }
        let out = self.xfs_db(view, &cmds, Instant::now() + self.deadline)?;
        let file = std::fs::File::open(view.path())
            .map_err(|e| format!("opening the view of the XFS: {e}"))?;
        let g = &self.geo;
        let mut files = HashMap::new();
        for (p, text) in wanted
            .into_iter()
            .zip(out.stdout.split("magicnum = ").skip(1))
        {
            let Some((size, extents)) = parse_file(text) else {
                continue;
            };
            if size > max {
                continue;
            }
            let mut data = vec![0u8; size as usize];
            let (sound, _) = sound_extents(extents, g.block_size);
            for (l, s, n) in sound {
                for k in 0..n {
                    let Some(at) = l.checked_add(k).and_then(|b| b.checked_mul(g.block_size))
                    else {
                        break;
                    };
                    if at >= size {
                        break;
                    }
                    let Some(from) = s
                        .checked_add(k)
                        .and_then(|f| g.linear_checked(f))
                        .and_then(|b| b.checked_mul(g.block_size))
                    else {
                        continue;
                    };
                    let end = (at + g.block_size).min(size);
                    file.read_exact_at(&mut data[at as usize..end as usize], from)
                        .map_err(|e| format!("reading {p} from the view of the XFS: {e}"))?;
                }
            }
            files.insert(p.clone(), data);
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockuse_lines_parse() {
        assert_eq!(
            parse_use("block 32778 (1/10) type data inode 262274 app/my file"),
            Some(Use {
                fsblock: 32778,
                kind: "data".into(),
                ino: Some(262274),
                path: Some("/app/my file".into()),
            })
        );
        assert_eq!(
            parse_use("block 1 (0/1) type btbno"),
            Some(Use {
                fsblock: 1,
                kind: "btbno".into(),
                ino: None,
                path: None,
            })
        );
        assert_eq!(parse_use("block 0/10 expected type unknown got data"), None);
        assert_eq!(normalize("app/."), "/app");
        let file = "core.size = 10000\ncore.mode = 0100755\ndata offset 0 startblock 32778 (1/10) count 3 flag 0\n";
        assert_eq!(parse_file(file), Some((10000, vec![(0, 32778, 3)])));
        // A path not found leaves xfs_db on the superblock: no inode fields.
        assert_eq!(parse_file("field core not found\nno current inode\n"), None);
        assert_eq!(parse_file("core.size = 6\ncore.mode = 040755\n"), None);
        assert_eq!(normalize("."), "/");
        assert_eq!(
            parse_bmap("data offset 0 startblock 32792 (1/24) count 74 flag 0\n"),
            vec![(0, 32792, 74)]
        );
    }

    #[test]
    fn damaged_extents_are_skipped_and_counted() {
        let bmap = "data offset 0 startblock 32792 (1/24) count 74 flag 0\n\
                    data offset 18014398509481983 startblock 100 (0/100) count 10 flag 0\n\
                    data offset 74 startblock 18446744073709551610 (0/0) count 10 flag 0\n";
        let (sound, damaged) = sound_extents(parse_bmap(bmap), 4096);
        assert_eq!((sound.clone(), damaged), (vec![(0, 32792, 74)], 2));
        assert_eq!(offset_in(&sound, 32792 + 3, 4096), Some(3 * 4096));
        assert_eq!(offset_in(&sound, 32792 + 74, 4096), None);
        assert_eq!(offset_in(&sound, 105, 4096), None);
        // Unchecked, the damaged extent's offset would wrap.
        let raw = parse_bmap(bmap);
        assert_eq!(offset_in(&raw, 105, 4096), None);
        assert_eq!(offset_in(&sound, u64::MAX, 4096), None);
    }
}
