//! Little-endian integers at a byte offset of an on-disk structure (partition tables, LVM
//! labels, ext4 superblocks and descriptors), read by the parsers that check their lengths first.

/// The u16 at byte `at` of `b`.
pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The u32 at byte `at` of `b`.
pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4"))
}

/// The u64 at byte `at` of `b`.
pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8"))
}
