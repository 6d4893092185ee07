//! What a host serves, as data: [`ServeConfig`] (the listeners and host-wide settings) and one
//! [`ExportSpec`] per export, read from a `serve --config` TOML file by [`read_config`] or built
//! from the command line's flags by the CLI. It also owns the text forms those settings share
//! with the command line: durations ([`parse_duration`], [`show_duration`]), byte counts
//! ([`parse_size`]) and where a device's ledger lives ([`resolve_ledger`]).

use crate::device::CacheMode;
use crate::error::{Error, Result};
use crate::ledger::compact::Retention;
use crate::ledger::default_dir;
use crate::ledger::kept::Keep;
use crate::nbd::proto::MAX_NAME;
use crate::service::OnMismatch;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// When a record must be durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalSync {
    /// At every FLUSH and FUA (group commit): a host crash may lose the journal tail after the
    /// last flush, which verify reports as `uncertain`.
    #[default]
    Flush,
    /// Before every device write: nothing is ever uncertain, at the cost of a journal sync per
    /// write.
    Strict,
}

/// The `--config` file: the listener and host-wide settings, then one `[[export]]` table each.
/// The command line's flags make one of these too, with a single export.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Unix socket to listen on.
    pub socket: Option<PathBuf>,
    /// TCP HOST:PORT to listen on (instead of, or with, the socket).
    pub listen: Option<String>,
    /// Prometheus endpoint HOST:PORT.
    pub metrics: Option<String>,
    /// Alert hook command.
    pub on_finding: Option<String>,
    /// Least time between hook runs, e.g. "60s".
    #[serde(default, deserialize_with = "de_duration")]
    pub on_finding_interval: Option<Duration>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA for client certificates (PEM).
    pub tls_client_ca: Option<PathBuf>,
    /// How long an NBD upstream may take to connect or answer, e.g. "30s" (the global
    /// --upstream-timeout flag, which this overrides).
    #[serde(default, deserialize_with = "de_duration")]
    pub upstream_timeout: Option<Duration>,
    /// The exports.
    #[serde(default)]
    pub export: Vec<ExportSpec>,
    /// Serve the exports that open even when others cannot. [`read_config`] sets it: with many
    /// disks, one that cannot be opened must not keep the others offline. Without it (the
    /// command line's one export) an export that cannot open fails the start. Not a key of the
    /// file.
    #[serde(skip)]
    pub serve_what_opens: bool,
}

/// One export of a config file (or of the command line).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// Name clients ask for (required, and not empty, in a config file; on the command line
    /// it defaults to the empty name).
    #[serde(default)]
    pub name: String,
    /// Device path or NBD URI.
    pub device: String,
    /// Ledger directory [default: DEVICE.ledger].
    pub ledger: Option<PathBuf>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// "log" or "error".
    #[serde(default)]
    pub on_mismatch: OnMismatch,
    /// "flush" or "strict".
    #[serde(default)]
    pub journal_sync: JournalSync,
    /// "writeback" (through the host's page cache) or "none" (O_DIRECT).
    #[serde(default)]
    pub cache: CacheMode,
    /// Block size of a ledger made now.
    pub block_size: Option<u64>,
    /// Accept a device whose identity differs from the ledger's.
    #[serde(default)]
    pub device_moved: bool,
    /// Scrub rate in MiB/s.
    pub scrub_rate: Option<f64>,
    /// Time between scrub pass starts, e.g. "24h".
    #[serde(default, deserialize_with = "de_duration")]
    pub scrub_interval: Option<Duration>,
    /// Journal history to keep, e.g. "30d".
    #[serde(default, deserialize_with = "de_duration")]
    pub retain: Option<Duration>,
    /// Journal bytes to keep, e.g. "10G" or 10737418240.
    #[serde(default, deserialize_with = "de_size")]
    pub retain_bytes: Option<u64>,
    /// Keep the contents of written blocks for repair: a duration ("7d") or a size ("10G").
    #[serde(default, deserialize_with = "de_keep")]
    pub keep_data: Option<Keep>,
    /// Where the data log lives [default: data/ in the ledger]; the ledger's `data` links to it.
    pub keep_data_dir: Option<PathBuf>,
    /// Do not record (benchmarks only).
    #[serde(skip)]
    pub no_record: bool,
}

impl ExportSpec {
    /// The retention it asks for.
    pub fn retention(&self) -> Retention {
        Retention {
            age: self.retain,
            bytes: self.retain_bytes,
        }
    }

    /// Its ledger directory: the one given, or beside the device.
    pub fn ledger_dir(&self) -> Result<PathBuf> {
        resolve_ledger(Some(&self.device), self.ledger.as_deref())
    }
}

