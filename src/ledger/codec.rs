//! The one place that turns ledger structures into bytes and back. The encoding is bincode
//! 1.3.3 with fixed-width little-endian integers (pinned: bincode 3.0 is a non-compiling
//! tombstone, see docs/DEPENDENCIES.md); docs/FORMAT.md spells out the resulting bytes so the
//! format does not depend on the crate.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest single encoded structure (a frame body or the metadata).
pub const LIMIT: u64 = 64 << 20;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(LIMIT)
        .allow_trailing_bytes()
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    options()
        .serialize_into(out, value)
        .expect("encoding into a Vec cannot fail for ledger types");
}

/// Decodes one value from the front of `input`, advancing it.
pub fn decode_next<T: DeserializeOwned>(input: &mut &[u8]) -> Result<T, String> {
    options().deserialize_from(input).map_err(|e| e.to_string())
}
