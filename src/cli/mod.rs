//! The command line: one file per subcommand, each turning flags into a validated call into the
//! library and the result into output and an exit status. Only this side of the crate uses
//! anyhow and prints.

#[macro_use]
pub mod output;
pub mod demo;
pub mod history;
pub mod init;
pub mod ledger;
pub mod reload;
pub mod repair;
pub mod report;
pub mod serve;
pub mod status;
pub mod verify;

use clap::{Parser, Subcommand};
// Durations and sizes read the same in flags as in a `serve --config` file.
pub use lostwrite::host::config::{parse_duration, parse_size};
use std::path::PathBuf;

/// Catch lost writes: a write-journal sidecar for block devices, and its verifier.
#[derive(Parser, Debug)]
#[command(name = "lostwrite", version, about, long_about = None)]
pub struct Cli {
    /// More log output (repeat for more); LOSTWRITE_LOG=debug does the same.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Logs as JSON lines (for journald or a log shipper); LOSTWRITE_LOG_FORMAT=json does the
    /// same.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// How long an NBD upstream (a DEVICE given as nbd:// or nbd+unix://) may take to accept,
    /// negotiate, or answer any one request before it is given up on [default: 30s].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    pub upstream_timeout: Option<std::time::Duration>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a ledger for a device, optionally recording every block now as generation 0.
    Init(init::Args),
    /// Serve a device over NBD, recording every write in its ledger (the sidecar).
    Serve(Box<serve::Args>),
    /// Hold a device against its ledger and classify every block that lost its latest write.
    Verify(verify::Args),
    /// Forensics after an incident: the window of lost writes, the files that own the damaged
    /// blocks, a timeline picture.
    Report(report::Args),
    /// Give lost writes back: find each failing block's expected generation in other copies
    /// (--from), show the plan, and with --apply write it.
    Repair(repair::Args),
    /// Show every recorded generation of some blocks.
    History(history::Args),
    /// Check, dump or compact the ledger itself.
    Ledger(ledger::Args),
    /// Summarise a ledger: device, sessions, journal, tracked blocks.
    Status(status::Args),
    /// Make a running `serve --config` re-read its configuration, and wait for the outcome.
    Reload(reload::Args),
    /// Run the whole story on a scratch image: baseline, damage, verify.
    Demo(demo::Args),
}

/// Where to find the device and its ledger; shared by most subcommands.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The device: a regular file, a block device, or an NBD export
    /// (nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT).
    #[arg(value_name = "DEVICE")]
    pub device: String,
    /// The ledger directory [default: DEVICE.ledger beside the device].
    #[arg(long, value_name = "DIR")]
    pub ledger: Option<PathBuf>,
}

impl Target {
    /// The ledger directory to use.
    pub fn ledger_dir(&self) -> anyhow::Result<PathBuf> {
        resolve_ledger(Some(&self.device), self.ledger.as_ref())
    }
}

/// The ledger directory from `--ledger`, or beside a device path (the host's rule, shared by
/// every subcommand).
pub fn resolve_ledger(device: Option<&str>, ledger: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(lostwrite::host::config::resolve_ledger(
        device,
        ledger.map(PathBuf::as_path),
    )?)
}

/// A duration that must not be zero (a timeout).
pub fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: a timeout must be longer than zero")),
        d => Ok(d),
    }
}

/// Runs a parsed command line and returns the exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Some(t) = cli.upstream_timeout {
        lostwrite::nbd::client::set_timeout(t);
    }
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Verify(a) => verify::run(a),
        Command::Report(a) => report::run(a),
        Command::Repair(a) => repair::run(a),
        Command::History(a) => history::run(a),
        Command::Ledger(a) => ledger::run(a),
        Command::Status(a) => status::run(a),
        Command::Reload(a) => reload::run(a),
        Command::Demo(a) => demo::run(a),
    }
}
