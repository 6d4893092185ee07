//! The upstream timeouts, and every wait bounded by them: the process-wide setting
//! ([`set_timeout`], [`timeout`]), the stop that cuts waits short ([`abort_connecting`],
//! [`stop_by`]), when a wait must end and the sentence saying why (`deadline`, `bound`,
//! `reason`), the longer allowance of a FLUSH, trim or zeroing (`allowance`), and `Bounded`,
//! the stream a negotiation reads and writes through under one deadline.

use crate::nbd::proto::cmd;
use crate::nbd::stream::Stream;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long connecting, negotiating, and each request (sending it, then its reply) may take
/// before the upstream is given up on, unless [`set_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The upstream timeout in milliseconds (process-wide: one setting from the command line or
/// the config file).
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);
/// Set by [`abort_connecting`]: connections being negotiated give up at once.
static ABORT: AtomicBool = AtomicBool::new(false);
/// After [`stop_by`]: milliseconds since [`epoch`] past which nothing waits for an upstream.
static STOP_AT_MS: AtomicU64 = AtomicU64::new(u64::MAX);

pub(super) fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

/// Sets the upstream timeout for every connection opened or request sent from now on (at
/// least a millisecond).
pub fn set_timeout(d: Duration) {
    TIMEOUT_MS.store((d.as_millis() as u64).max(1), Ordering::Relaxed);
}

/// The upstream timeout.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Makes every connection still negotiating give up now (a stop was asked for during start).
pub fn abort_connecting() {
    ABORT.store(true, Ordering::SeqCst);
}

/// From `d` after now, no request waits any longer for an upstream: shutdown has a bound
/// whatever the upstream does.
pub fn stop_by(d: Duration) {
    let at = (epoch().elapsed() + d).as_millis() as u64;
    STOP_AT_MS.fetch_min(at, Ordering::SeqCst);
}

/// When a wait begun now must end, and the reason to give if it does.
pub(super) fn deadline() -> (Instant, String) {
    let (until, stopping) = bound(Instant::now() + timeout());
    (until, reason(stopping))
}

/// The earlier of a wait's own deadline and the stop deadline (which may be set while the
/// wait goes on), and whether it is the stop deadline.
pub(super) fn bound(own: Instant) -> (Instant, bool) {
    match STOP_AT_MS.load(Ordering::Relaxed) {
        u64::MAX => (own, false),
        ms => {
            let stop = epoch() + Duration::from_millis(ms);
            (stop.min(own), stop < own)
        }
    }
}

/// Why a wait was given up.
pub(super) fn reason(stopping: bool) -> String {
    reason_after(stopping, timeout())
}

/// Why a wait of `allowed` was given up.
pub(super) fn reason_after(stopping: bool, allowed: Duration) -> String {
    if stopping {
        "the service is stopping and gave up waiting".into()
    } else if allowed == timeout() {
        format!(
            "no answer within {} (the upstream timeout; --upstream-timeout or upstream_timeout = sets it)",
            show(allowed)
        )
    } else {
        format!(
            "no answer within {} (four times the upstream timeout, for a flush, trim or zeroing; --upstream-timeout or upstream_timeout = sets it)",
            show(allowed)
        )
    }
}

pub(super) fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// A negotiating connection with one deadline for everything it reads and writes (the socket
/// times out in short slices so that the deadline and [`abort_connecting`] are looked at).
pub(super) struct Bounded<'a> {
    pub(super) s: &'a mut Stream,
    pub(super) until: Instant,
    pub(super) why: String,
}

impl Bounded<'_> {
    fn check(&self) -> io::Result<()> {
        if ABORT.load(Ordering::SeqCst) {
            // Not ErrorKind::Interrupted, which read_exact would retry.
            return Err(io::Error::other("a stop was asked for while connecting"));
        }
        if Instant::now() >= self.until {
            return Err(io::Error::new(io::ErrorKind::TimedOut, self.why.clone()));
        }
        Ok(())
    }
}

fn slow(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            match self.s.read(buf) {
                Err(e) if slow(&e) => {}
                r => return r,
            }
        }
    }
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            match self.s.write(buf) {
                Err(e) if slow(&e) => {}
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// Reads and writes of a negotiation look at their deadline this often.
pub(super) const NEGOTIATION_SLICE: Duration = Duration::from_millis(200);

/// How long a request may go without any sign of life from the upstream. A FLUSH (and a trim or
/// zeroing, which may sync or walk a whole range) can legitimately keep a healthy server busy
/// for long on a slow disk with much dirty data, and a timeout fails it for good (the
/// connection is dropped, the session poisoned): such commands get four times the timeout.
pub(super) fn allowance(kind: u16) -> Duration {
    match kind {
        cmd::FLUSH | cmd::TRIM | cmd::WRITE_ZEROES => timeout() * 4,
        _ => timeout(),
    }
}
