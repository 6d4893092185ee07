//! `lostwrite serve DEVICE`: the write-journal sidecar. An NBD server in front of the device
//! that records every write in the ledger; SIGTERM or SIGINT ends it cleanly.

use super::Target;
use lostwrite::block::{validate_block_size, DEFAULT_BLOCK_SIZE};
use lostwrite::device::BlockDevice;
use lostwrite::ledger::state::BlockState;
use lostwrite::ledger::{Access, Ledger, OpenOptions};
use lostwrite::nbd::server::{Config, Server};
use lostwrite::nbd::stream::Listener;
use lostwrite::service::{Export, ExportOptions, OnMismatch};
use std::path::PathBuf;
use std::sync::Arc;

/// When a record must be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum JournalSync {
    /// At every FLUSH and FUA (group commit): a host crash may lose the journal tail after the
    /// last flush, which verify reports as `uncertain`.
    Flush,
    /// Before every device write: nothing is ever uncertain, at the cost of a journal sync per
    /// write.
    Strict,
}

/// Flags of `serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Listen on this unix socket (mode 0600) [default: DEVICE.sock].
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Listen on TCP instead (use a loopback or private address: NBD has no authentication
    /// without TLS).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Export name (clients asking for the empty name get it too).
    #[arg(long, value_name = "NAME", default_value = "")]
    export: String,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
    /// What a read of a block that lost its latest write does.
    #[arg(long, value_enum, default_value_t = OnMismatch::Log)]
    on_mismatch: OnMismatch,
    /// When journal records are made durable.
    #[arg(long, value_enum, default_value_t = JournalSync::Flush)]
    journal_sync: JournalSync,
    /// Block size of a ledger created by this command [default: 4096]; an existing ledger keeps
    /// its own, and a different value here is refused.
    #[arg(long, value_name = "BYTES")]
    block_size: Option<u64>,
    /// Accept a device whose identity differs from the ledger's (same disk, moved or copied).
    #[arg(long)]
    device_moved: bool,
    /// Worker threads executing requests [default: 4 per core, at least 8; at least 32 in
    /// front of an NBD upstream].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Require TLS (NBD STARTTLS, TLS 1.3) with this certificate chain (PEM); nothing, not even
    /// the export list, is offered to a client before TLS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve without recording anything (to measure what the ledger costs; nothing is
    /// verifiable afterwards).
    #[arg(long, hide = true)]
    no_record: bool,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let bs = validate_block_size(a.block_size.unwrap_or(DEFAULT_BLOCK_SIZE as u64))?;
    if a.target.device.contains("://") && a.socket.is_none() && a.listen.is_none() {
        anyhow::bail!(
            "{}: an NBD URI has no path to put a socket beside; give --socket PATH or --listen HOST:PORT",
            a.target.device
        );
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(lostwrite::nbd::tls::server_config(
            c,
            k,
            a.tls_client_ca.as_deref(),
        )?),
        _ => None,
    };
    let dev = lostwrite::device::open(&a.target.device, !a.read_only)?;
    let ledger = if a.no_record {
        tracing::warn!("--no-record: writes are NOT recorded; nothing served now can be verified");
        None
    } else {
        let dir = a.target.ledger_dir()?;
        if !dir.exists() {
            Ledger::create(&dir, dev.identity(), dev.size(), bs, None)?;
            let blocks = dev.size().div_ceil(bs as u64);
            tracing::warn!(
                "created ledger {} without a baseline: the device's {blocks} blocks are untracked until written through this service. To track every block from the start, stop now, remove {} and run `lostwrite init --baseline {}`",
                dir.display(),
                dir.display(),
                a.target.device
            );
        }
        let mut opts = OpenOptions::new(Access::Write);
        opts.device_moved = a.device_moved;
        let mut l = Ledger::open(&dir, Some((dev.identity(), dev.size())), opts)?;
        if a.block_size.is_some() && l.geometry().block_size != bs {
            anyhow::bail!(
                "--block-size {bs}: the ledger {} uses {}-byte blocks, and a ledger's block size cannot change; drop --block-size, or make a new ledger elsewhere with `lostwrite init --block-size {bs}`",
                dir.display(),
                l.geometry().block_size
            );
        }
        for w in &l.recovery().warnings {
            tracing::warn!("{w}");
        }
        let session = l.begin_session(a.journal_sync == JournalSync::Strict)?;
        let geo = l.geometry();
        let untracked = (0..geo.block_count())
            .filter(|&b| !matches!(l.state(b), BlockState::Tracked { .. }))
            .count();
        tracing::info!(
            "ledger {}: session {session}, {} blocks of {} bytes, {untracked} not tracked yet{}",
            dir.display(),
            geo.block_count(),
            geo.block_size,
            if l.recovery().previous_clean {
                ""
            } else {
                "; the previous session did not end cleanly"
            }
        );
        Some(l)
    };
    let export = Arc::new(Export::new(
        Box::new(dev),
        ledger,
        ExportOptions {
            name: a.export.clone(),
            read_only: a.read_only,
            on_mismatch: a.on_mismatch,
        },
    ));
    let listener = match (&a.listen, &a.socket) {
        (Some(addr), _) => {
            Listener::tcp(addr).map_err(|e| anyhow::anyhow!("--listen {addr}: {e}"))?
        }
        (None, sock) => {
            let path = sock
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.sock", a.target.device)));
            Listener::unix(&path).map_err(|e| anyhow::anyhow!("socket {}: {e}", path.display()))?
        }
    };
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    tracing::info!(
        "serving {} as export {:?} on {}{}{}",
        a.target.device,
        a.export,
        listener.describe(),
        if a.read_only { " (read-only)" } else { "" },
        match (&tls, &a.tls_client_ca) {
            (Some(_), Some(_)) => ", TLS required, client certificates required",
            (Some(_), None) => ", TLS required",
            _ => "",
        }
    );
    let mut config = Config::default();
    if !export.quick_writes() {
        // Workers mostly wait for the upstream's replies: enough of them to keep a deep queue.
        config.workers = config.workers.max(32);
    }
    if let Some(t) = a.threads {
        config.workers = t.max(1);
    }
    config.tls = tls;
    let server = Server::start(vec![export], vec![listener], config);
    let sig = signals.forever().next();
    tracing::info!(
        "signal {}: finishing requests in flight and closing the ledger (a second signal exits at once, leaving the session unclosed)",
        sig.unwrap_or(0)
    );
    std::thread::spawn(move || {
        if let Some(s) = signals.forever().next() {
            tracing::error!(
                "signal {s} again: exiting without closing the session (the next start treats it as a crash)"
            );
            std::process::exit(1);
        }
    });
    let exports = server.shutdown();
    let mut status = 0;
    for e in exports {
        let e =
            Arc::try_unwrap(e).map_err(|_| anyhow::anyhow!("export still in use at shutdown"))?;
        let c = &e.counters;
        let summary = format!(
            "{} writes ({} bytes), {} reads, {} flushes, {} stale reads, {} errors",
            c.writes.load(std::sync::atomic::Ordering::Relaxed),
            c.written_bytes.load(std::sync::atomic::Ordering::Relaxed),
            c.reads.load(std::sync::atomic::Ordering::Relaxed),
            c.flushes.load(std::sync::atomic::Ordering::Relaxed),
            c.read_mismatches.load(std::sync::atomic::Ordering::Relaxed),
            c.errors.load(std::sync::atomic::Ordering::Relaxed),
        );
        let failure = e.ledger().and_then(|l| l.session_failure());
        e.close()?;
        match failure {
            None => tracing::info!("closed cleanly: {summary}"),
            Some(why) => {
                tracing::error!(
                    "the session is left unclosed, so the next start and `verify` treat it as a crash: {why}; {summary}"
                );
                status = 1;
            }
        }
    }
    Ok(status)
}
