//! Wall-clock times as the ledger stores them (microseconds since the Unix epoch, UTC) and as
//! people read them (RFC 3339). Times stay [`Micros`] in memory; [`as_rfc3339`] and
//! [`as_rfc3339_opt`] are the serde forms that write them (in JSON, findings.jsonl, scrub.json)
//! as [`rfc3339`] text and read that text back.

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
    from_rfc3339(s)
        .map_err(|why| Error::Usage(format!("{why}; write it like 2026-11-25T14:03:11Z")))
}

/// Parses RFC 3339 text as [`rfc3339`] writes it (any offset and fraction are accepted) back
/// into microseconds; the error says why it is not a time.
pub fn from_rfc3339(s: &str) -> std::result::Result<Micros, String> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_microsecond())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))
}

/// Serde form of a [`Micros`] as [`rfc3339`] text (`#[serde(with = "crate::clock::as_rfc3339")]`).
pub mod as_rfc3339 {
    use super::Micros;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `t` as [`super::rfc3339`] text.
    pub fn serialize<S: Serializer>(t: &Micros, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }

    /// Reads RFC 3339 text; anything else is an error (the line or file holding it is then
    /// treated as unreadable).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::from_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde form of an optional [`Micros`] as [`rfc3339`] text or null
/// (`#[serde(default, with = "crate::clock::as_rfc3339_opt")]`).
pub mod as_rfc3339_opt {
    use super::Micros;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `t` as [`super::rfc3339`] text, or null.
    pub fn serialize<S: Serializer>(t: &Option<Micros>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 text or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Micros>, D::Error> {
        Option::<std::borrow::Cow<'de, str>>::deserialize(d)?
            .map(|s| super::from_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::Micros;
    use serde::{Deserialize, Serialize};

    #[test]
    fn round_trip() {
        let t = super::parse("2026-11-25T14:03:11.123456Z").unwrap();
        assert_eq!(super::rfc3339(t), "2026-11-25T14:03:11.123456Z");
        assert!(super::parse("yesterday").is_err());
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Times {
        #[serde(with = "super::as_rfc3339")]
        at: Micros,
        #[serde(
            default,
            with = "super::as_rfc3339_opt",
            skip_serializing_if = "Option::is_none"
        )]
        maybe: Option<Micros>,
    }

    #[test]
    fn serde_forms_write_and_read_the_same_text_to_the_microsecond() {
        for text in [
            r#"{"at":"2026-11-25T14:03:11.123456Z","maybe":"1970-01-01T00:00:00.000001Z"}"#,
            r#"{"at":"2026-11-25T14:03:11.000000Z"}"#,
            r#"{"at":"1969-12-31T23:59:59.999999Z"}"#,
        ] {
            let t: Times = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&t).unwrap(), text);
        }
        let t: Times = serde_json::from_str(r#"{"at":"2026-11-25T14:03:11.123456Z"}"#).unwrap();
        assert_eq!(t.at, super::parse("2026-11-25T14:03:11.123456Z").unwrap());
        assert_eq!(t.at % 1_000_000, 123_456);
        let t: Times =
            serde_json::from_str(r#"{"at":"2026-11-25T14:03:11Z","maybe":null}"#).unwrap();
        assert_eq!(t.maybe, None);
        // Escaped text (which cannot be borrowed) reads as well.
        let t: Times = serde_json::from_str(r#"{"at":"2026-11-25T14:03:11\u002e5Z"}"#).unwrap();
        assert_eq!(t.at % 1_000_000, 500_000);
        assert!(serde_json::from_str::<Times>(r#"{"at":"yesterday"}"#).is_err());
        assert!(serde_json::from_str::<Times>(r#"{"at":17}"#).is_err());
    }
}
