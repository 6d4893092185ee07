//! Wall-clock times as the ledger stores them (microseconds since the Unix epoch, UTC) and as
//! people read them (RFC 3339).

use crate::error::{Error, Result};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// The current time.
pub fn now() -> Micros {
    jiff::Timestamp::now().as_microsecond()
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-25T14:03:11.123456Z`.
pub fn rfc3339(t: Micros) -> String {
    match jiff::Timestamp::from_microsecond(t) {
        Ok(ts) => format!("{ts:.6}"),
        Err(_) => format!("(invalid time {t} µs)"),
    }
}

/// Parses an RFC 3339 time (`2026-11-25T14:03:11Z`, with or without fractional seconds or a
/// numeric offset) for `--since`/`--until`.
pub fn parse(s: &str) -> Result<Micros> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_microsecond())
        .map_err(|e| {
            Error::Usage(format!(
                "{s:?} is not an RFC 3339 time ({e}); write it like 2026-11-25T14:03:11Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let t = super::parse("2026-11-25T14:03:11.123456Z").unwrap();
        assert_eq!(super::rfc3339(t), "2026-11-25T14:03:11.123456Z");
        assert!(super::parse("yesterday").is_err());
    }
}
