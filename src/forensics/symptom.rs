//! The words for a damaged block's owner: its short kind (`file`, `inode-table`, ...), the
//! symptom its users will see after a given kind of finding, and what the block is when there
//! is no finding (for `history --files`).

use super::owner::Owner;
use crate::clock::{rfc3339, Micros};
use crate::findings::classify::Kind;

/// The owner kind named in [`FileRef::owner`](super::FileRef::owner).
pub(super) fn owner_name(o: &Owner) -> &'static str {
    match o {
        Owner::FileData { .. } => "file",
        Owner::Directory { .. } => "directory",
        Owner::BlockMap { .. } => "block-map",
        Owner::Journal => "journal",
        Owner::InodeTable { .. } => "inode-table",
        Owner::BlockBitmap { .. } | Owner::InodeBitmap { .. } => "bitmap",
        Owner::Superblock { .. } => "superblock",
        Owner::Descriptors { .. } => "descriptors",
        Owner::ReservedGdt | Owner::Special { .. } => "reserved",
        Owner::Free => "free",
        Owner::Structure { owner, .. } => owner,
    }
}

/// The symptom a user sees when a block of this owner is damaged this way (`kind` None: what
/// the block is, for `history --files`).
pub(super) fn symptom(o: &Owner, kind: Option<Kind>, found_time: Option<Micros>) -> String {
    if kind.is_none() {
        return describe(o);
    }
    let contents = match (kind, found_time) {
        (None, _) => "holds this part of the file".into(),
        (Some(Kind::Reverted | Kind::Unflushed), t) => old_contents(t.map(|t| (t, t))),
        (Some(Kind::Zeroed), _) => "reads zeroes".into(),
        (Some(Kind::Misdirected), _) => {
            "holds another block's contents (random to its reader)".into()
        }
        _ => "holds contents nobody wrote".into(),
    };
    let name = |p: &Option<String>, ino: u64| {
        p.clone()
            .unwrap_or_else(|| format!("inode {ino} (no name found)"))
    };
    match o {
        Owner::FileData { path, ino, .. } => format!("{}: this part of the file {contents}", name(path, *ino)),
        Owner::Directory { path, ino } => format!(
            "{}: entries added or removed here may be lost (files created in the window may have disappeared, deleted ones may be back)",
            name(path, *ino)
        ),
        Owner::BlockMap { path, ino } => format!(
            "{}: an update of the file's block map (extent tree) was lost: parts of it may read random contents (blocks that now belong to other files) or it may look shorter",
            name(path, *ino)
        ),
        Owner::InodeTable { inodes, paths, .. } => {
            let shown: Vec<&str> = paths.iter().take(6).map(|s| s.as_str()).collect();
            format!(
                "inodes {}-{}{}: size, times, permissions or the block map root of these files may be old: wrong size, random contents, or a vanished file",
                inodes.0,
                inodes.1,
                if shown.is_empty() {
                    String::new()
                } else {
                    format!(" ({}{})", shown.join(", "), if paths.len() > 6 { ", ..." } else { "" })
                }
            )
        }
        Owner::BlockBitmap { group } => format!(
            "block allocation bitmap of group {group}: space in use may be marked free and later overwritten (e2fsck -f repairs the bitmap)"
        ),
        Owner::InodeBitmap { group } => format!(
            "inode allocation bitmap of group {group}: inodes in use may be handed out again (e2fsck -f repairs it)"
        ),
        Owner::Superblock { group } => format!("superblock copy in group {group}: e2fsck can restore it from a backup"),
        Owner::Descriptors { group } => format!(
            "group descriptor table copy in group {group}: e2fsck can restore it from a backup"
        ),
        Owner::Journal => "the ext4 journal: harmless after a clean unmount; if transactions were waiting to be replayed, those metadata updates are lost".into(),
        Owner::ReservedGdt | Owner::Special { .. } => "space the filesystem reserves for itself: harmless".into(),
        Owner::Structure { symptom, .. } => symptom.clone(),
        Owner::Free => FREE_NOW.into(),
    }
}

/// The symptom of a block the current metadata calls free, when nothing proves it free at every
/// generation the ledger saw and no metadata that could list it has a finding.
pub(super) const FREE_NOW: &str = "free now; not proven harmless: lostwrite keeps no older metadata, so whether a file owned this block at an older generation cannot be read back; nothing that could list it (an inode table, extent tree or directory block) has a finding, so a file that owned it was most likely deleted or truncated by a write that was not lost (low risk)";

/// The words for reverted contents written between the two times (one time when they are the
/// same; none when the ledger holds no record of the contents found).
pub(super) fn old_contents(written: Option<(Micros, Micros)>) -> String {
    match written {
        Some((a, z)) if a == z => format!("reads OLD contents (as written at {})", rfc3339(a)),
        Some((a, z)) => format!(
            "reads OLD contents (as written between {} and {})",
            rfc3339(a),
            rfc3339(z)
        ),
        None => "reads OLD contents".into(),
    }
}

/// The symptom of a block the current metadata calls free (`owner` "free" or "lvm-free") while
/// metadata that could have listed it (`suspects`: what it is, and whose) also has a finding in
/// the same region: that metadata may be the reverted copy that lost the block, so the block may
/// be data of those files (or of a logical volume).
pub(super) fn maybe_data_of(owner: &str, suspects: &[String], reverted: bool) -> String {
    let shown: Vec<&str> = suspects.iter().take(6).map(|s| s.as_str()).collect();
    let list = format!(
        "{}{}",
        shown.join("; "),
        if suspects.len() > 6 { "; ..." } else { "" }
    );
    let how = if reverted { "reverted" } else { "damaged" };
    if owner == "lvm-free" {
        format!(
            "free by the current, possibly reverted, LVM metadata; {list} also {how} in the window, so this may be data of a logical volume created or extended in the window: not harmless until that is ruled out"
        )
    } else {
        format!(
            "free by the current, possibly reverted, metadata; {list} also {how} in the window, so this may be data of those files (the old metadata no longer lists it): not harmless until that is ruled out"
        )
    }
}

/// What a block is, without a finding (for `history --files`).
pub(super) fn describe(o: &Owner) -> String {
    let name = |p: &Option<String>, ino: u64| p.clone().unwrap_or_else(|| format!("inode {ino}"));
    match o {
        Owner::FileData { path, ino, .. } => format!("data of {}", name(path, *ino)),
        Owner::Directory { path, ino } => format!("entries of directory {}", name(path, *ino)),
        Owner::BlockMap { path, ino } => format!("extent tree (block map) of {}", name(path, *ino)),
        Owner::InodeTable { inodes, paths, .. } => {
            format!("inode table: inodes {}-{} {:?}", inodes.0, inodes.1, paths)
        }
        Owner::BlockBitmap { group } => format!("block allocation bitmap of group {group}"),
        Owner::InodeBitmap { group } => format!("inode allocation bitmap of group {group}"),
        Owner::Superblock { group } => format!("superblock copy in group {group}"),
        Owner::Descriptors { group } => format!("group descriptor table copy in group {group}"),
        Owner::Journal => "the filesystem journal".into(),
        Owner::ReservedGdt | Owner::Special { .. } => "space the filesystem reserves".into(),
        Owner::Free => "free space (no file)".into(),
        Owner::Structure { what, .. } => what.clone(),
    }
}
