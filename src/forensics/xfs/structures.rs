//! What a block of an XFS structure that belongs to an AG or to the whole filesystem (rather
//! than to one inode) is, and the symptom its users will see: AG headers, the log, the
//! free-space, inode, reverse-mapping and reference-count btrees, the AG free list, quota and
//! realtime metadata, and blocks nothing accounts for.

use crate::forensics::owner::Owner;

pub(super) fn structure(owner: &'static str, what: String, symptom: String) -> Owner {
    Owner::Structure {
        owner,
        what,
        symptom,
    }
}

pub(super) fn ag_header(ag: u64) -> Owner {
    let symptom = if ag == 0 {
        "AG 0 header (the primary superblock, AGF, AGI, AGFL): the filesystem may not mount or may use an old geometry and free-space and inode counts; `xfs_repair` is needed (it can restore the superblock from a secondary copy)".to_string()
    } else {
        format!("AG {ag} header (secondary superblock, AGF, AGI, AGFL): the AG's free-space and inode btree roots and counts may be old: space in use may be handed out again or files become unreachable; `xfs_repair` is needed")
    };
    structure(
        "ag-header",
        format!("AG {ag} header (superblock copy, AGF, AGI, AGFL)"),
        symptom,
    )
}

pub(super) fn log_owner() -> Owner {
    structure(
        "log",
        "the XFS log".into(),
        "the XFS log: after a clean unmount harmless; otherwise the filesystem may not mount, or log recovery replays old or torn transactions (`xfs_repair -L` discards the log and the updates it held)".into(),
    )
}

/// What a block of an xfs_db `blockuse` type is, and its symptom, for the structures that
/// belong to an AG rather than to one inode.
pub(super) fn ag_structure(kind: &str, ag: u64) -> Option<Owner> {
    let (owner, what, symptom) = match kind {
        "btbno" | "btcnt" => (
            "free-space-btree",
            format!("free-space btree block of AG {ag}"),
            format!("free-space btree of AG {ag}: space in use may be handed out again (two files sharing blocks) or free space lost; `xfs_repair` rebuilds it"),
        ),
        "btino" | "btfino" => (
            "inode-btree",
            format!("inode btree block of AG {ag}"),
            format!("inode allocation btree of AG {ag}: inodes in use may be handed out again, or whole inode chunks become unreachable; `xfs_repair` rebuilds it"),
        ),
        "btrmap" => (
            "rmap-btree",
            format!("reverse-mapping btree block of AG {ag}"),
            format!("reverse-mapping btree of AG {ag}: online scrub and repair see stale owners; `xfs_repair` rebuilds it"),
        ),
        "btrefc" | "btrefcnt" | "cowdata" => (
            "refcount-btree",
            format!("reference-count btree block of AG {ag}"),
            format!("reference-count btree of AG {ag}: blocks shared by reflinked files may be freed while still in use, or never freed; `xfs_repair` rebuilds it"),
        ),
        "freelist" => (
            "reserved",
            format!("AG {ag} free list (blocks set aside for its btrees)"),
            "blocks set aside for the AG's btrees to grow into: harmless unless a btree had just taken them (then see the btrees listed)".to_string(),
        ),
        "agf" | "agi" | "agfl" | "sb" => return Some(ag_header(ag)),
        "log" => return Some(log_owner()),
        "quota" => (
            "quota",
            "quota records".into(),
            "quota usage and limits may be old: `xfs_quota` reports wrong usage until quotacheck runs at the next mount".to_string(),
        ),
        "rtbitmap" | "rtsum" => (
            "reserved",
            "realtime allocation bitmap or summary".into(),
            "realtime allocation bitmap or summary: `xfs_repair` rebuilds it".to_string(),
        ),
        "unknown" | "missing" => (
            "unknown",
            "a block no structure xfs_db could read accounts for".into(),
            "no file and no free-space btree xfs_db could read accounts for this block: it may belong to a file whose inode or extent tree is damaged (see the inode chunks and extent-tree blocks listed)".to_string(),
        ),
        _ => return None,
    };
    Some(structure(owner, what, symptom))
}
