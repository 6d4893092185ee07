//! Block geometry and block checksums: the one place that decides how a device is cut into
//! blocks and how a block's contents are summarised.

use crate::error::{Error, Result};

/// Smallest block size a ledger accepts.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size a ledger accepts.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Block size used when none is given.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// Checks a user-supplied block size: a power of two between 512 B and 1 MiB.
pub fn validate_block_size(bs: u64) -> Result<u32> {
    if !(MIN_BLOCK_SIZE as u64..=MAX_BLOCK_SIZE as u64).contains(&bs) || !bs.is_power_of_two() {
        return Err(Error::Usage(format!(
            "--block-size {bs}: must be a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes (for example 4096)"
        )));
    }
    Ok(bs as u32)
}

/// How a device of a given size is cut into blocks. The last block may be partial; its checksum
/// covers its bytes followed by zeroes up to the block size, as if the device were padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per block (a power of two).
    pub block_size: u32,
    /// Device size in bytes.
    pub device_size: u64,
}

impl Geometry {
    /// A geometry for `device_size` bytes in blocks of `block_size`.
    pub fn new(block_size: u32, device_size: u64) -> Self {
        Geometry {
            block_size,
            device_size,
        }
    }

    /// Number of blocks, counting a partial last block.
    pub fn block_count(&self) -> u64 {
        self.device_size.div_ceil(self.block_size as u64)
    }

    /// Byte offset of block `b`.
    pub fn offset(&self, block: u64) -> u64 {
        block * self.block_size as u64
    }

    /// Bytes of block `b` that lie on the device (block_size except for a partial last block).
    pub fn bytes_in(&self, block: u64) -> usize {
        let start = self.offset(block);
        (self.device_size.saturating_sub(start)).min(self.block_size as u64) as usize
    }

    /// The blocks touched by a byte range, as `first..end` (end exclusive).
    pub fn blocks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let bs = self.block_size as u64;
        offset / bs..(offset + len).div_ceil(bs)
    }
}

/// The checksum lostwrite keeps for a block: CRC-32 (IEEE) of its full contents.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Checksum of a block whose first `data.len()` bytes are `data` and the rest zero (the partial
/// last block of a device).
pub fn checksum_padded(data: &[u8], block_size: u32) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    let mut left = block_size as usize - data.len().min(block_size as usize);
    let zeros = [0u8; 4096];
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    h.finalize()
}

/// Checksum of a block of zeroes.
pub fn zero_checksum(block_size: u32) -> u32 {
    checksum_padded(&[], block_size)
}

/// True when every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(16);
    let mut acc = 0u128;
    for c in &mut chunks {
        acc |= u128::from_le_bytes(c.try_into().expect("16-byte chunk"));
    }
    acc == 0 && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_counts_partial_block() {
        let g = Geometry::new(4096, 10_000);
        assert_eq!(g.block_count(), 3);
        assert_eq!(g.bytes_in(2), 10_000 - 8192);
        assert_eq!(g.blocks_of(4095, 2), 0..2);
        assert_eq!(g.blocks_of(4096, 4096), 1..2);
        assert_eq!(g.blocks_of(0, 0), 0..0);
    }

    #[test]
    fn padded_checksum_equals_full_zero_padded_block() {
        let mut full = vec![0u8; 4096];
        full[..100].fill(7);
        assert_eq!(checksum_padded(&full[..100], 4096), checksum(&full));
        assert_eq!(zero_checksum(4096), checksum(&[0u8; 4096]));
    }

    #[test]
    fn block_size_validation() {
        assert!(validate_block_size(4096).is_ok());
        assert!(validate_block_size(1 << 20).is_ok());
        assert!(validate_block_size(256).is_err());
        assert!(validate_block_size(3000).is_err());
        assert!(validate_block_size(2 << 20).is_err());
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 1;
        assert!(!is_zero(&b));
    }
}