/// Reads and checks a `--config` file: at least one export, each named, names unique and short
/// enough for NBD, somewhere to listen.
pub fn read_config(path: &Path) -> Result<ServeConfig> {
    let bad =
        |what: &dyn std::fmt::Display| Error::Usage(format!("--config {}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
    let mut c: ServeConfig = toml::from_str(&text).map_err(|e| bad(&e))?;
    if c.export.is_empty() {
        return Err(bad(
            &"no [[export]] tables; list at least one (name, device, ledger)",
        ));
    }
    if c.upstream_timeout.is_some_and(|t| t.is_zero()) {
        return Err(bad(
            &"upstream_timeout must be longer than zero (e.g. \"30s\")",
        ));
    }
    if c.socket.is_none() && c.listen.is_none() {
        return Err(bad(
            &"say where to listen: socket = \"PATH\" or listen = \"HOST:PORT\"",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, e) in c.export.iter().enumerate() {
        let which = format!(
            "--config {}: [[export]] number {} (device {:?})",
            path.display(),
            i + 1,
            e.device
        );
        let n = e.name.as_str();
        if n.is_empty() {
            return Err(Error::Usage(format!(
                "{which} has no name; give it one (name = \"disk1\"): clients ask for an export by name"
            )));
        }
        if n.len() > MAX_NAME {
            return Err(Error::Usage(format!(
                "{which}: its name of {} bytes is longer than NBD allows ({MAX_NAME} bytes); give a shorter one",
                n.len()
            )));
        }
        if !names.insert(n) {
            return Err(Error::Usage(format!(
                "{which}: export name {n:?} is used twice"
            )));
        }
    }
    c.serve_what_opens = true;
    Ok(c)
}

/// The ledger directory from `--ledger` (or a config's `ledger`), or beside a device path.
pub fn resolve_ledger(device: Option<&str>, ledger: Option<&Path>) -> Result<PathBuf> {
    if let Some(l) = ledger {
        return Ok(l.to_path_buf());
    }
    match device {
        Some(d) if d.contains("://") => Err(Error::Usage(format!(
            "{d}: an NBD URI has no directory to keep a ledger beside; give one with --ledger DIR"
        ))),
        Some(d) => Ok(default_dir(d)),
        None => Err(Error::Usage(
            "give the DEVICE or the ledger directory (--ledger DIR)".into(),
        )),
    }
}

/// Parses a duration such as `30s`, `10m`, `24h`, `7d`, `1h30m` or `0s` (jiff's friendly
/// format; a day is 24 hours).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("{s:?} is not a duration like 30s, 10m, 24h or 7d ({e})")
    };
    let span: jiff::Span = s.trim().parse().map_err(|e| bad(&e))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(&e))?;
    Duration::try_from(d).map_err(|e| bad(&e))
}

/// Parses a byte count such as `4096`, `512K`, `64M`, `10G`, `1T` or `64MiB` (powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = || format!("{s:?} is not a size like 4096, 512K, 64M, 10G or 1T");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `--keep-data`: a size when it is digits alone or ends in an upper-case unit (`4096`,
/// `512K`, `10G`, `64MiB`), else a duration (`7d`, `24h`, `10m` is ten minutes).
pub fn parse_keep(s: &str) -> std::result::Result<Keep, String> {
    let t = s.trim();
    let unit = t.trim_start_matches(|c: char| c.is_ascii_digit());
    let size = unit.is_empty() || unit.starts_with(|c: char| "KMGTB".contains(c));
    let k = if size {
        Keep::Bytes(parse_size(t)?)
    } else {
        Keep::Age(
            parse_duration(t)
                .map_err(|e| format!("{e}; or give a size with an upper-case unit (512M, 10G)"))?,
        )
    };
    match k {
        Keep::Bytes(b) if b < 1 << 20 => Err(format!(
            "{s:?}: keep at least 1M of data (the data log rolls in segments of at least 1 MiB)"
        )),
        Keep::Age(d) if d.is_zero() => Err(format!("{s:?}: keep data for longer than zero")),
        k => Ok(k),
    }
}

/// A `--keep-data` window as people read it: "the last 7d" or "the last 10737418240 bytes".
pub fn show_keep(k: Keep) -> String {
    match k {
        Keep::Age(d) => format!("blocks written in the last {}", show_duration(d)),
        Keep::Bytes(b) => format!("about the last {b} bytes of data log"),
    }
}

/// `keep_data` in a config file, read as the command line reads `--keep-data`.
fn de_keep<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Keep>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_keep(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// A duration as [`parse_duration`] reads it: `24h`, `30s`, `1h 30m`.
pub fn show_duration(d: Duration) -> String {
    match jiff::SignedDuration::try_from(d) {
        Ok(s) if s.is_zero() => "0s".into(),
        Ok(s) => format!("{s:#}"),
        Err(_) => format!("{d:?}"),
    }
}

/// A byte count in a config file: an integer, or a string as the command line reads one.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A duration in a config file, read as the command line reads one ("30s", "24h").
fn de_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}
