//! `lostwrite reload --config FILE`: asks the `serve --config FILE` running now to re-read its
//! configuration, and waits for the outcome. The server is found as `status --config` finds
//! it, through the metrics endpoint the file names (`POST /reload`); it re-reads the file it was
//! started with and answers what it opened, closed, restarted and left alone, or why it changed
//! nothing. Exit status 0 when applied, 2 when refused (or applied only in part, or the server
//! could not be asked).

use lostwrite::metrics::{RELOAD_PATH, RELOAD_WAIT};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flags of `reload`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The `serve --config` file of the running server (its `metrics` address is where the
    /// server is asked).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// A little longer than the server waits for its own reload, so that its answer, even a
/// timeout, arrives before this gives up.
const DEADLINE: Duration = Duration::from_secs(RELOAD_WAIT.as_secs() + 30);

/// The most an answer may hold.
const MAX_BYTES: usize = 4 << 20;

pub fn run(a: Args) -> anyhow::Result<i32> {
    let addr = metrics_addr(&a.config)?;
    let (code, body) = post(&addr).map_err(|e| {
        anyhow::anyhow!(
            "asking the server at http://{addr}{RELOAD_PATH} (the metrics address of --config {}): {e}; is `serve --config` running? Without the metrics endpoint, send it SIGHUP (systemctl reload lostwrite) and read its log",
            a.config.display()
        )
    })?;
    let v: Value = serde_json::from_str(&body).map_err(|e| {
        anyhow::anyhow!(
            "http://{addr}{RELOAD_PATH} answered {code} with something that is not a reload outcome ({e}): is another program listening there?"
        )
    })?;
    let applied = v["applied"].as_bool() == Some(true);
    let reason = v["reason"].as_str().map(str::to_string);
    if let Some(served) = v["config"].as_str() {
        let mine = std::fs::canonicalize(&a.config).unwrap_or(a.config.clone());
        if Path::new(served) != mine {
            errln!(
                "lostwrite: note: the server re-read {served}, the file it was started with, not {}",
                a.config.display()
            );
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else if applied {
        outln!("reload of {} applied", v["config"].as_str().unwrap_or("?"));
        for key in ["opened", "closed", "restarted", "unchanged"] {
            let names: Vec<&str> = v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            outln!(
                "{key:<10} {}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            );
        }
        for d in v["not_served"].as_array().into_iter().flatten() {
            outln!(
                "NOT SERVED {} ({}): {}",
                d["export"].as_str().unwrap_or("?"),
                d["device"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or("?")
            );
        }
    }
    match (applied, reason) {
        (true, None) => Ok(0),
        (true, Some(why)) => {
            errln!("lostwrite: reload applied, except: {why}");
            Ok(2)
        }
        (false, why) => {
            errln!(
                "lostwrite: reload refused, nothing changed: {}",
                why.as_deref().unwrap_or("the server gave no reason")
            );
            Ok(2)
        }
    }
}

/// The metrics address a config file names. A file the server would refuse (an unknown key, a
/// bad value) still names it: the server then says why it refuses, which is what the operator
/// needs to read.
fn metrics_addr(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--config {}: {}\nnothing was sent to the server, which keeps serving what it served",
            path.display(),
            e.to_string().trim_end()
        )
    })?;
    match table.get("metrics").and_then(|m| m.as_str()) {
        Some(a) => Ok(a.to_string()),
        None => anyhow::bail!(
            "--config {} names no metrics endpoint (metrics = \"HOST:PORT\"), which is where `reload` asks the server; send the server SIGHUP instead (systemctl reload lostwrite, or `kill -HUP PID` with the pid written in the file `lock` of an export's ledger directory) and read its log",
            path.display()
        ),
    }
}

/// `POST /reload` to `addr`, within [`DEADLINE`] all told: the status code and the body.
fn post(addr: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    let deadline = Instant::now() + DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::TimedOut,
                    format!("no answer within {} s", DEADLINE.as_secs()),
                )
            })
    };
    let mut last = Error::new(ErrorKind::NotFound, "the address resolves to nothing");
    let mut stream = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, left()?.min(Duration::from_secs(5))) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or(last)?;
    s.set_write_timeout(Some(left()?))?;
    write!(
        s,
        "POST {RELOAD_PATH} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(left()?))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if raw.len() > MAX_BYTES {
            return Err(Error::new(ErrorKind::InvalidData, "the answer is too long"));
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let bad = || Error::new(ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}
